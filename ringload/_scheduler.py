"""The scheduler: an asyncio (uvloop) loop on a background thread of the consumer process.

It decides only *when and where* frames are decoded; *what* goes into batch k comes from
the sampler the loader hands it (a pure function of seed, epoch, rank, k and the config).

- Look-ahead and backpressure: a batch enters the window when a ring slot is free, so at
  most ``num_slots`` batches are being decoded or waiting for the consumer.
- Grouping: every frame a batch in the window needs becomes a request filed under its
  (video, GOP). A decoder takes a whole GOP group (plus the next pending GOPs of the same
  video), so each GOP is decoded once per window however many samples it feeds, and
  bounded chunks turn into sequential runs.
- Affinity: an idle decoder first continues where its last task ended, then takes pending
  work from videos it holds open, then the group the earliest batch waits for (the first
  two only within a slack of the earliest batch, so no batch starves).
- Faults: a decoder that dies (process sentinel) or hangs past its task's timeout (it is
  killed) is replaced and its tasks re-run; writes are idempotent, so the batch is the same.
  A bad file either fails the batch that needs it (``on_error="raise"``) or has its samples
  replaced by the sampler's deterministic redraws (``on_error="skip"``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import heapq
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np

from . import _worker
from .errors import LoaderStateError, NoVideoStreamError, VideoError, VideoOpenError, WorkerError

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 64  # redraws of one sample before the loader gives up (too many bad files)
_CRASHES_PER_VIDEO = 3  # decoder deaths on one file before the file counts as bad
# A decoder that has not connected within task_timeout_s (at least this) is killed and replaced.
_MIN_STARTUP_TIMEOUT_S = 10.0
_INFO_MIRROR_MIN, _INFO_MIRROR_MAX = 8, 128  # video indexes a decoder is known to hold
_TASK_CAP = 128  # frame requests per task: bounds a task's duration and keeps decoders parallel
_MAX_GOPS_PER_TASK = 8
# Groups of the first _GATE + 1 incomplete batches are decoded first (see Scheduler._pick).
_GATE = 1


# Schedulers alive in this process, so that a forked child can forget their decoders.
_LIVE: weakref.WeakSet = weakref.WeakSet()


def _forget_decoders_in_child() -> None:
    # multiprocessing's exit hook terminates every child it knows of, even in a process
    # forked by os.fork(): the decoders are the parent's, so the child must not know them.
    from multiprocessing import process

    for sched in list(_LIVE):
        for dec in list(sched._decoders.values()):
            process._children.discard(dec.proc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_decoders_in_child)


@dataclass(frozen=True)
class Completed:
    """A batch whose frames are all in ``slot``: what each of its ``n`` rows holds."""

    slot: int
    video: np.ndarray  # (n,) int64
    start: np.ndarray  # (n,) int64
    frames: np.ndarray  # (n, T) int64


class _Sample:
    __slots__ = ("batch", "b", "key", "video", "start", "frames", "crop", "flip", "attempt", "remaining", "inflight", "needs_replace")

    def __init__(self, batch, b, video, start, frames, crop, flip):
        self.batch = batch
        self.b = b
        self.key = (video, start)  # the plan's sample: redraws are keyed by it
        self.video = video
        self.start = start
        self.frames = frames
        self.crop = crop
        self.flip = flip
        self.attempt = 0
        self.remaining = len(frames)
        self.inflight = 0
        self.needs_replace = False


class _Batch:
    __slots__ = ("k", "slot", "samples", "remaining", "retired", "failed", "held")

    def __init__(self, k, slot):
        self.k = k
        self.slot = slot
        self.samples: list[_Sample] = []
        self.remaining = 0
        self.retired = False  # no longer wanted: its slot is freed once nothing uses it
        self.failed = False
        self.held = False  # handed to the consumer, which gives the slot back through release()

    def inflight(self) -> int:
        return sum(s.inflight for s in self.samples)


class _Req:
    __slots__ = ("sample", "attempt", "t", "frame")

    def __init__(self, sample, t, frame):
        self.sample = sample
        self.attempt = sample.attempt
        self.t = t
        self.frame = frame

    def fresh(self) -> bool:
        s = self.sample
        return self.attempt == s.attempt and not s.batch.retired and not s.batch.failed


class _Task:
    __slots__ = ("id", "video", "reqs", "req_u", "timeout_s", "deadline", "uidx")

    def __init__(self, task_id, video, reqs, req_u, uidx, timeout_s):
        self.id = task_id
        self.video = video
        self.reqs = reqs
        self.req_u = req_u
        self.uidx = uidx
        self.timeout_s = timeout_s
        self.deadline = None


class _Decoder:
    def __init__(self, wid, proc):
        self.id = wid
        self.proc = proc
        self.pid = proc.pid
        self.sock: socket.socket | None = None  # our end of the control channel until the transport takes it
        self.handshake: asyncio.Task | None = None
        self.hung = False  # killed by the watchdog (task_timeout_s)
        self.transport = None
        self.ready = False
        self.dead = False
        self.ever_ready = False
        self.started = time.monotonic()
        self.torch_loaded = None
        self.inflight: collections.OrderedDict[int, _Task] = collections.OrderedDict()
        self.last: tuple[int, int] | None = None
        self.open: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.infos: collections.OrderedDict[int, None] = collections.OrderedDict()


class _Proto(asyncio.Protocol):
    def __init__(self, sched, dec):
        self.sched = sched
        self.dec = dec
        self.reader = _worker.FrameReader()

    def connection_made(self, transport):
        # Set here, not after connect_accepted_socket returns: the decoder's "ready" can
        # arrive (and tasks be sent) before that.
        self.dec.transport = transport

    def data_received(self, data):
        try:
            for msg in self.reader.feed(data):
                self.sched._on_message(self.dec, msg)
        except Exception as exc:  # a bug here must not leave the consumer waiting forever
            self.sched._set_fatal(exc)

    def connection_lost(self, exc):
        self.dec.ready = False


class Scheduler:
    """Runs decoders and fills ring slots; the consumer talks to it through thread-safe calls."""

    def __init__(self, *, ring, num_workers: int, paths, infos, size, on_error: str, options: dict):
        self.ring = ring
        self.num_workers = num_workers
        self.paths = list(paths)
        self.infos = infos
        self.size = size
        self.on_error = on_error
        self.task_timeout_s = float(options.get("task_timeout_s", 60.0))
        self.startup_timeout_s = max(_MIN_STARTUP_TIMEOUT_S, self.task_timeout_s)
        self.hang_task = options.get("hang_task")
        self.hang_video = options.get("hang_video")
        self.hang_s = float(options.get("hang_s", 3600.0))
        self.depth = int(options.get("depth", 2))
        self.max_open = int(options.get("max_open", 4))
        self.orientation = options.get("orientation", "display")  # decoders turn frames as the loader says
        # How many video indexes a decoder keeps (it keeps twice this, see _worker): about
        # 64 MiB of timestamps at the dataset's mean length, between 8 and 128 videos.
        frames = [int(i.num_frames) for i in infos if i is not None]
        mean_bytes = 24 * (sum(frames) / len(frames)) if frames else 1
        self.info_mirror = int(min(_INFO_MIRROR_MAX, max(_INFO_MIRROR_MIN, (64 << 20) // max(1, mean_bytes))))
        self._ctx = multiprocessing.get_context("spawn")
        self.owner_pid = os.getpid()  # only this process ever signals or reaps the decoders
        self._token = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._gen = 0
        self._futures: dict[int, concurrent.futures.Future] = {}
        self._fatal: BaseException | None = None
        self._closing = False
        self._closed = False
        self._loop = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ringload-scheduler", daemon=True)
        # Loop-thread state.
        self._decoders: dict[int, _Decoder] = {}
        self._free_slots = collections.deque(range(ring.layout.num_slots))
        self._slot_batch: dict[int, _Batch] = {}
        self._active: dict[int, _Batch] = {}
        self._sampler = None
        self._spread = 1
        self._epoch_gen = 0
        self._next_k = 0
        self._end_k = 0
        self._pending: dict[tuple[int, int], list[_Req]] = {}
        self._group_min: dict[tuple[int, int], int] = {}
        self._by_video: dict[int, set[int]] = collections.defaultdict(set)
        self._heap: list[tuple[int, int, int]] = []
        self._task_seq = 0
        self._dead_videos: dict[int, str] = {}
        self._crashes: dict[int, list[str]] = {}  # video -> causes of consecutive decoder deaths on it
        self._startup_failures: list[str] = []  # causes of consecutive deaths before a decoder was ready
        self._keyframes_cache: dict[int, np.ndarray] = {}
        self.counters = collections.Counter()
        self.quarantined: dict[str, str] = {}
        _LIVE.add(self)

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
        self._call(self._begin_epoch, gen, sampler, first_k, end_k)
        return gen

    def wait(self, gen: int, k: int, timeout_s: float) -> Completed:
        """Block until batch k of generation gen is complete; raises its error if it failed."""
        fut = self._future(gen, k)
        result = fut.result(timeout=timeout_s)
        with self._lock:
            if self._futures.get(k) is fut:
                del self._futures[k]  # delivered: keep the table as small as the window
        # The slot is the consumer's until release(): a new epoch must not reuse it before.
        self._call(self._hold, result.slot)
        return result

    def release(self, slot: int) -> None:
        """The consumer is done with ``slot``: it may be refilled."""
        self._call(self._release, slot)

    def decoder_pids(self) -> list[int]:
        return [d.pid for d in list(self._decoders.values()) if not d.dead]

    def snapshot(self) -> dict:
        batches = list(self._slot_batch.values())
        return {
            "ready_batches": sum(1 for b in batches if b.remaining == 0 and not (b.retired or b.failed or b.held)),
            "counters": dict(self.counters),
            "quarantined": dict(self.quarantined),
            "decoders": [
                {"id": d.id, "pid": d.pid, "ready": d.ready, "torch_loaded": d.torch_loaded} for d in list(self._decoders.values())
            ],
        }

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop decoders (join, terminate, kill, each with a timeout) and the loop thread."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        if os.getpid() != self.owner_pid:
            return  # a forked child: the decoders and the loop thread belong to the parent
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            if threading.current_thread() is self._thread:
                # Called from the loop itself (a finalizer run by GC on this thread).
                self._stop_event.set()
                return
            try:
                loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:
                pass
            self._thread.join(timeout_s)
        # Whatever the loop could not stop (thread wedged or never started) dies here.
        for dec in list(self._decoders.values()):
            _reap(dec.proc, 0.5)
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
                fut.set_exception(WorkerError("this epoch was superseded by a newer iteration of the loader"))
                return fut
            fut = self._futures.get(k)
            if fut is None:
                fut = self._futures[k] = concurrent.futures.Future()
                if self._fatal is not None:
                    fut.set_exception(self._fatal)
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
            self._set_fatal(exc if isinstance(exc, Exception) else WorkerError(repr(exc)))
            self._started.set()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            for wid in range(self.num_workers):
                self._spawn(wid)
            self._started.set()
            watch = loop.create_task(self._watchdog())
            await self._stop_event.wait()
            watch.cancel()
        finally:
            self._closing = True
            await self._shutdown_decoders()

    async def _shutdown_decoders(self) -> None:
        decs = list(self._decoders.values())
        for dec in decs:
            try:
                self._loop.remove_reader(dec.proc.sentinel)
            except (ValueError, OSError):
                pass
            if dec.transport is not None:
                dec.transport.close()  # EOF on the control socket: the decoder exits
            elif dec.handshake is not None:
                dec.handshake.cancel()  # closes our end: the decoder sees EOF and exits
            if dec.inflight and dec.proc.exitcode is None:
                dec.proc.terminate()  # busy with a task it would finish first: results are unwanted
        for step, timeout in (("join", 3.0), ("terminate", 2.0), ("kill", 2.0)):
            alive = [d for d in decs if d.proc.exitcode is None]
            if not alive:
                break
            if step == "terminate":
                for d in alive:
                    d.proc.terminate()
            elif step == "kill":
                for d in alive:
                    d.proc.kill()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(d.proc.exitcode is None for d in alive):
                await asyncio.sleep(0.02)
        for d in decs:
            d.proc.join(0.1)
            if d.proc.exitcode is None:
                log.warning("decoder pid %d did not exit", d.pid)
            else:
                d.proc.close()
        self._decoders.clear()

    def _spawn(self, wid: int) -> None:
        # The control channel is a socketpair whose child end is inherited at spawn: it has
        # no name, so no other process (another local user included) can connect to either side.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = self._ctx.Process(
                target=_worker.main, args=(theirs, self._token, wid), name=f"ringload-decoder-{wid}", daemon=True
            )
            proc.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        dec = _Decoder(wid, proc)
        dec.sock = ours
        self._decoders[wid] = dec
        self._loop.add_reader(proc.sentinel, self._on_sentinel, dec)
        self.counters["decoders_started"] += 1
        dec.handshake = self._loop.create_task(self._handshake(dec))

    async def _handshake(self, dec: _Decoder) -> None:
        loop = asyncio.get_running_loop()
        conn = dec.sock
        try:
            conn.setblocking(False)
            msgs = await _recv_first(loop, conn)
            if dec.dead or not msgs:
                return
            kind, _wid, _pid, token, torch_loaded = msgs[0]
            if kind != "hello" or token != self._token:
                log.warning("decoder %d (pid %d) sent an unexpected first message; replacing it", dec.id, dec.pid)
                os.kill(dec.pid, signal.SIGKILL)
                return
            dec.torch_loaded = torch_loaded
            options = {"max_open": self.max_open, "info_cache": 2 * self.info_mirror, "orientation": self.orientation}
            socket.send_fds(conn, [_worker.pack(("ring", self.ring.layout, options))], [self.ring.fd])
            dec.sock = None  # the transport owns it from here
            transport, _ = await loop.connect_accepted_socket(lambda: _Proto(self, dec), sock=conn)
            if dec.dead:
                transport.close()
        except (OSError, ValueError) as exc:
            if not dec.dead:
                log.warning("decoder %d (pid %d) handshake failed: %s", dec.id, dec.pid, exc)
        finally:
            if dec.sock is not None:  # not handed to a transport: EOF tells the decoder to exit
                dec.sock.close()
                dec.sock = None

    def _on_sentinel(self, dec: _Decoder) -> None:
        self._guard(self._on_death, dec)

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self._set_fatal(exc)

    def _set_fatal(self, exc: BaseException) -> None:
        if self._fatal is None:
            log.error("loader failed: %r", exc)
            self._fatal = exc
        with self._lock:
            for fut in self._futures.values():
                if not fut.done():
                    fut.set_exception(exc)

    def _on_message(self, dec: _Decoder, msg) -> None:
        kind = msg[0]
        if kind == "ready":
            dec.ready = dec.ever_ready = True
            dec.torch_loaded = dec.torch_loaded or msg[1]
            self._dispatch()
        elif kind == "done":
            self._account_time(msg[-2], msg[-1])
            task = dec.inflight.pop(msg[1], None)
            if task is None:
                return
            self._startup_failures.clear()
            self._crashes.pop(task.video, None)
            self.counters["tasks"] += 1
            self.counters["decoded_frames"] += int(msg[2])
            self._arm_head(dec)
            self._finish(task, None, None)
            self._dispatch()
        elif kind == "error":
            _, tid, exc, delivered, decoded, idle_s, busy_s = msg
            self._account_time(idle_s, busy_s)
            task = dec.inflight.pop(tid, None)
            if task is None:
                return
            self.counters["tasks"] += 1
            self.counters["task_errors"] += 1
            self.counters["decoded_frames"] += int(decoded)
            dec.open.pop(task.video, None)
            dec.last = None
            self._arm_head(dec)
            self._finish(task, exc, delivered)
            self._dispatch()

    def _account_time(self, idle_s: float, busy_s: float) -> None:
        self.counters["decoder_idle_s"] += idle_s
        self.counters["decoder_busy_s"] += busy_s

    # ---- epochs and batches

    def _begin_epoch(self, gen: int, sampler, first_k: int, end_k: int) -> None:
        # Every batch of the old pass is retired before any slot is freed: a slot freed
        # while the old sampler is still in place would be refilled with the old pass and
        # then never freed again.
        old = list(self._slot_batch.values())
        for batch in old:
            batch.retired = True
        self._active.clear()
        self._pending.clear()
        self._group_min.clear()
        self._by_video.clear()
        self._heap.clear()
        self._sampler = sampler
        self._spread = int(getattr(sampler, "spread", 1))
        self._epoch_gen = gen
        self._next_k = first_k
        self._end_k = end_k
        for batch in old:
            self._maybe_free(batch)
        self._guard(self._admit)
        self._dispatch()

    def _hold(self, slot: int) -> None:
        batch = self._slot_batch.get(slot)
        if batch is not None:
            batch.held = True

    def _admit(self) -> None:
        while self._free_slots and self._next_k < self._end_k and self._sampler is not None:
            slot = self._free_slots.popleft()
            k = self._next_k
            self._next_k += 1
            batch = _Batch(k, slot)
            self._slot_batch[slot] = batch
            self._active[k] = batch
            content = self._sampler.batch(k)
            for b in range(len(content.video)):
                s = _Sample(batch, b, int(content.video[b]), int(content.start[b]), content.frames[b], content.crop[b], bool(content.flip[b]))
                batch.samples.append(s)
            batch.remaining = len(batch.samples)
            for s in batch.samples:
                if s.video in self._dead_videos:
                    self._fail_sample(s, self._dead_error(s.video))
                else:
                    self._enqueue(s)
            if batch.remaining == 0 and not batch.failed:
                self._complete(batch)

    def _dead_error(self, video: int) -> VideoError:
        return VideoOpenError(self.paths[video], self._dead_videos[video])

    def _keyframes(self, video: int) -> np.ndarray:
        kf = self._keyframes_cache.get(video)
        if kf is None:
            kf = np.asarray(self.infos[video].keyframes, dtype=np.int64)
            if len(kf) == 0 or kf[0] != 0:
                kf = np.concatenate([[0], kf]).astype(np.int64)
            self._keyframes_cache[video] = kf
        return kf

    def _enqueue(self, s: _Sample) -> None:
        gops = np.searchsorted(self._keyframes(s.video), s.frames, side="right") - 1
        k = s.batch.k
        for t, (f, g) in enumerate(zip(s.frames.tolist(), gops.tolist())):
            self._add_req(_Req(s, t, f), (s.video, g), k)

    def _add_req(self, req: _Req, key, k: int) -> None:
        group = self._pending.get(key)
        if group is None:
            self._pending[key] = [req]
            self._group_min[key] = k
            self._by_video[key[0]].add(key[1])
            heapq.heappush(self._heap, (k, key[0], key[1]))
        else:
            group.append(req)
            if k < self._group_min[key]:
                self._group_min[key] = k
                heapq.heappush(self._heap, (k, key[0], key[1]))

    def _take(self, key) -> list[_Req]:
        reqs = self._pending.pop(key)
        del self._group_min[key]
        gs = self._by_video[key[0]]
        gs.discard(key[1])
        if not gs:
            del self._by_video[key[0]]
        return [r for r in reqs if r.fresh()]

    def _earliest(self):
        heap = self._heap
        while heap:
            k, v, g = heap[0]
            if self._group_min.get((v, g)) == k:
                return k
            heapq.heappop(heap)
        return None

    def _head(self) -> int | None:
        """The earliest batch in the window that still waits for frames."""
        ks = [k for k, b in self._active.items() if b.remaining > 0 and not b.failed]
        return min(ks) if ks else None

    def _pick(self, dec: _Decoder, *, eager: bool):
        """Choose the next task's requests for ``dec`` (see the module docstring).

        Only groups needed by the first ``_GATE + 1`` incomplete batches are eligible (in
        bounded mode also those whose chunk lies wholly inside the window: the sampler's
        ``spread`` is how many consecutive batches a chunk can reach), so a GOP is decoded
        when the window already holds as many of the batches it feeds as it can; an
        otherwise idle decoder (``eager``) may start on the earliest group rather than wait.
        """
        while True:
            k0 = self._earliest()
            if k0 is None:
                return None
            head = self._head()
            limit = (head if head is not None else k0) + _GATE
            if self._spread > 1 and self._next_k < self._end_k:
                # Bounded chunks: a group is ready once every batch its chunk can reach is in.
                limit = max(limit, self._next_k - self._spread)
            elif self._spread > 1:
                limit = max(limit, self._end_k)
            if k0 > limit:
                if not eager:
                    return None
                limit = k0
            key = None
            if dec.last is not None:
                v, g = dec.last
                for cand in ((v, g), (v, g + 1)):
                    if self._group_min.get(cand, limit + 1) <= limit:
                        key = cand
                        break
            if key is None:
                for v in reversed(dec.open):
                    gs = self._by_video.get(v)
                    if gs:
                        g = min(gs)
                        if self._group_min[(v, g)] <= limit:
                            key = (v, g)
                            break
            if key is None:
                _, v, g = self._heap[0]
                key = (v, g)
            v, g = key
            reqs = self._take(key)
            ngops = 1
            if g >= 0:
                while ngops < _MAX_GOPS_PER_TASK and len(reqs) < _TASK_CAP:
                    nxt = (v, g + ngops)
                    if self._group_min.get(nxt, limit + 1) > limit:
                        break
                    reqs += self._take(nxt)
                    ngops += 1
                dec.last = (v, g + ngops - 1)
            else:
                dec.last = None
            if reqs:
                return v, reqs, ngops

    def _dispatch(self) -> None:
        if self._closing or self._fatal is not None:
            return
        progress = True
        while progress:
            progress = False
            for dec in self._decoders.values():
                if not dec.ready or dec.dead or dec.transport is None or len(dec.inflight) >= self.depth:
                    continue
                picked = self._pick(dec, eager=not dec.inflight)
                if picked is None:
                    continue
                self._send_task(dec, *picked)
                progress = True

    def _send_task(self, dec: _Decoder, video: int, reqs: list[_Req], ngops: int) -> None:
        frames = np.fromiter((r.frame for r in reqs), dtype=np.int64, count=len(reqs))
        uidx, req_u = np.unique(frames, return_inverse=True)
        n = len(reqs)
        slot = np.empty(n, np.int32)
        bpos = np.empty(n, np.int32)
        tpos = np.empty(n, np.int32)
        crop = np.empty((n, 4), np.int32)
        flip = np.empty(n, bool)
        for i, r in enumerate(reqs):
            s = r.sample
            s.inflight += 1
            slot[i] = s.batch.slot
            bpos[i] = s.b
            tpos[i] = r.t
            crop[i] = s.crop
            flip[i] = s.flip
        info = self.infos[video]
        # Work estimate for the hang timeout: frames from each GOP's keyframe to the last target.
        kf = self._keyframes(video)
        gstart = kf[np.searchsorted(kf, uidx, side="right") - 1]
        span = int(np.sum(np.maximum.reduceat(uidx - gstart, np.r_[0, np.flatnonzero(np.diff(gstart)) + 1]) + 1))
        pixels = max(1, int(info.width) * int(info.height))
        timeout = self.task_timeout_s + span * 4e-8 * pixels
        tid = self._task_seq
        self._task_seq += 1
        task = _Task(tid, video, reqs, req_u.astype(np.int32), uidx, timeout)
        send_info = video not in dec.infos
        dec.infos[video] = None
        dec.infos.move_to_end(video)
        while len(dec.infos) > self.info_mirror:
            dec.infos.popitem(last=False)
        dec.open[video] = None
        dec.open.move_to_end(video)
        while len(dec.open) > self.max_open:
            dec.open.popitem(last=False)
        hang = self.hang_s if tid == self.hang_task or video == self.hang_video else 0.0
        msg = ("task", tid, video, self.paths[video], info if send_info else None, uidx, task.req_u, slot, bpos, tpos, crop, flip, self.size, hang)
        dec.inflight[tid] = task
        if len(dec.inflight) == 1:
            task.deadline = time.monotonic() + timeout
        self.counters["dispatched_tasks"] += 1
        dec.transport.write(_worker.pack(msg))

    def _arm_head(self, dec: _Decoder) -> None:
        if dec.inflight:
            head = next(iter(dec.inflight.values()))
            if head.deadline is None:
                head.deadline = time.monotonic() + head.timeout_s

    def _finish(self, task: _Task, exc, delivered) -> None:
        """Account for a task that ended: done (exc None), failed (exc), or lost (exc None, delivered False)."""
        touched = []
        retry = []
        failed = []
        for i, r in enumerate(task.reqs):
            s = r.sample
            s.inflight -= 1
            touched.append(s)
            if not r.fresh():
                continue
            ok = exc is None if delivered is None else bool(delivered[task.req_u[i]])
            if ok:
                s.remaining -= 1
                if s.remaining == 0:
                    s.batch.remaining -= 1
                    if s.batch.remaining == 0:
                        self._complete(s.batch)
            elif exc is None:
                retry.append(r)  # lost with its decoder: decode again
            else:
                failed.append((i, r))
        if retry:
            self.counters["requeued_requests"] += len(retry)
            for r in retry:
                self._requeue(r)
        if failed:
            self._handle_failures(task, exc, failed)
        for s in touched:
            if s.needs_replace and s.inflight == 0 and not s.batch.retired:
                self._replace(s)
            if s.batch.retired:
                self._maybe_free(s.batch)

    def _requeue(self, r: _Req) -> None:
        s = r.sample
        g = int(np.searchsorted(self._keyframes(s.video), r.frame, side="right") - 1)
        self._add_req(r, (s.video, g), s.batch.k)

    def _handle_failures(self, task: _Task, exc: VideoError, failed) -> None:
        video = task.video
        whole_file = isinstance(exc, (VideoOpenError, NoVideoStreamError))
        if whole_file and video not in self._dead_videos:
            self._dead_videos[video] = exc.reason
            log.warning("%s", exc)
        if whole_file or len(task.uidx) == 1:
            for _, r in failed:
                if r.fresh():
                    self._fail_sample(r.sample, exc)
            if whole_file:
                for g in list(self._by_video.get(video, ())):
                    for r in self._take((video, g)):
                        self._fail_sample(r.sample, exc)
            return
        # Several frames and a frame-level error: find out which frames are bad, one each.
        for _, r in failed:
            self._add_req(r, (video, -1 - r.frame), r.sample.batch.k)

    def _fail_sample(self, s: _Sample, exc: VideoError) -> None:
        batch = s.batch
        if batch.failed or batch.retired:
            return
        self.counters["failed_samples"] += 1
        if self.on_error == "raise":
            batch.failed = True
            with self._lock:
                fut = self._futures.get(batch.k) if self._epoch_gen == self._gen else None
                if fut is None and self._epoch_gen == self._gen:
                    fut = self._futures[batch.k] = concurrent.futures.Future()
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            return
        if exc.path not in self.quarantined:
            log.warning("quarantined %s", exc)
            self.quarantined[exc.path] = exc.reason
        s.attempt += 1
        s.needs_replace = True
        if s.inflight == 0:
            self._replace(s)

    def _replace(self, s: _Sample) -> None:
        s.needs_replace = False
        while True:
            if s.attempt > _MAX_ATTEMPTS:
                raise WorkerError(
                    f"{_MAX_ATTEMPTS} replacement draws in a row hit bad files; "
                    f"{len(self.quarantined)} files are quarantined (see stats()['quarantined'])"
                )
            video, start, frames, crop, flip = self._sampler.replacement(s.key[0], s.key[1], s.attempt)
            if video not in self._dead_videos:
                break
            s.attempt += 1
        self.counters["replaced_samples"] += 1
        s.video, s.start, s.frames, s.crop, s.flip = video, start, frames, crop, flip
        s.remaining = len(frames)
        self._enqueue(s)

    def _complete(self, batch: _Batch) -> None:
        if batch.retired or batch.failed:
            return
        video = np.array([s.video for s in batch.samples], dtype=np.int64)
        start = np.array([s.start for s in batch.samples], dtype=np.int64)
        frames = np.stack([s.frames for s in batch.samples]).astype(np.int64) if batch.samples else np.zeros((0, 1), np.int64)
        done = Completed(batch.slot, video, start, frames)
        with self._lock:
            if self._epoch_gen != self._gen:
                return
            fut = self._futures.get(batch.k)
            if fut is None:
                fut = self._futures[batch.k] = concurrent.futures.Future()
        if not fut.done():
            fut.set_result(done)

    def _release(self, slot: int) -> None:
        batch = self._slot_batch.get(slot)
        if batch is None:
            return
        batch.held = False
        batch.retired = True
        if self._active.get(batch.k) is batch:  # a batch of an older pass may share its k
            del self._active[batch.k]
        self._maybe_free(batch)
        self._guard(self._admit)
        self._dispatch()

    def _maybe_free(self, batch: _Batch) -> None:
        if batch.retired and not batch.held and self._slot_batch.get(batch.slot) is batch and batch.inflight() == 0:
            del self._slot_batch[batch.slot]
            self._free_slots.append(batch.slot)
            self._guard(self._admit)

    # ---- faults

    def _on_death(self, dec: _Decoder) -> None:
        if dec.dead:
            return
        dec.dead = True
        dec.ready = False
        try:
            self._loop.remove_reader(dec.proc.sentinel)
        except (ValueError, OSError):
            pass
        # The sentinel fires as the process exits; reaping it can take a moment longer.
        dec.proc.join(2.0)
        if dec.transport is not None:
            dec.transport.close()
        self._decoders.pop(dec.id, None)
        if self._closing:
            return
        exitcode = dec.proc.exitcode
        if exitcode is not None:
            dec.proc.close()
        tasks = list(dec.inflight.values())
        dec.inflight.clear()
        self.counters["decoder_restarts"] += 1
        log.warning("decoder %d (pid %d) exited with code %s; %d tasks re-run", dec.id, dec.pid, exitcode, len(tasks))
        if not dec.ever_ready:
            self._startup_failures.append(_death_cause(exitcode, False))
            if len(self._startup_failures) > 3:
                msg = (
                    f"{len(self._startup_failures)} decoder processes in a row exited during start-up "
                    f"({'; '.join(self._startup_failures)}); see their output on stderr"
                )
                if exitcode == 1:  # an exception in the child, e.g. a script without the main guard
                    msg += (
                        ". Decoders are spawned and import your main module: a script that builds the loader at "
                        "module level must do so under `if __name__ == \"__main__\":`"
                    )
                raise WorkerError(msg)
        for i, task in enumerate(tasks):
            if i == 0:
                # Evidence against the file only while deaths on it repeat with no success
                # between (a task on it that completes clears the record).
                seen = self._crashes.setdefault(task.video, [])
                seen.append(_death_cause(exitcode, dec.hung))
                if len(seen) >= _CRASHES_PER_VIDEO:
                    err = VideoOpenError(
                        self.paths[task.video],
                        f"a decoder process died {len(seen)} times in a row decoding this file, with no task on it "
                        f"succeeding between ({'; '.join(seen)})",
                    )
                    self._finish(task, err, np.zeros(len(task.uidx), dtype=bool))
                    continue
            self._lose(task)
        self._spawn(dec.id)
        self._dispatch()

    def _lose(self, task: _Task) -> None:
        """The decoder holding ``task`` died: its requests go back to the pending pool."""
        touched = []
        for r in task.reqs:
            r.sample.inflight -= 1
            touched.append(r.sample)
            if r.fresh():
                self._requeue(r)
                self.counters["requeued_requests"] += 1
        for s in touched:
            if s.needs_replace and s.inflight == 0 and not s.batch.retired:
                self._replace(s)
            if s.batch.retired:
                self._maybe_free(s.batch)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            try:
                self._check_deadlines()
            except Exception as exc:  # the watchdog must not die silently
                self._set_fatal(exc)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for dec in list(self._decoders.values()):
            if dec.dead:
                continue
            if not dec.ever_ready and now - dec.started > self.startup_timeout_s:
                log.warning(
                    "decoder %d (pid %d) did not start within %.0f s (task_timeout_s, at least %.0f s); replacing it",
                    dec.id, dec.pid, self.startup_timeout_s, _MIN_STARTUP_TIMEOUT_S,
                )
                dec.started = now
                try:
                    os.kill(dec.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                continue
            if not dec.inflight:
                continue
            head = next(iter(dec.inflight.values()))
            if head.deadline is not None and now > head.deadline:
                log.warning(
                    "decoder %d (pid %d) spent more than %.1f s on one task; killing and replacing it (task_timeout_s)",
                    dec.id, dec.pid, head.timeout_s,
                )
                self.counters["hung_decoders_killed"] += 1
                dec.hung = True
                head.deadline = None
                try:
                    os.kill(dec.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


async def _recv_first(loop, conn) -> list:
    reader = _worker.FrameReader()
    msgs: list = []
    while not msgs:
        data = await loop.sock_recv(conn, 1 << 16)
        if not data:
            return []
        msgs = reader.feed(data)
    return msgs


def _death_cause(exitcode, hung: bool) -> str:
    if hung:
        return "killed after exceeding its task timeout (task_timeout_s)"
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _reap(proc, timeout_s: float) -> None:
    try:
        if proc.exitcode is None:
            proc.join(timeout_s)
        if proc.exitcode is None:
            proc.terminate()
            proc.join(timeout_s)
        if proc.exitcode is None:
            proc.kill()
            proc.join(timeout_s)
    except ValueError:  # already closed
        pass
