"""A file that changes after it was indexed is refused with VideoChangedError, never decoded as the indexed one."""

import importlib
import os
import shutil

import numpy as np
import pytest
from helpers import ringload_shm
import ringload
from ringload import VideoChangedError, VideoOpenError
from ringload._decode import VideoReader
from ringload.probe import probe
from ringload.synth import make_video

# Same timing for every seed: a replacement indexes exactly like the original.
SPEC = dict(width=64, height=48, fps=25, seconds=2.0, gop=10, bframes=2)
KW = dict(batch_size=4, size=(32, 32), num_workers=1, sampling="strict", seed=3, timeout_s=120, task_timeout_s=60)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGLOAD_CACHE_DIR", str(tmp_path / "cache"))


def _videos(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    return [str(make_video(folder / f"v{i}.mp4", seed=i, **SPEC)) for i in range(n)]


def _replace_with_other(path, tmp_path):
    """os.replace ``path`` by a different video with the same frame timing."""
    (tmp_path / "other").mkdir(exist_ok=True)
    other = make_video(tmp_path / "other" / "new.mp4", seed=99, **SPEC)
    os.replace(other, path)


def _check_error(err, path):
    assert isinstance(err, VideoOpenError)  # the scheduler's whole-file failure
    assert err.path == path and path in str(err)
    assert "ringload index" in str(err)


def test_read_frames_of_a_file_replaced_after_probing(tmp_path, monkeypatch):
    (path,) = _videos(tmp_path / "data", 1)
    before = probe(path)
    # The race read_frames has: the index is built, then the file is swapped before it is opened.
    probe_module = importlib.import_module("ringload.probe")
    real_probe = probe_module.probe

    def probe_then_replace(p, **kw):
        info = real_probe(p, **kw)
        _replace_with_other(path, tmp_path)
        return info

    monkeypatch.setattr(probe_module, "probe", probe_then_replace)
    with pytest.raises(VideoChangedError) as exc:
        ringload.read_frames(path, [0, 5])
    _check_error(exc.value, path)
    after = os.stat(path)
    assert f"{before.file_size} bytes" in exc.value.reason
    assert f"{after.st_size} bytes" in exc.value.reason and str(after.st_mtime_ns) in exc.value.reason
    monkeypatch.undo()
    # A fresh read indexes the new file and reads it.
    assert ringload.read_frames(path, [0]).data.shape[0] == 1


def test_reader_of_an_old_index_refuses_the_replacement(tmp_path):
    (path,) = _videos(tmp_path / "data", 1)
    info = probe(path)
    _replace_with_other(path, tmp_path)
    with VideoReader(path, info) as reader:
        with pytest.raises(VideoChangedError) as exc:
            reader.decode([3], lambda pos, frame: None)
    _check_error(exc.value, path)


def test_same_size_new_mtime_is_refused(tmp_path):
    (path,) = _videos(tmp_path / "data", 1)
    info = probe(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with VideoReader(path, info) as reader:
        with pytest.raises(VideoChangedError) as exc:
            reader.decode([0], lambda pos, frame: None)
    _check_error(exc.value, path)
    assert str(info.file_mtime_ns) in exc.value.reason and str(st.st_mtime_ns + 1_000_000_000) in exc.value.reason


def test_in_place_rewrite_is_seen_by_an_open_reader(tmp_path):
    (path,) = _videos(tmp_path / "data", 1)
    info = probe(path)
    got = []
    with VideoReader(path, info) as reader:
        reader.decode([0], lambda pos, frame: got.append(frame.pts))
        # Same inode, same size, new bytes: only size/mtime can tell.
        with open(path, "r+b") as f:
            f.seek(info.file_size // 2)
            f.write(b"\0" * 64)
        st = os.stat(path)
        if st.st_mtime_ns == info.file_mtime_ns:  # a filesystem with coarse timestamps
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        with pytest.raises(VideoChangedError) as exc:
            reader.decode([1], lambda pos, frame: got.append(frame.pts))
    _check_error(exc.value, path)
    assert got == [int(info.pts[0])]


def test_copy_with_same_size_and_mtime_elsewhere_is_accepted(tmp_path):
    (path,) = _videos(tmp_path / "data", 1)
    info = probe(path)
    copy = tmp_path / "elsewhere" / "copy.mp4"
    copy.parent.mkdir()
    shutil.copy2(path, copy)
    assert os.stat(copy).st_ino != os.stat(path).st_ino  # another inode, as on another machine
    assert os.stat(copy).st_mtime_ns == info.file_mtime_ns
    ref = ringload.read_frames(path, [0, 7, 12]).data.numpy()
    frames = []
    with VideoReader(copy, info) as reader:
        reader.decode([0, 7, 12], lambda pos, frame: frames.append((pos, frame.to_ndarray(format="rgb24"))))
    assert [p for p, _ in frames] == [0, 1, 2]
    for pos, rgb in frames:
        assert np.array_equal(rgb, ref[pos].transpose(1, 2, 0))


def test_unknown_size_and_mtime_skip_the_check(tmp_path):
    import dataclasses

    (path,) = _videos(tmp_path / "data", 1)
    info = dataclasses.replace(probe(path), file_size=-1, file_mtime_ns=-1)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5))
    got = []
    with VideoReader(path, info) as reader:
        reader.decode([2], lambda pos, frame: got.append(pos))
    assert got == [0]


def test_loader_raises_for_a_file_replaced_after_it_was_built(tmp_path):
    paths = _videos(tmp_path / "data")
    victim = paths[1]
    with ringload.VideoLoader(paths, **KW) as loader:
        _replace_with_other(victim, tmp_path)
        with pytest.raises(VideoChangedError) as exc:
            for _ in loader:
                pass
    _check_error(exc.value, victim)
    assert ringload_shm() == []


def test_loader_skip_quarantines_a_replaced_file(tmp_path):
    paths = _videos(tmp_path / "data")
    victim = paths[1]
    with ringload.VideoLoader(paths, on_error="skip", **KW) as loader:
        _replace_with_other(victim, tmp_path)
        n = len(loader)
        videos = [b.video_index.numpy().copy() for b in loader]
        stats = loader.stats()
    assert len(videos) == n > 0
    assert list(stats["quarantined"]) == [victim]
    assert "ringload index" in stats["quarantined"][victim]
    assert not any((v == 1).any() for v in videos)
    assert stats["replaced_samples"] > 0
    assert ringload_shm() == []
