"""Helpers shared by the tests (no tests, no fixtures: those are in conftest.py): a small
synthetic dataset, collecting batches, polling for processes and shared memory to go away,
running the CLI as a user does."""

from __future__ import annotations

import collections
import os
import pathlib
import sys
import time

import numpy as np
import pytest

# Small camera-like videos: (name, width, height, fps, seconds, gop, bframes).
SPECS = [
    ("a.mp4", 96, 64, 25, 3.0, 12, 2),
    ("b.mp4", 80, 48, 25, 2.0, 10, 0),
    ("c.mkv", 64, 48, 20, 2.5, 16, 2),
    ("d.mp4", 96, 64, 30, 2.0, 30, 1),
]


def make_dataset(folder: pathlib.Path) -> list[str]:
    from ringload.synth import make_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, w, h, fps, sec, gop, bf) in enumerate(SPECS):
        p = folder / name
        if not p.exists():
            make_video(p, width=w, height=h, fps=fps, seconds=sec, gop=gop, bframes=bf, seed=i)
        paths.append(str(p))
    return paths



def collect(loader, limit: int | None = None) -> list[dict]:
    """Every batch of one pass as numpy arrays (frames contiguous NCHW / NTCHW)."""
    out = []
    for k, b in enumerate(loader):
        out.append(
            {
                "frames": b.frames.contiguous().numpy().copy(),
                "video": b.video_index.numpy().copy(),
                "frame": b.frame_index.numpy().copy(),
                "pts": b.pts_seconds.numpy().copy(),
            }
        )
        if limit is not None and k + 1 >= limit:
            break
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        for key in x:
            assert np.array_equal(x[key], y[key]), f"batch {k} differs in {key}"


def alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return False


def wait_gone(pids, timeout_s: float = 15.0) -> list[int]:
    """Poll until every pid has exited; returns the ones still alive at the deadline."""
    deadline = time.monotonic() + timeout_s
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        if left:
            time.sleep(0.05)
    return left


def ringload_shm() -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("ringload-"))


def check_exact(batches, paths, size, clip_axis=False, orientation="display"):
    """Every delivered frame equals read_frames of its (video, frame index), pixels and pts."""
    wanted = collections.defaultdict(set)
    for b in batches:
        for v, f in zip(b["video"].tolist(), np.atleast_2d(b["frame"].T).T.tolist()):
            wanted[v].update(f if isinstance(f, list) else [f])
    import ringload

    ref = {}
    for v, idx in wanted.items():
        idx = sorted(idx)
        fr = ringload.read_frames(paths[v], idx, size=size, orientation=orientation)
        for i, d, p in zip(idx, fr.data.numpy(), fr.pts_seconds.numpy()):
            ref[(v, i)] = (d, p)
    n = 0
    for b in batches:
        frames = b["frames"] if clip_axis else b["frames"][:, None]
        fidx = b["frame"] if clip_axis else b["frame"][:, None]
        pts = b["pts"] if clip_axis else b["pts"][:, None]
        for r, v in enumerate(b["video"].tolist()):
            for t in range(frames.shape[1]):
                d, p = ref[(v, int(fidx[r, t]))]
                assert np.array_equal(frames[r, t], d), f"video {v} frame {fidx[r, t]} differs"
                assert pts[r, t] == p
                n += 1
    return n


REPO = pathlib.Path(__file__).resolve().parent.parent


def console_script() -> list[str]:
    """The installed ``ringload`` command, as a user runs it (``make test`` installs it)."""
    exe = os.path.join(os.path.dirname(sys.executable), "ringload")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"the console script {exe} is missing: install the package (make test does: pip install -e .)")
    return [exe]


def assert_same_info(a, b) -> None:
    """Two VideoInfo are equal field by field (arrays exactly, with their dtypes)."""
    import dataclasses

    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), f"{a.path}: {f.name} differs"
        else:
            assert type(x) is type(y) and x == y, f"{a.path}: {f.name} differs: {x!r} != {y!r}"
