"""The scheduler: wires the work window (``_work``) to the decoder pool (``_pool``) on an
asyncio (uvloop) loop in a background thread of the consumer process.

It decides only *when and where* frames are decoded; *what* goes into batch k comes from
the sampler the loader hands it (a pure function of seed, epoch, rank, k and the config).
The consumer talks to it through thread-safe calls: ``start_epoch``, ``wait`` for batch k
(a future per batch), ``release`` of a slot. A decoder's death re-runs its tasks (writes
are idempotent, so the batch is the same); what a failure means for a sample or a file is
the window's business.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time

from . import _protocol as P
from ._pool import MIN_STARTUP_TIMEOUT_S, DecoderPool
from ._work import Completed, Window, request_arrays
from .errors import LoaderStateError, WorkerError

log = logging.getLogger(__name__)

__all__ = ["Completed", "Scheduler", "SchedulerOptions"]


@dataclasses.dataclass(frozen=True)
class SchedulerOptions:
    """``task_timeout_s`` (plus a share per frame) bounds one task, and a decoder's start-up
    (at least MIN_STARTUP_TIMEOUT_S); ``depth`` tasks queued per decoder; ``max_open``
    videos a decoder keeps open; ``orientation`` how decoders turn frames ("display" or "coded");
    ``split_head``: a bounded pass's first batch takes only its own frames of shared GOPs
    (``Window.pick``)."""

    task_timeout_s: float = 60.0
    depth: int = 2
    max_open: int = 4
    orientation: str = "display"
    decoder_threads: int = 1
    split_head: bool = True
    storage: tuple = dataclasses.field(default=({}, 256 << 20, 3, 30.0), repr=False)  # DecoderOptions.storage


class Scheduler:
    """Runs decoders and fills ring slots; the consumer talks to it through thread-safe calls."""

    def __init__(self, *, ring, index, num_workers: int, paths, infos, size, on_error: str, options: SchedulerOptions,
                 quarantined=None):
        self.ring = ring
        self.index = index  # the mapped index file decoders look videos up in
        self.num_workers = num_workers
        self.paths = list(paths)
        self.infos = infos
        self.size = size
        self.options = options
        self.counters = collections.Counter()
        self.owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._gen = 0  # consumer side: the newest pass
        self._epoch_gen = 0  # loop side: the pass the window holds
        self._futures: dict[int, concurrent.futures.Future] = {}
        self._fatal: BaseException | None = None
        self._closing = self._closed = False
        self._loop = None
        self._pool: DecoderPool | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ringload-scheduler", daemon=True)
        self.window = Window(
            num_slots=ring.layout.num_slots, paths=self.paths, infos=infos, on_error=on_error,
            task_timeout_s=options.task_timeout_s, counters=self.counters,
            on_complete=self._complete, on_fail=self._fail, quarantined=quarantined, split_head=options.split_head,
        )

    # ------------------------------------------------------------------ consumer side

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise WorkerError(f"the scheduler thread did not start within {timeout_s:.0f} s")
        if self._fatal is not None:
            raise self._fatal

    def start_epoch(self, sampler, first_k: int, end_k: int) -> int:
        """Forget any batches in progress and decode batches first_k..end_k-1 of ``sampler``."""
        with self._lock:
            self._gen += 1
            gen = self._gen
            for fut in self._futures.values():
                fut.cancel()
            self._futures = {}
        self._call(self._begin, gen, sampler, first_k, end_k)
        return gen

    def wait(self, gen: int, k: int, timeout_s: float) -> Completed:
        """Block until batch k of generation gen is complete; raises its error if it failed."""
        fut = self._future(gen, k)
        result = fut.result(timeout=timeout_s)
        with self._lock:
            if self._futures.get(k) is fut:
                del self._futures[k]  # delivered: keep the table as small as the window
        # The slot is the consumer's until release(): a new pass must not reuse it before.
        self._call(self.window.hold, result.slot)
        return result

    def release(self, slot: int) -> None:
        """The consumer is done with ``slot``: it may be refilled."""
        self._call(self._release, slot)

    def snapshot(self) -> dict:
        return {
            "ready_batches": self.window.ready_batches(),
            "counters": dict(self.counters),
            "quarantined": dict(self.window.quarantined),
            "decoders": self._pool.snapshot() if self._pool is not None else [],
            "decoder_pids": self._pool.pids() if self._pool is not None else [],
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop decoders (join, terminate, kill, each with a timeout) and the loop thread."""
        if self._closed:
            return
        self._closed = self._closing = True
        if os.getpid() != self.owner_pid:
            return  # a forked child: the decoders and the loop thread belong to the parent
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            if threading.current_thread() is self._thread:
                self._stop_event.set()  # a finalizer run by GC on the loop thread itself
                return
            try:
                loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:
                pass
            self._thread.join(timeout_s)
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            for fut in self._futures.values():
                fut.cancel()

    def _call(self, fn, *args) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing or self._loop is None:
            raise LoaderStateError("the loader was closed (close() was called, perhaps from another thread)")
        self._loop.call_soon_threadsafe(self._guard, fn, *args)

    def _future(self, gen: int, k: int) -> concurrent.futures.Future:
        with self._lock:
            if gen != self._gen:
                fut = concurrent.futures.Future()
                fut.set_exception(
                    LoaderStateError("this pass was superseded: iter(loader) was called again; keep using the newest iterator")
                )
                return fut
            fut = self._future_of(k)
            if self._fatal is not None and not fut.done():
                fut.set_exception(self._fatal)
            return fut

    def _future_of(self, k: int) -> concurrent.futures.Future:
        """Batch k's future in the current pass, made on first use by either side (hold the lock)."""
        fut = self._futures.get(k)
        if fut is None:
            fut = self._futures[k] = concurrent.futures.Future()
        return fut

    # ------------------------------------------------------------------ loop thread

    def _run(self) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # the consumer must hear about it instead of hanging
            self.fatal(exc if isinstance(exc, Exception) else WorkerError(repr(exc)))
            self._started.set()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        opts = self.options
        self._pool = DecoderPool(
            owner=self, loop=loop, ring=self.ring, index=self.index, num_workers=self.num_workers,
            options=P.DecoderOptions(max_open=opts.max_open, orientation=opts.orientation, threads=opts.decoder_threads,
                                     storage=opts.storage),
            startup_timeout_s=max(MIN_STARTUP_TIMEOUT_S, opts.task_timeout_s),
        )
        try:
            self._pool.start()
            self._started.set()
            watch = loop.create_task(self._watchdog())
            await self._stop_event.wait()
            watch.cancel()
        finally:
            self._closing = True
            await self._pool.shutdown()

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self._guard(self._pool.check_deadlines, time.monotonic())

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self.fatal(exc)

    def fatal(self, exc: BaseException) -> None:
        if self._fatal is None:
            log.error("loader failed: %r", exc)
            self._fatal = exc
        with self._lock:
            for fut in self._futures.values():
                if not fut.done():
                    fut.set_exception(exc)

    # ---- what the pool reports

    def on_message(self, dec, msg) -> None:
        if isinstance(msg, P.Ready):
            self._pool.ready(dec, msg)
        elif isinstance(msg, (P.Done, P.Failed)):
            self.counters["decoder_idle_s"] += msg.idle_s
            self.counters["decoder_busy_s"] += msg.busy_s
            for name, v in zip(P.REMOTE_COUNTERS, msg.remote):
                self.counters["remote_" + name] += int(v)
            work = self._pool.finished(dec, msg.task_id)
            if work is None:
                return
            self.counters["tasks"] += 1
            self.counters["decoded_frames"] += int(msg.decoded_frames)
            if isinstance(msg, P.Done):
                self.window.finish(work, None, None)
            else:
                dec.open.pop(work.video, None)
                dec.last = None
                self.window.finish(work, msg.error, msg.delivered)
        else:
            raise P.ProtocolError(f"unexpected message from decoder {dec.id}: {type(msg).__name__}")
        self._dispatch()

    def on_death(self, dec, works, cause: str) -> None:
        self.counters["decoder_restarts"] += 1
        for i, work in enumerate(works):
            if i == 0:
                self.window.decoder_died(work, cause)
            else:
                self.window.lose(work)
        self._dispatch()

    # ---- passes, slots and dispatch

    def _begin(self, gen: int, sampler, first_k: int, end_k: int) -> None:
        self._epoch_gen = gen
        self.window.begin(sampler, first_k, end_k)
        self._dispatch()

    def _release(self, slot: int) -> None:
        self.window.release(slot)
        self._dispatch()

    def _dispatch(self) -> None:
        if self._closing or self._fatal is not None or self._pool is None:
            return
        window, pool = self.window, self._pool
        progress = True
        while progress:
            progress = False
            for dec in pool.idle(self.options.depth):
                picked = window.pick(eager=not dec.inflight, last=dec.last, open_videos=dec.open)
                if picked is None:
                    continue
                video, reqs, dec.last = picked
                work = window.make_work(video, reqs)
                slot, row, t, crop, flip = request_arrays(reqs)
                dec.opened(video, self.options.max_open)
                msg = P.Task(work.task_id, video, self.paths[video], work.frames, work.req_frame, slot, row, t, crop, flip, self.size)
                pool.send(dec, work, msg)
                progress = True

    # ---- what the window reports (loop thread)

    def _complete(self, batch, done: Completed) -> None:
        self._settle_future(batch.k, done, None)

    def _fail(self, batch, exc) -> None:
        self._settle_future(batch.k, None, exc)

    def _settle_future(self, k: int, result, exc) -> None:
        with self._lock:
            if self._epoch_gen != self._gen:
                return  # a batch of a pass the consumer has left
            fut = self._future_of(k)
        if not fut.done():
            if exc is None:
                fut.set_result(result)
            else:
                fut.set_exception(exc)
