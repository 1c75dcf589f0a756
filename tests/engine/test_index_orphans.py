"""Indexing processes: none outlives a killed parent, a dead one costs one file, errors stop them all."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from ringload.probe import index_paths
from ringload.synth import make_video

from helpers import REPO

# on_result holds the parent once the first file is done: the other files are then queued
# or being indexed when the test kills it.
SCRIPT = """
import sys
import threading

from ringload.probe import index_paths


def main():
    ready, paths = sys.argv[1], sys.argv[2:]

    def on_result(res):
        with open(ready, "w") as fh:
            fh.write(res.path)
        threading.Event().wait(120)

    index_paths(paths, workers=2, on_result=on_result)


if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("orphans")
    return [str(make_video(d / f"v{i:02d}.mp4", width=128, height=96, fps=25, seconds=2, gop=25, bframes=0, seed=i)) for i in range(12)]


def _marked_pids(marker: bytes) -> list[int]:
    """Live (not zombie) processes whose environment carries ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue  # exited while we looked, or not ours to read
        if marker in env and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def _shm_semaphores() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("sem.mp-")}


def _poll(fn, deadline: float):
    """fn() until it returns a falsy value or the deadline passes; its last value."""
    while True:
        value = fn()
        if not value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _reap(tag: bytes, pids: list[int]) -> None:
    """Kill what a failed run left, the resource tracker last: once its pipe closes it
    unlinks the semaphores it tracks, so a failure does not leak /dev/shm entries."""

    def is_tracker(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return b"resource_tracker" in fh.read()
        except OSError:
            return False

    trackers = [p for p in pids if is_tracker(p)]
    for pid in [p for p in pids if p not in trackers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if _poll(lambda: [p for p in _marked_pids(tag) if p in trackers], time.monotonic() + 10):
        for pid in trackers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_indexer_leaves_nothing_behind(videos, tmp_path, sig):
    script = tmp_path / "indexer.py"
    script.write_text(SCRIPT)
    ready = tmp_path / "ready"
    marker = uuid.uuid4().hex
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        RINGLOAD_CACHE_DIR=str(tmp_path / "cache"),
        RINGLOAD_TEST_MARKER=marker,
    )
    tag = f"RINGLOAD_TEST_MARKER={marker}".encode()
    sems_before = _shm_semaphores()
    proc = subprocess.Popen([sys.executable, str(script), str(ready), *videos], env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, f"the indexing script exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "indexing never reported a first result"
            time.sleep(0.05)
        # The script and its indexing processes are alive: the kill below is mid-run.
        assert len(_marked_pids(tag)) >= 3
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    left = _poll(lambda: _marked_pids(tag), deadline)
    if left:
        _reap(tag, left)
    assert not left, f"processes outlived the killed indexer: {left}"
    new_sems = _poll(lambda: _shm_semaphores() - sems_before, deadline)
    assert not new_sems, f"/dev/shm entries left behind: {sorted(new_sems)}"


def _index_children() -> list[int]:
    """This process's spawned indexing processes (not the resource tracker)."""
    me = str(os.getpid()).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if fields[1] == me and fields[0] not in (b"Z", b"X") and b"spawn_main" in cmd:
            found.append(int(entry))
    return found


def test_a_dead_worker_fails_its_file_and_the_rest_go_on(videos, tmp_path):
    seen = []
    killed = []

    def on_result(res):
        seen.append(res)
        if not killed:
            kids = _index_children()
            assert len(kids) == 2
            os.kill(kids[0], signal.SIGKILL)
            killed.append(kids[0])

    res = index_paths(videos, cache=tmp_path / "c", workers=2, on_result=on_result)
    assert [r.path for r in res] == videos
    assert len(seen) == len(videos) and {r.path for r in seen} == set(videos)
    failed = [r for r in res if r.info is None]
    assert len(failed) == 1, [r.error for r in failed]
    assert failed[0].error_type == "WorkerError" and "killed by SIGKILL" in failed[0].error
    assert all(r.info.num_frames == 50 for r in res if r.info is not None)
    assert not _index_children()


def test_an_error_in_the_caller_stops_every_worker(videos, tmp_path):
    def on_result(res):
        raise KeyboardInterrupt

    deadline = time.monotonic() + 60
    with pytest.raises(KeyboardInterrupt):
        index_paths(videos, cache=tmp_path / "c", workers=2, on_result=on_result)
    assert time.monotonic() < deadline
    assert not _index_children()


# A child stuck in work that never reads its channel (a long probe) must still die with its parent.
BUSY_CHILD = """
import sys
import threading

from ringload.probe import _die_with_parent

_die_with_parent(int(sys.argv[2]))
open(sys.argv[1], "w").close()
threading.Event().wait(120)
"""
PARENT = """
import subprocess
import sys
import threading

subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2], str(__import__("os").getpid())])
threading.Event().wait(120)
"""


def test_a_busy_worker_dies_with_its_parent(tmp_path):
    (tmp_path / "child.py").write_text(BUSY_CHILD)
    (tmp_path / "parent.py").write_text(PARENT)
    ready = tmp_path / "ready"
    marker = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), RINGLOAD_TEST_MARKER=marker)
    tag = f"RINGLOAD_TEST_MARKER={marker}".encode()
    proc = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(tmp_path / "child.py"), str(ready)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        assert len(_marked_pids(tag)) == 2
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    left = _poll(lambda: _marked_pids(tag), time.monotonic() + 15)
    if left:
        _reap(tag, left)
    assert not left, f"the busy child outlived its parent: {left}"
