"""The index cache: entry modes follow the umask, unsafe directories are not used, bad entries are rebuilt."""

import json
import logging
import os
import pathlib
import shutil
import stat

import numpy as np
import pytest

from ringload.probe import probe
from ringload.synth import make_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("cache-safety") / "v.mp4", width=64, height=48, fps=25, seconds=2, gop=10, bframes=0)


@pytest.fixture(scope="module")
def truth(video):
    return probe(video, cache=False)


def _entries(cache) -> list[pathlib.Path]:
    return sorted(pathlib.Path(cache).rglob("*.json"))


def _same(a, b) -> bool:
    return (
        a.num_frames == b.num_frames
        and np.array_equal(a.pts, b.pts)
        and np.array_equal(a.keyframes, b.keyframes)
        and (a.time_base, a.width, a.height, a.codec) == (b.time_base, b.width, b.height, b.codec)
    )


@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)], ids=["077", "022", "002"])
def test_entry_mode_follows_the_umask(video, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        probe(video, cache=tmp_path / "c")
    finally:
        os.umask(old)
    (entry,) = _entries(tmp_path / "c")
    assert stat.S_IMODE(entry.stat().st_mode) == mode
    # The cache's own folders stay usable under any umask (never group/other-writable).
    assert probe(video, cache=tmp_path / "c").num_frames == 50
    assert not list((tmp_path / "c").rglob(".tmp-*"))


def _forge(cache, entry_rel: pathlib.Path, good: dict) -> pathlib.Path:
    """A consistent but false entry (5 frames) where probe will look for the real one."""
    fake = dict(good, num_frames=5, pts=good["pts"][:5], keyframes=[0])
    path = pathlib.Path(cache) / entry_rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fake))
    return path


def _good_entry(video, tmp_path):
    good_cache = tmp_path / "good"
    probe(video, cache=good_cache)
    (entry,) = _entries(good_cache)
    return entry.relative_to(good_cache), json.loads(entry.read_text())


UNSAFE = {
    "world-writable": lambda root, sub: os.chmod(root, 0o777),
    "group-writable": lambda root, sub: os.chmod(root, 0o775),
    "subfolder-world-writable": lambda root, sub: os.chmod(sub, 0o777),
    "other-owner": lambda root, sub: os.chown(root, 65534, 65534),
    "subfolder-other-owner": lambda root, sub: os.chown(sub, 65534, 65534),
}


@pytest.mark.parametrize("how", sorted(UNSAFE))
def test_unsafe_cache_directory_is_not_used(video, truth, tmp_path, caplog, how):
    if "owner" in how and os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    rel, good = _good_entry(video, tmp_path)
    cache = tmp_path / "shared"
    forged = _forge(cache, rel, good)
    os.chmod(cache, 0o755)
    os.chmod(forged.parent, 0o755)
    UNSAFE[how](cache, forged.parent)
    before = forged.read_bytes()
    caplog.set_level(logging.WARNING, logger="ringload._index_cache")
    for _ in range(3):
        assert _same(probe(video, cache=cache), truth)  # neither read ...
    assert forged.read_bytes() == before  # ... nor written
    assert [p for p in cache.rglob("*") if p.is_file()] == [forged]
    unsafe_dir = str(cache if "subfolder" not in how else forged.parent)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once, not once per file
    assert unsafe_dir in warnings[0] and "RINGLOAD_CACHE_DIR" in warnings[0]


def test_sticky_shared_directory_is_used(video, truth, tmp_path, caplog):
    cache = tmp_path / "tmp-like"
    cache.mkdir()
    os.chmod(cache, 0o1777)
    caplog.set_level(logging.WARNING, logger="ringload._index_cache")
    assert _same(probe(video, cache=cache), truth)
    assert len(_entries(cache)) == 1 and not caplog.records


def _mutate(**changes):
    return lambda d: {**d, **changes}


def _drop(key):
    return lambda d: {k: v for k, v in d.items() if k != key}


