import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from helpers import alive, assert_same_batches, check_exact, collect, ringload_shm, wait_gone

from _fault_decoder import hanging

import ringload
from ringload import VideoError, VideoOpenError, _pool

from helpers import REPO as _REPO

REPO = str(_REPO)
KW = dict(batch_size=8, size=(24, 32), crop="random_resized", hflip=True, sampling="strict", seed=7)


def test_sigkill_a_decoder_mid_epoch_gives_identical_batches(engine_videos):
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        ref = collect(loader)
    with ringload.VideoLoader(engine_videos, num_workers=2, prefetch_batches=1, **KW) as loader:
        got = []
        for k, b in enumerate(loader):
            got.append(
                {"frames": b.frames.contiguous().numpy().copy(), "video": b.video_index.numpy().copy(),
                 "frame": b.frame_index.numpy().copy(), "pts": b.pts_seconds.numpy().copy()}
            )
            if k in (2, 9):
                victim = loader.stats()["decoder_pids"][0]
                os.kill(victim, signal.SIGKILL)
        stats = loader.stats()
        assert victim not in stats["decoder_pids"] and len(stats["decoder_pids"]) == 2
        # The replacement maps the ring although its name was gone before it started: it got
        # the descriptor over its control socket.
        for pid in stats["decoder_pids"]:
            with open(f"/proc/{pid}/maps") as f:
                assert any("/dev/shm/ringload-" in ln and "(deleted)" in ln for ln in f)
    assert stats["decoder_restarts"] >= 2
    assert_same_batches(ref, got)


def test_hung_decoder_is_killed_replaced_and_batches_identical(engine_videos, monkeypatch):
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        ref = collect(loader, limit=12)
    monkeypatch.setattr(_pool, "decoder_entry", hanging(tasks={6}))  # the decoder given task 6 sleeps on it
    with ringload.VideoLoader(engine_videos, num_workers=2, task_timeout_s=1.0, timeout_s=60, **KW) as loader:
        got = collect(loader, limit=12)
        stats = loader.stats()
    assert stats["hung_decoders_killed"] == 1
    assert stats["decoder_restarts"] == 1
    assert_same_batches(ref, got)


def test_file_that_keeps_killing_decoders_is_quarantined_not_retried_forever(engine_videos, monkeypatch):
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        ref = collect(loader, limit=6)
    monkeypatch.setattr(_pool, "decoder_entry", hanging(videos={1}))  # every task on video 1 hangs
    with ringload.VideoLoader(engine_videos, num_workers=2, task_timeout_s=0.5, on_error="skip", **KW) as loader:
        got = collect(loader, limit=6)
        stats = loader.stats()
    assert list(stats["quarantined"]) == [engine_videos[1]]
    assert "died 3 times" in stats["quarantined"][engine_videos[1]]
    # Tasks of the file already queued on other decoders when it was declared bad hang once more.
    assert stats["hung_decoders_killed"] >= 3
    for r, g in zip(ref, got):
        assert not (g["video"] == 1).any()
        keep = r["video"] != 1
        assert np.array_equal(r["frames"][keep], g["frames"][keep])


