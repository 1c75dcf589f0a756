"""Limits the loader enforces and what it says when they are hit: seeds, epochs, ring size,
closing from another thread, decoders that never start."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import pytest

import ringload
from ringload import ConfigError, LoaderStateError, WorkerError, plan_epoch

KW = dict(batch_size=4, size=(16, 16), sampling="strict", seed=1)


@pytest.mark.parametrize("seed", [2**64, -1])
def test_seeds_outside_the_generator_range_are_rejected(seed, engine_videos):
    with pytest.raises(ConfigError, match="seed"):
        ringload.VideoLoader(engine_videos, **dict(KW, seed=seed))
    with pytest.raises(ConfigError, match="seed"):
        plan_epoch([10, 20], batch_size=4, seed=seed)


def test_largest_seed_and_epoch_are_distinct_from_zero():
    a = plan_epoch([50, 60], batch_size=8, seed=0, mode="strict")[0]
    b = plan_epoch([50, 60], batch_size=8, seed=2**64 - 1, mode="strict")[0]
    assert not (a == b).all()
    with pytest.raises(ConfigError, match="epoch"):
        plan_epoch([50, 60], batch_size=8, seed=0, epoch=2**32)


def test_set_epoch_outside_the_range_is_rejected(engine_videos):
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        with pytest.raises(ConfigError, match="set_epoch"):
            loader.set_epoch(2**32)


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


def test_a_ring_larger_than_memory_allows_is_refused_before_allocating(engine_videos, monkeypatch):
    calls = []
    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, n: (calls.append(n), real(fd, off, n))[1])
    slot = 4 * 16 * 16 * 3
    prefetch = int(0.6 * _mem_available()) // slot
    with pytest.raises(ConfigError, match="prefetch_batches") as err:
        ringload.VideoLoader(engine_videos, num_workers=1, prefetch_batches=prefetch, **KW)
    assert "available memory" in str(err.value)
    assert calls == []


def _blocked_in_wait(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "wait" and "_scheduler" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


@pytest.mark.slow
def test_close_from_another_thread_while_iterating_says_so(engine_videos):
    loader = ringload.VideoLoader(engine_videos, num_workers=1, timeout_s=60, **KW)
    pid = loader.stats()["decoder_pids"][0]
    os.kill(pid, signal.SIGSTOP)  # no batch can arrive: the consumer waits
    main = threading.current_thread()

    def closer():
        deadline = time.monotonic() + 30
        while not _blocked_in_wait(main) and time.monotonic() < deadline:
            time.sleep(0.01)
        loader.close()

    t = threading.Thread(target=closer)
    t.start()
    try:
        with pytest.raises(LoaderStateError, match="closed"):
            next(iter(loader))
    finally:
        t.join(60)
        loader.close()  # idempotent; the stopped decoder is killed by the teardown


@pytest.mark.slow
def test_a_decoder_stopped_during_start_up_is_replaced_within_the_settings(engine_videos, caplog):
    caplog.set_level(logging.WARNING, logger="ringload")
    with ringload.VideoLoader(engine_videos, num_workers=1, task_timeout_s=1.0, timeout_s=40, **KW) as loader:
        os.kill(loader.stats()["decoder_pids"][0], signal.SIGSTOP)  # before it could connect
        batch = next(iter(loader))
        assert len(batch) == 4
        assert loader.stats()["decoder_restarts"] == 1
    assert any("task_timeout_s" in r.getMessage() for r in caplog.records)


def test_decoders_killed_during_start_up_give_an_error_that_says_what_happened(engine_videos):
    loader = ringload.VideoLoader(engine_videos, num_workers=1, timeout_s=60, **KW)
    try:
        killed = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = loader.stats()["decoder_pids"]
            for p in set(pids) - killed:
                os.kill(p, signal.SIGKILL)
                killed.add(p)
            if len(killed) >= 4:  # the loader gives up after the fourth death in a row
                break
            time.sleep(0.005)
        with pytest.raises(WorkerError) as err:
            next(iter(loader))
        msg = str(err.value)
        assert "SIGKILL" in msg and "__main__" not in msg
    finally:
        loader.close()
