"""A decoder entry point that injects faults, handed to the pool by tests:

    monkeypatch.setattr(ringload._pool, "decoder_entry", hanging(tasks={6}))

It runs the real decoder, except that it sleeps (until killed) on the tasks whose id is in
``tasks`` or whose video index is in ``videos``. Not a test module: spawned decoders import it.
"""

from __future__ import annotations

import functools
import time

from ringload import _decoder


class _HangingRunner(_decoder.TaskRunner):
    def __init__(self, slots, options, index, *, tasks, videos):
        super().__init__(slots, options, index)
        self.tasks, self.videos = tasks, videos

    def run(self, task, **kw):
        if task.task_id in self.tasks or task.video in self.videos:
            time.sleep(3600)  # stuck, as a decoder in a pathological file would be; the watchdog kills it
        return super().run(task, **kw)


def _main(sock, token, worker_id, *, tasks, videos):
    _decoder.main(sock, token, worker_id, runner=functools.partial(_HangingRunner, tasks=tasks, videos=videos))


def hanging(*, tasks=(), videos=()):
    return functools.partial(_main, tasks=frozenset(tasks), videos=frozenset(videos))