BAD_ENTRIES = {
    "num-frames-disagrees": lambda d: {**d, "num_frames": d["num_frames"] + 1},
    "num-frames-float": lambda d: {**d, "num_frames": d["num_frames"] + 0.5},
    "keyframe-out-of-range": lambda d: {**d, "keyframes": [0, 10**6]},
    "keyframe-negative": lambda d: {**d, "keyframes": [-1, 0]},
    "keyframes-unsorted": lambda d: {**d, "keyframes": d["keyframes"][::-1]},
    "keyframes-not-a-list": _mutate(keyframes=7),
    "pts-strings": lambda d: {**d, "pts": [str(p) for p in d["pts"]]},
    "pts-bools": lambda d: {**d, "pts": [True] * len(d["pts"])},
    "pts-decreasing": lambda d: {**d, "pts": d["pts"][::-1]},
    "pts-overflow": lambda d: {**d, "pts": [10**30] + d["pts"][1:]},
    "time-base-zero": _mutate(time_base=[1, 0]),
    "time-base-negative": _mutate(time_base=[-1, 25]),
    "time-base-short": _mutate(time_base=[1]),
    "width-negative": _mutate(width=-64),
    "height-string": _mutate(height="48"),
    "fps-nan": _mutate(fps=float("nan")),
    "rotation-absurd": _mutate(rotation=10**9),
    "rotation-without-matrix": _mutate(rotation=90),
    "display-rotation-not-a-quarter-turn": _mutate(display_rotation=45),
    "display-rotation-without-matrix": _mutate(display_rotation=90),
    "display-hflip-an-int": _mutate(display_hflip=0),
    "display-hflip-disagrees": _mutate(display_hflip=True),
    "display-matrix-short": _mutate(display_matrix=[0, 65536, 0, -65536, 0, 0, 0, 0]),
    "display-matrix-not-int32": _mutate(display_matrix=[0, 1 << 40, 0, -65536, 0, 0, 0, 0, 1 << 30]),
    "display-matrix-disagrees": _mutate(display_matrix=[0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30]),
    "display-matrix-missing": _drop("display_matrix"),
    "format-2-before-orientation": _mutate(format=2),
    "timestamps-unknown": _mutate(timestamps="guess"),
    "codec-not-a-string": _mutate(codec=["h264"]),
    "decoder-empty": _mutate(decoder=""),
    "decoder-not-a-string": _mutate(decoder=1),
    "container-frames-zero": _mutate(container_frames=0),
    "container-frames-below-unknown": _mutate(container_frames=-2),
    "container-frames-float": _mutate(container_frames=250.0),
    "container-frames-bool": _mutate(container_frames=True),
    "container-frames-missing": _drop("container_frames"),
    "keyframe-pos-missing": _drop("keyframe_pos"),
    "keyframe-pos-short": lambda d: {**d, "keyframe_pos": d["keyframe_pos"][:-1]},
    "keyframe-pos-below-unknown": lambda d: {**d, "keyframe_pos": [-2] * len(d["keyframe_pos"])},
    "format-4-before-keyframe-pos": _mutate(format=4),
    "file-size-other": lambda d: {**d, "file_size": d["file_size"] + 1},
    "path-other": _mutate(path="/elsewhere.mp4"),
    "extra-key": _mutate(extra=1),
    "missing-key": _drop("fps"),
    "a-list": lambda d: [d],
    "null": lambda d: None,
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_bad_entry_is_rebuilt(video, truth, tmp_path, caplog, case):
    cache = tmp_path / "c"
    probe(video, cache=cache)
    (entry,) = _entries(cache)
    good = json.loads(entry.read_text())
    entry.write_text(json.dumps(BAD_ENTRIES[case](good)))
    caplog.set_level(logging.WARNING, logger="ringload._index_cache")
    assert _same(probe(video, cache=cache), truth)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignoring unreadable index cache entry" in warnings[0], warnings
    assert json.loads(entry.read_text()) == good  # rebuilt


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000, "\xff\xfe", ""], ids=["deep-list", "deep-dict", "not-utf8", "empty"])
def test_unparsable_entry_is_rebuilt(video, truth, tmp_path, caplog, text):
    cache = tmp_path / "c"
    probe(video, cache=cache)
    (entry,) = _entries(cache)
    good = entry.read_bytes()
    entry.write_bytes(text.encode("latin-1"))
    caplog.set_level(logging.WARNING, logger="ringload._index_cache")
    assert _same(probe(video, cache=cache), truth)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignoring unreadable index cache entry" in warnings[0], warnings
    assert entry.read_bytes() == good


def test_copied_cache_keeps_working(video, truth, tmp_path):
    # A cache directory copied with its modes (cp -a) by the same user is still used.
    probe(video, cache=tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert _same(probe(video, cache=tmp_path / "b"), truth)