def test_ring_that_does_not_fit_in_shm_is_a_clear_error(engine_videos, monkeypatch):
    def refuse(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    with pytest.raises(ringload.ConfigError, match="prefetch_batches or batch_size"):
        ringload.VideoLoader(engine_videos, num_workers=1, **KW)
    assert ringload_shm() == []


def test_batch_wait_times_out_naming_the_setting(engine_videos, monkeypatch):
    monkeypatch.setattr(_pool, "decoder_entry", hanging(tasks={0}))
    with ringload.VideoLoader(engine_videos, num_workers=1, timeout_s=1.0, task_timeout_s=120, **KW) as loader:
        with pytest.raises(ringload.LoaderTimeoutError, match="timeout_s=1"):
            next(iter(loader))


def _corrupt_after_probe(engine_videos, tmp_path):
    """A dataset whose third file is replaced by garbage after the loader indexed it."""
    paths = []
    for i, p in enumerate(engine_videos):
        q = tmp_path / f"{i}{os.path.splitext(p)[1]}"
        shutil.copy(p, q)
        paths.append(str(q))
    return paths, paths[2]


def _garble(path):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def test_bad_file_raises_from_next_naming_the_file(engine_videos, tmp_path):
    paths, victim = _corrupt_after_probe(engine_videos, tmp_path)
    with ringload.VideoLoader(paths, num_workers=2, **KW) as loader:
        ref = collect(loader)
    first_bad = next(k for k, b in enumerate(ref) if (b["video"] == 2).any())
    with ringload.VideoLoader(paths, num_workers=2, **KW) as loader:
        _garble(victim)
        got = []
        with pytest.raises(VideoError) as info:
            for b in loader:
                got.append(b)
        assert loader.state_dict()["next_batch"] == first_bad
    assert info.value.path == victim and victim in str(info.value)
    assert len(got) == first_bad  # every batch before the bad one was delivered


def test_bad_file_skip_quarantines_and_replaces_deterministically(engine_videos, tmp_path):
    paths, victim = _corrupt_after_probe(engine_videos, tmp_path)
    kw = dict(KW, crop="none", hflip=False)
    with ringload.VideoLoader(paths, num_workers=2, **kw) as loader:
        ref = collect(loader)
        n = len(loader)
    runs = []
    for workers in (1, 3):
        shutil.copy(engine_videos[2], victim)
        with ringload.VideoLoader(paths, num_workers=workers, on_error="skip", **kw) as loader:
            _garble(victim)  # goes bad after indexing: found by the decoders mid-epoch
            runs.append(collect(loader))
            stats = loader.stats()
        assert list(stats["quarantined"]) == [victim]
        assert stats["replaced_samples"] > 0
    assert_same_batches(runs[0], runs[1])
    got = runs[0]
    assert len(got) == n
    replaced = 0
    for r, g in zip(ref, got):
        assert not (g["video"] == 2).any()
        keep = r["video"] != 2
        replaced += int((~keep).sum())
        assert np.array_equal(r["frames"][keep], g["frames"][keep])  # untouched samples unchanged
        assert np.array_equal(r["frame"][keep], g["frame"][keep])
    assert replaced > 0
    # Replacements are exact frames of other videos, never black or stale.
    assert check_exact(got, paths, kw["size"]) == sum(len(b["video"]) for b in got)


def test_bad_files_at_indexing_raise_or_are_quarantined(engine_videos, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(4096))
    paths = [engine_videos[0], str(empty), engine_videos[1], str(garbage)]
    with pytest.raises(VideoOpenError, match="empty.mp4"):
        ringload.VideoLoader(paths, num_workers=1, **KW)
    with ringload.VideoLoader(paths, num_workers=1, on_error="skip", **KW) as loader:
        batches = collect(loader)
        q = loader.stats()["quarantined"]
    assert set(q) == {str(empty), str(garbage)} and all(q.values())
    vids = np.concatenate([b["video"] for b in batches])
    assert set(vids.tolist()) == {0, 2}


_CHILD = textwrap.dedent(
    """
    import json, sys
    import ringload
    paths = json.loads(sys.argv[1])
    mode = sys.argv[2]
    loader = ringload.VideoLoader(paths, batch_size=4, size=(16, 16), num_workers=2, sampling="strict", prefetch_batches=1)
    it = iter(loader)
    next(it)
    print(json.dumps({"pids": loader.stats()["decoder_pids"]}), flush=True)
    if mode == "wait":
        sys.stdin.read()
    else:
        epoch = 0
        while True:
            epoch += 1
            loader.set_epoch(epoch)
            for _ in loader:
                pass
    """
)


def _start_child(paths, mode):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(paths), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"child failed: {proc.communicate(timeout=30)[1][-3000:]}")
    return proc, json.loads(line)["pids"]


