"""Manifest rows with ``start``/``end`` (issue 12): a row is the frames of its file whose
timestamps lie in [start, end); rows share files; other columns ride along in ``Batch.meta``.

engine_videos: a.mp4 75 frames at 25 fps, b.mp4 50 at 25 fps, c.mkv 50 at 20 fps, d.mp4 60 at 30 fps.
"""

import logging
import math

import numpy as np
import pytest
from helpers import assert_same_batches, check_exact, collect

import ringload
from ringload import ConfigError
from ringload.probe import probe

# (file, start, end, label, caption); "" leaves the bound open.
ROWS = [
    ("a.mp4", "0.5", "1.5", "run", "a0"),
    ("a.mp4", "2.0", "", "jump", "a1"),
    ("a.mp4", "1.2", "1.3", "run", "a2"),  # 3 frames: shorter than a clip of span 7
    ("b.mp4", "", "1.0", "jump", "b0"),
    ("c.mkv", "1.0", "2.2", "run", "c0"),
    ("d.mp4", "", "", "sit", "d0"),
]
CLIPS = dict(sample="clips", clip_len=4, frame_stride=2, batch_size=8, size=(16, 16), crop="none", seed=4, num_workers=1)


def write_manifest(folder, rows=ROWS):
    man = folder / "segments.csv"
    man.write_text("path,start,end,label,caption\n" + "".join(",".join(r) + "\n" for r in rows))
    return str(man)


@pytest.fixture
def manifest(engine_videos, tmp_path):
    import pathlib

    folder = pathlib.Path(engine_videos[0]).parent
    rows = [(str(folder / f), *rest) for f, *rest in ROWS]
    return write_manifest(tmp_path, rows)


def row_frames(manifest_rows, folder):
    """[first, last + 1) frame of each row, from the files' timestamps."""
    out = []
    for f, a, b, *_ in manifest_rows:
        pts = probe(str(folder / f)).pts_seconds
        a = float(a) if a else 0.0
        b = float(b) if b else math.inf
        inside = np.flatnonzero((pts >= a - 1e-9) & (pts < b - 1e-9))
        out.append((int(inside[0]), int(inside[-1]) + 1, a, b))
    return out


def samples_of(batches):
    return [(v, f) for b in batches for v, f in zip(b["video"].tolist(), b["frame"].tolist())]


@pytest.mark.parametrize("sampling", ["strict", "bounded", "sequential"])
@pytest.mark.parametrize("clips_per_video", [None, 2])
def test_every_sample_lies_inside_its_row(engine_videos, manifest, sampling, clips_per_video):
    import pathlib

    folder = pathlib.Path(engine_videos[0]).parent
    ranges = row_frames(ROWS, folder)
    extra = {"chunk_len": 8} if sampling == "bounded" else {}
    with ringload.VideoLoader(manifest, sampling=sampling, clips_per_video=clips_per_video, **extra, **CLIPS) as loader:
        batches = collect(loader)
        assert loader.num_videos == len(ROWS) and len(loader._data.paths) == 4  # rows of a.mp4 share its entry
        assert loader.stats()["short_videos"] == 1  # row 2
    seen = samples_of(batches)
    for b in batches:
        for r, v in enumerate(b["video"].tolist()):
            lo, hi, a, e = ranges[v]
            assert ((b["frame"][r] >= lo) & (b["frame"][r] < hi)).all(), (v, b["frame"][r])
            assert ((b["pts"][r] >= a - 1e-9) & (b["pts"][r] < e)).all()
    span = (CLIPS["clip_len"] - 1) * CLIPS["frame_stride"] + 1
    if clips_per_video is None:
        # Every valid start of every row once; the short row once, its last frame repeated.
        want = sorted((v, lo + s) for v, (lo, hi, _, _) in enumerate(ranges) for s in range(max(hi - lo - span + 1, 1)))
        assert sorted((v, f[0]) for v, f in seen) == want
    else:
        assert np.bincount([v for v, _ in seen]).tolist() == [clips_per_video] * len(ROWS)
    short = [f for v, f in seen if v == 2]
    assert short[0] == [30, 32, 32, 32]  # frames 30-32 (1.20, 1.24, 1.28 s), repeat_last
    assert check_exact(batches, [str(folder / r[0]) for r in ROWS], (16, 16), clip_axis=True) == 4 * len(seen)


@pytest.mark.parametrize("kw", [dict(sample="clips", clip_len=3, fps=10.0), dict(sample="segments", num_segments=3),
                                dict(sample="frames")])
def test_fps_clips_segments_and_frames_stay_inside_rows(engine_videos, manifest, kw):
    import pathlib

    folder = pathlib.Path(engine_videos[0]).parent
    ranges = row_frames(ROWS, folder)
    with ringload.VideoLoader(manifest, batch_size=8, size=(16, 16), crop="none", sampling="strict", seed=1,
                              num_workers=0, **kw) as loader:
        batches = collect(loader)
    seen = samples_of(batches)
    assert {v for v, _ in seen} == set(range(len(ROWS)))
    for v, f in seen:
        lo, hi, _, _ = ranges[v]
        f = np.atleast_1d(f)
        assert ((f >= lo) & (f < hi)).all(), (v, f)
    if kw["sample"] == "frames":
        assert sorted(seen) == sorted((v, f) for v, (lo, hi, _, _) in enumerate(ranges) for f in range(lo, hi))
    check_exact(batches, [str(folder / r[0]) for r in ROWS], (16, 16), clip_axis=kw["sample"] != "frames")


