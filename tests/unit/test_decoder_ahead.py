"""A decoder looks at its next queued task while the current one decodes (ringload._decoder)."""

from __future__ import annotations

import socket

import numpy as np

from ringload import _decoder
from ringload import _protocol as P


def _task(task_id: int) -> P.Task:
    z = np.zeros(1, dtype=np.int64)
    return P.Task(task_id, 0, "s3://bucket/v.mp4", z, z, z, z, z, np.zeros((1, 4), dtype=np.int64), z.astype(bool), (8, 8))


def test_pending_says_whether_recv_would_wait():
    a, b = socket.socketpair()
    with a, b:
        chan = _decoder.Channel(a)
        assert not chan.pending()
        data = P.encode(_task(1))
        b.sendall(data[:10])  # part of a message: recv would still wait
        assert not chan.pending()
        b.sendall(data[10:])
        assert chan.pending()
        assert chan.recv().task_id == 1
        assert not chan.pending()
        b.shutdown(socket.SHUT_WR)
        assert chan.pending()  # end-of-file: recv answers at once
        assert chan.recv() is None and chan.recv() is None


class _Runner:
    """Records what serve asks: each task's run, and warm calls made while a run was going on."""

    def __init__(self):
        self.events: list[tuple[str, int]] = []

    def warm(self, task):
        self.events.append(("warm", task.task_id))

    def run(self, task, *, idle_s=0.0, ahead=None):
        self.events.append(("run", task.task_id))
        # A decode calls ahead() before decoding and after each frame until it says done.
        for _ in range(3):
            if ahead is not None and ahead():
                break
        self.events.append(("done", task.task_id))
        return P.Done(task.task_id, 1, idle_s, 0.0)

    def close(self):
        self.events.append(("close", -1))


def test_serve_warms_the_queued_task_during_the_current_one():
    a, b = socket.socketpair()
    with a, b:
        for t in (1, 2, 3):
            b.sendall(P.encode(_task(t)))
        b.shutdown(socket.SHUT_WR)
        runner = _Runner()
        _decoder.serve(_decoder.Channel(a), runner)
        assert runner.events == [
            ("run", 1), ("warm", 2), ("done", 1),
            ("run", 2), ("warm", 3), ("done", 2),
            ("run", 3), ("done", 3),
            ("close", -1),
        ]  # fmt: skip
        reader, replies = P.MessageReader(), []
        b.settimeout(10)
        while len(replies) < 4:
            replies += reader.feed(b.recv(1 << 16))
        assert isinstance(replies[0], P.Ready) and [r.task_id for r in replies[1:]] == [1, 2, 3]
