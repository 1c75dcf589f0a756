"""VideoLoader("data.ringindex"): the same batches as the directory, decoders map the file, staleness."""

import dataclasses
import os
import pathlib
import shutil

import numpy as np
import pytest

import ringload
from helpers import assert_same_batches, collect
from ringload import VideoChangedError
from ringload import _protocol as P
from ringload._indexfile import IndexFileError
from ringload._indexfile_build import build_index
from ringload._source import resolve_source
from ringload.synth import make_video


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGLOAD_CACHE_DIR", str(tmp_path / "cache"))


def _index(source, out):
    build_index(resolve_source(source), out, workers=1)
    return str(out)


@pytest.mark.parametrize("sampling", ["strict", "bounded", "sequential"])
def test_batches_from_the_index_file_equal_batches_from_the_directory(engine_videos, tmp_path, sampling):
    folder = os.path.dirname(engine_videos[0])
    index = _index(folder, tmp_path / "d.ringindex")
    kw = dict(batch_size=6, size=(24, 32), sampling=sampling, seed=5, num_workers=2, hflip=True)
    with ringload.VideoLoader(folder, **kw) as loader:
        ref = collect(loader, limit=8)
    with ringload.VideoLoader(index, **kw) as loader:
        got = collect(loader, limit=8)
        assert loader.stats()["failed_samples"] == 0
    assert len(ref) == 8
    assert_same_batches(ref, got)


def test_clips_at_a_target_fps_from_the_index_file_equal_the_directory(engine_videos, tmp_path):
    folder = os.path.dirname(engine_videos[0])
    index = _index(folder, tmp_path / "d.ringindex")
    kw = dict(batch_size=4, size=(16, 16), sample="clips", clip_len=3, fps=10.0, sampling="strict", num_workers=1)
    with ringload.VideoLoader(folder, **kw) as a, ringload.VideoLoader(index, **kw) as b:
        assert_same_batches(collect(a, limit=4), collect(b, limit=4))


def test_manifest_labels_travel_through_the_index_file(engine_videos, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{'cat' if i % 2 else 'dog'}\n" for i, p in enumerate(engine_videos)))
    index = _index(str(manifest), tmp_path / "m.ringindex")
    src = resolve_source(index)
    assert src.labels.tolist() == [1, 0, 1, 0] and src.class_names == ["cat", "dog"]
    assert src.paths == [os.path.abspath(p) for p in engine_videos]


def test_decoders_get_no_index_entries_in_task_messages(engine_videos, tmp_path, monkeypatch):
    """Every task names its video only: decoders look it up in the mapped file."""
    sent = []
    real = P.encode

    def spy(msg):
        if isinstance(msg, P.Task):
            sent.append(msg)
        return real(msg)

    monkeypatch.setattr(P, "encode", spy)
    assert "info" not in {f.name for f in dataclasses.fields(P.Task)}
    index = _index(os.path.dirname(engine_videos[0]), tmp_path / "d.ringindex")
    with ringload.VideoLoader(index, batch_size=4, size=(16, 16), num_workers=1) as loader:
        collect(loader, limit=2)
        assert not hasattr(loader._sched, "info_mirror")
    assert sent


SPEC = dict(width=64, height=48, fps=25, seconds=2.0, gop=10, bframes=2)
KW = dict(batch_size=4, size=(32, 32), num_workers=1, sampling="strict", seed=3, timeout_s=120, task_timeout_s=60)


def _changed_dataset(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    paths = [str(make_video(folder / f"v{i}.mp4", seed=i, **SPEC)) for i in range(3)]
    index = _index(str(folder), tmp_path / "d.ringindex")
    (tmp_path / "other").mkdir()
    os.replace(make_video(tmp_path / "other" / "n.mp4", seed=99, **SPEC), paths[1])
    return paths, index


def test_a_file_changed_after_indexing_raises_naming_it(tmp_path):
    paths, index = _changed_dataset(tmp_path)
    with ringload.VideoLoader(index, **KW) as loader:
        with pytest.raises(VideoChangedError) as exc:
            collect(loader)
    assert exc.value.path == paths[1] and paths[1] in str(exc.value) and "ringload index" in str(exc.value)


def test_a_file_changed_after_indexing_is_quarantined_with_skip(tmp_path):
    paths, index = _changed_dataset(tmp_path)
    with ringload.VideoLoader(index, on_error="skip", **KW) as loader:
        batches = collect(loader)
        stats = loader.stats()
    assert paths[1] in stats["quarantined"] and "changed" in stats["quarantined"][paths[1]]
    videos = np.concatenate([b["video"] for b in batches])
    assert 1 not in set(videos.tolist()) and len(videos) > 0


def test_files_that_failed_indexing_are_quarantined_or_raise(engine_videos, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for p in engine_videos:
        os.symlink(p, folder / os.path.basename(p))
    (folder / "empty.mp4").write_bytes(b"")
    index = _index(str(folder), tmp_path / "d.ringindex")
    with pytest.raises(ringload.VideoOpenError, match="empty.mp4: empty file"):
        ringload.VideoLoader(index, batch_size=4, size=(16, 16), num_workers=0)
    kw = dict(batch_size=4, size=(16, 16), num_workers=1, on_error="skip", seed=2)
    with ringload.VideoLoader(index, **kw) as a, ringload.VideoLoader(str(folder), **kw) as b:
        assert str(folder / "empty.mp4") in a.stats()["quarantined"]
        assert_same_batches(collect(a, limit=3), collect(b, limit=3))


def test_a_damaged_index_file_is_a_clear_error_at_construction(engine_videos, tmp_path):
    index = _index(os.path.dirname(engine_videos[0]), tmp_path / "d.ringindex")
    data = pathlib.Path(index).read_bytes()
    pathlib.Path(index).write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="truncated") as exc:
        ringload.VideoLoader(index, batch_size=4)
    assert index in str(exc.value)


def test_num_workers_0_reads_the_index_file_too(engine_videos, tmp_path):
    folder = os.path.dirname(engine_videos[0])
    index = _index(folder, tmp_path / "d.ringindex")
    kw = dict(batch_size=5, size=(16, 16), seed=1, num_workers=0)
    with ringload.VideoLoader(folder, **kw) as a, ringload.VideoLoader(index, **kw) as b:
        assert_same_batches(collect(a, limit=3), collect(b, limit=3))


def test_indexing_in_the_constructor_says_how_to_avoid_it(engine_videos, tmp_path, caplog, capfd):
    import logging

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(10):  # more than a few files: the parallel path with a bar
        shutil.copy(engine_videos[i % 4], folder / f"v{i}.{engine_videos[i % 4].rsplit('.', 1)[1]}")  # copies: a scan lists each real file once
    with caplog.at_level(logging.INFO, logger="ringload._dataset"):
        with ringload.VideoLoader(str(folder), batch_size=4, size=(16, 16), num_workers=0):
            pass
    assert any("indexed 10 videos" in r.message and "ringload index SOURCE --out" in r.message for r in caplog.records)
    assert "ringload: indexing" not in capfd.readouterr().err  # stderr is not a terminal here: no bar
    caplog.clear()
    index = _index(str(folder), tmp_path / "m.ringindex")
    with caplog.at_level(logging.INFO, logger="ringload._dataset"):
        with ringload.VideoLoader(index, batch_size=4, size=(16, 16), num_workers=0):
            pass
    assert not any("indexed" in r.message for r in caplog.records)  # nothing to index
