"""Leaving a pass early (peek, break, exception, Ctrl-C) and iterating again always works.

Each path waits until the ring is full of the abandoned pass's batches before looping again:
a loop started at once would not show the wedge (the ring has free slots then).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import assert_same_batches, collect

import ringload

KW = dict(batch_size=8, size=(24, 32), crop="random_resized", hflip=True, seed=3, prefetch_batches=2, timeout_s=60)


def _wait_ring_full(loader, timeout_s: float = 60.0) -> None:
    """Poll until every ring slot holds a decoded batch the consumer has not taken."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = loader.stats()
        if st["ready_batches"] >= st["num_slots"]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the ring did not fill within {timeout_s} s: {st['ready_batches']} of {st['num_slots']}")
        time.sleep(0.02)


class _Stop(Exception):
    pass


def _peek(loader):
    next(iter(loader))


def _break(loader):
    for k, _ in enumerate(loader):
        if k == 2:
            break


def _exception(loader):
    with pytest.raises(_Stop):
        for k, _ in enumerate(loader):
            if k == 1:
                raise _Stop


def _ctrl_c(loader):
    with pytest.raises(KeyboardInterrupt):
        for k, _ in enumerate(loader):
            if k == 3:
                os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: Python raises it in this thread
                raise AssertionError("SIGINT did not interrupt the loop")


def _set_epoch_between(loader):
    for k, _ in enumerate(loader):
        if k == 1:
            break
    loader.set_epoch(1)
    next(iter(loader))


PATHS = {"peek": _peek, "break": _break, "exception": _exception, "ctrl_c": _ctrl_c, "set_epoch": _set_epoch_between}


@pytest.fixture(scope="module", params=["strict", "bounded", "sequential"])
def mode_ref(request, engine_videos):
    kw = dict(KW, sampling=request.param)
    if request.param == "bounded":
        kw["chunk_len"] = 8
    with ringload.VideoLoader(engine_videos, num_workers=2, **kw) as loader:
        ref = collect(loader)
    return kw, ref


@pytest.mark.parametrize("path", sorted(PATHS))
def test_iterating_again_after_leaving_a_pass_early(engine_videos, mode_ref, path):
    kw, ref = mode_ref
    with ringload.VideoLoader(engine_videos, num_workers=2, **kw) as loader:
        assert len(loader) > loader.stats()["num_slots"] + 4  # the abandoned pass can fill the ring
        PATHS[path](loader)
        _wait_ring_full(loader)
        state = loader.state_dict()
        # Where the next pass starts is the iteration contract's business; here it must
        # deliver exactly the batches of that epoch from that position.
        loader.set_epoch(0)
        again = collect(loader)
        assert_same_batches(again, ref)
        # A loop straight after the early exit, without set_epoch, also completes.
        PATHS[path](loader)
        _wait_ring_full(loader)
        rest = collect(loader)
        assert len(rest) >= 1
        assert loader.stats()["decoder_restarts"] == 0
    assert state["epoch"] in (0, 1)