def test_sigkill_of_consumer_leaves_no_shm_and_decoders_exit(engine_videos):
    before = ringload_shm()
    proc, pids = _start_child(engine_videos, "wait")
    try:
        assert len(pids) == 2 and all(alive(p) for p in pids)
        assert ringload_shm() == before  # the segment was unlinked before any decoder started
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert wait_gone(pids, timeout_s=10.0) == []
        assert ringload_shm() == before
    finally:
        proc.kill()
        proc.communicate(timeout=30)
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_ctrl_c_in_consumer_stops_decoders(engine_videos):
    proc, pids = _start_child(engine_videos, "loop")
    try:
        os.kill(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "KeyboardInterrupt" in err
        assert wait_gone(pids, timeout_s=10.0) == []
        assert ringload_shm() == []
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_exception_in_training_loop_and_break_then_gc(engine_videos):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
            pids = loader.stats()["decoder_pids"]
            for _ in loader:
                raise Boom()
    assert wait_gone(pids, timeout_s=10.0) == []

    loader = ringload.VideoLoader(engine_videos, num_workers=2, **KW)
    pids = loader.stats()["decoder_pids"]
    (thread,) = [t for t in threading.enumerate() if t.name == "ringload-scheduler"]
    for _ in loader:
        break
    del loader, _
    gc.collect()
    assert wait_gone(pids, timeout_s=10.0) == []
    thread.join(10.0)
    assert not thread.is_alive()
    assert ringload_shm() == []


def test_close_is_idempotent_and_closed_loader_refuses(engine_videos):
    loader = ringload.VideoLoader(engine_videos, num_workers=1, **KW)
    pids = loader.stats()["decoder_pids"]
    loader.close()
    loader.close()
    assert wait_gone(pids, timeout_s=5.0) == []
    with pytest.raises(ringload.LoaderStateError, match="closed"):
        iter(loader)


@pytest.mark.slow
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_decoder_deaths_spread_over_epochs_do_not_condemn_a_healthy_file(engine_videos, on_error):
    # One video, one decoder: whatever the decoder works on when it dies is this file. An
    # OOM-killer-like death once per epoch (here: stopped, then killed by the hang watchdog
    # while it holds a task) is no evidence against the file: its other tasks succeed between.
    kw = dict(KW, batch_size=4, prefetch_batches=1, on_error=on_error, timeout_s=60)
    with ringload.VideoLoader(engine_videos[:1], num_workers=1, **kw) as loader:
        ref = []
        for e in range(3):
            loader.set_epoch(e)
            ref.append(collect(loader))
    with ringload.VideoLoader(engine_videos[:1], num_workers=1, task_timeout_s=1.0, **kw) as loader:
        got = []
        for e in range(3):
            loader.set_epoch(e)
            batches = []
            for k, b in enumerate(loader):
                batches.append(
                    {"frames": b.frames.contiguous().numpy().copy(), "video": b.video_index.numpy().copy(),
                     "frame": b.frame_index.numpy().copy(), "pts": b.pts_seconds.numpy().copy()}
                )
                if k == 1:
                    os.kill(loader.stats()["decoder_pids"][0], signal.SIGSTOP)
            got.append(batches)
        stats = loader.stats()
    assert stats["hung_decoders_killed"] == 3 and stats["decoder_restarts"] == 3
    assert stats["quarantined"] == {}
    for r, g in zip(ref, got):
        assert_same_batches(r, g)


_FORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import ringload

    def digest(loader):
        h = hashlib.sha256()
        for b in loader:
            h.update(b.frames.contiguous().numpy().tobytes())
            h.update(b.frame_index.numpy().tobytes())
        return h.hexdigest()

    if __name__ == "__main__":
        paths = json.loads(sys.argv[1])
        loader = ringload.VideoLoader(paths, batch_size=4, size=(16, 16), num_workers=2, sampling="strict", prefetch_batches=1)
        ref = digest(loader)
        pids = loader.stats()["decoder_pids"]
        child_error = None
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                try:
                    iter(loader)  # a forked child may not use its parent's loader
                except ringload.RingloadError as exc:
                    code = 0 if "fork" in str(exc) else 3
                else:
                    code = 4
                sys.exit(code)
            _, status = os.waitpid(pid, 0)
            child_error = child_error or os.waitstatus_to_exitcode(status)
        loader.set_epoch(0)
        again = digest(loader)
        st = loader.stats()
        print(json.dumps({"same": again == ref, "restarts": st["decoder_restarts"], "child": child_error,
                          "pids_kept": st["decoder_pids"] == pids}), flush=True)
        loader.close()
    """
)


def test_a_forked_child_leaves_the_parents_decoders_alone(engine_videos, tmp_path):
    script = tmp_path / "forker.py"
    script.write_text(_FORKER)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(engine_videos)], capture_output=True, text=True, env=env, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"same": True, "restarts": 0, "child": 0, "pids_kept": True}, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "AssertionError" not in proc.stderr, proc.stderr[-3000:]