def test_other_columns_arrive_per_sample_in_batch_meta(engine_videos, manifest):
    with ringload.VideoLoader(manifest, batch_size=16, size=(16, 16), crop="none", sampling="strict", seed=0,
                              num_workers=0) as loader:
        assert loader.classes == ["jump", "run", "sit"]
        n = 0
        for batch in loader:
            rows = batch.video_index.tolist()
            assert set(batch.meta) == {"caption"}
            assert batch.meta["caption"] == [ROWS[r][4] for r in rows]
            assert batch.labels.tolist() == [loader.classes.index(ROWS[r][3]) for r in rows]
            assert [p.rsplit("/", 1)[1] for p in batch.paths] == [ROWS[r][0] for r in rows]
            n += len(batch)
    assert n == 25 + 25 + 3 + 25 + 24 + 60


def test_a_loader_without_other_columns_has_empty_meta(engine_videos):
    with ringload.VideoLoader(engine_videos[:1], batch_size=4, size=(16, 16), crop="none", num_workers=0) as loader:
        assert next(iter(loader)).meta == {}


def test_a_range_outside_the_video_names_the_row_or_is_quarantined(engine_videos, tmp_path, caplog):
    import pathlib

    folder = pathlib.Path(engine_videos[0]).parent
    rows = [(str(folder / "a.mp4"), "0", "1", "run", "ok"), (str(folder / "b.mp4"), "5.0", "6", "run", "late"),
            (str(folder / "c.mkv"), "0.51", "0.52", "run", "between frames")]
    man = write_manifest(tmp_path, rows)
    with pytest.raises(ConfigError, match=r"segments.csv: line 3: column 'start': the range \[5, 6\) s holds no frame"):
        ringload.VideoLoader(man, batch_size=4, size=(16, 16), crop="none", num_workers=0)
    with caplog.at_level(logging.WARNING, logger="ringload"):
        with ringload.VideoLoader(man, batch_size=4, size=(16, 16), crop="none", num_workers=0, on_error="skip") as loader:
            seen = samples_of(collect(loader))
            quarantined = loader.stats()["quarantined"]
    assert {v for v, _ in seen} == {0}  # rows 1 and 2 hold no frame: never sampled
    assert sorted(quarantined) == [f"{man}: line 3", f"{man}: line 4"]
    assert "column 'start/end'" in quarantined[f"{man}: line 4"]
    assert sum("quarantined" in r.getMessage() for r in caplog.records) == 2


def test_trimmed_rows_resume_bitwise_and_the_ranges_are_in_the_fingerprint(engine_videos, tmp_path):
    import pathlib

    folder = pathlib.Path(engine_videos[0]).parent
    rows = [(str(folder / f), *rest) for f, *rest in ROWS]
    man = write_manifest(tmp_path, rows)
    kw = dict(CLIPS, sampling="bounded", chunk_len=8, crop="random_resized", hflip=True)
    with ringload.VideoLoader(man, **kw) as loader:
        ref = collect(loader)
    with ringload.VideoLoader(man, **kw) as loader:
        head = collect(loader, limit=3)
        state = loader.state_dict()
    with ringload.VideoLoader(man, **{**kw, "num_workers": 2}) as loader:
        loader.load_state_dict(state)
        tail = collect(loader)
    assert_same_batches(head + tail, ref)
    other = tmp_path / "other"
    other.mkdir()
    moved = write_manifest(other, [rows[0][:2] + ("1.6",) + rows[0][3:]] + rows[1:])
    with ringload.VideoLoader(moved, **kw) as loader:
        with pytest.raises(ConfigError, match="rows: saved"):
            loader.load_state_dict(state)


def test_rows_of_a_file_that_fails_to_decode_are_replaced_by_other_rows(engine_videos, tmp_path):
    import pathlib
    import shutil

    folder = pathlib.Path(engine_videos[0]).parent
    good, bad = tmp_path / "good.mp4", tmp_path / "bad.mp4"
    shutil.copy(folder / "a.mp4", good)
    shutil.copy(folder / "b.mp4", bad)
    rows = [(str(good), "0.5", "1.5", "run", "g0"), (str(bad), "0", "1", "run", "b0"), (str(good), "2", "", "jump", "g1"),
            (str(bad), "1", "", "jump", "b1")]
    man = write_manifest(tmp_path, rows)
    ranges = row_frames(rows, tmp_path)
    with ringload.VideoLoader(man, batch_size=8, size=(16, 16), crop="none", sampling="strict", num_workers=1,
                              on_error="skip") as loader:
        with open(bad, "ab") as fh:  # after indexing: decoders refuse the changed file
            fh.write(b"\0" * 100)
        batches = collect(loader)
        stats = loader.stats()
    assert str(bad) in stats["quarantined"] and stats["replaced_samples"] > 0
    seen = samples_of(batches)
    assert len(seen) == sum(hi - lo for lo, hi, _, _ in ranges)  # replaced, not dropped
    assert {v for v, _ in seen} == {0, 2}
    for v, f in seen:
        assert ranges[v][0] <= f < ranges[v][1]
    assert check_exact(batches, [r[0] for r in rows], (16, 16)) == len(seen)
