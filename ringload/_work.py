"""What to decode next: the batches in the window, their frame requests filed by
(video, GOP), and the pick policy. Pure code: no processes, sockets, threads or clocks.

- The window: a batch enters when a ring slot is free (``Window.admit``), so at most
  ``num_slots`` batches are being decoded or waiting for the consumer. A slot is freed when
  its batch is retired (released by the consumer, or abandoned by a new pass) and no
  decoder still writes into it.
- Grouping: every frame a batch needs is a request filed under its (video, GOP); a task
  takes a whole group (plus the next groups of the same video), so a GOP is decoded once
  per window however many samples it feeds, and bounded chunks become sequential runs.
- The pick policy (``Pending.pick``): an idle decoder continues where its last task ended,
  then takes work from videos it holds open, then the group the earliest batch waits for;
  the first two only within the gate (``Window.pick_limit``), so no batch starves. Until a
  bounded pass's first batch is out, a task takes only that batch's frames of its GOPs
  (``Window.pick``), so the first batch waits for no conversion of later batches' frames.
- Faults: a failed request fails its sample (``on_error="raise"``: the batch fails) or has
  it replaced by the sampler's deterministic redraw (``"skip"``); whole-file errors and
  repeated decoder deaths on one file mark the file dead.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import logging

import numpy as np

from .errors import NoVideoStreamError, VideoError, VideoOpenError, WorkerError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 64  # redraws of one sample before the loader gives up (too many bad files)
CRASHES_PER_VIDEO = 3  # decoder deaths in a row on one file before the file counts as bad
TASK_CAP = 128  # frame requests per task: bounds a task's duration and keeps decoders parallel
MAX_GOPS_PER_TASK = 8
# Groups of the first GATE + 1 incomplete batches are decoded first (see Window.pick_limit).
GATE = 1


@dataclasses.dataclass(frozen=True)
class Completed:
    """A batch whose frames are all in ``slot``: what each of its ``n`` rows holds."""

    slot: int
    video: np.ndarray  # (n,) int64: the file
    start: np.ndarray  # (n,) int64: the plan's start in the row
    frames: np.ndarray  # (n, T) int64: frames of the file
    entry: np.ndarray  # (n,) int64: the plan's video (a source row)


class Sample:
    __slots__ = ("batch", "row", "key", "video", "entry", "start", "frames", "crop", "flip", "attempt", "remaining",
                 "inflight", "needs_replace", "chunk_k0")

    def __init__(self, batch, row, video, start, frames, crop, flip, entry, chunk_k0=None):
        self.batch = batch
        # The first batch of this pass that holds a sample of this sample's chunk (its own
        # batch where that is unknown, which is never earlier).
        self.chunk_k0 = batch.k if chunk_k0 is None else chunk_k0
        self.row = row
        # The plan's video: a source row (the file itself unless rows are segments of files).
        self.entry = entry
        self.key = (self.entry, start)  # the plan's sample: redraws are keyed by it
        self.video = video
        self.start = start
        self.frames = frames
        self.crop = crop
        self.flip = flip
        self.attempt = 0
        self.remaining = len(frames)
        self.inflight = 0
        self.needs_replace = False


class BatchState:
    __slots__ = ("k", "slot", "samples", "remaining", "retired", "failed", "held")

    def __init__(self, k, slot):
        self.k = k
        self.slot = slot
        self.samples: list[Sample] = []
        self.remaining = 0
        self.retired = False  # no longer wanted: its slot is freed once nothing uses it
        self.failed = False
        self.held = False  # handed to the consumer, which gives the slot back through release()

    def inflight(self) -> int:
        return sum(s.inflight for s in self.samples)


class Request:
    """Frame ``frame`` for position ``t`` of ``sample``, as drawn at attempt ``attempt``."""

    __slots__ = ("sample", "attempt", "t", "frame")

    def __init__(self, sample, t, frame):
        self.sample = sample
        self.attempt = sample.attempt
        self.t = t
        self.frame = frame

    def fresh(self) -> bool:
        s = self.sample
        return self.attempt == s.attempt and not s.batch.retired and not s.batch.failed


class Work:
    """One task's requests, on the consumer side: ``frames`` are the unique frames sent,
    ``req_frame[i]`` the position in ``frames`` of request i."""

    __slots__ = ("task_id", "video", "reqs", "req_frame", "frames", "timeout_s")

    def __init__(self, task_id, video, reqs, req_frame, frames, timeout_s):
        self.task_id = task_id
        self.video = video
        self.reqs = reqs
        self.req_frame = req_frame
        self.frames = frames
        self.timeout_s = timeout_s


class Pending:
    """Requests no decoder holds yet, filed under (video, GOP); GOP -1 - f isolates frame f."""

    def __init__(self):
        self._groups: dict[tuple[int, int], list[Request]] = {}
        self._min_k: dict[tuple[int, int], int] = {}  # earliest batch a group feeds
        self._max_c0: dict[tuple[int, int], int] = {}  # latest first batch of the chunks it serves
        self._by_video: dict[int, set[int]] = {}
        self._heap: list[tuple[int, int, int]] = []  # (k, video, gop), stale entries skipped

    def clear(self) -> None:
        self.__init__()

    def add(self, req: Request, key: tuple[int, int], k: int) -> None:
        group = self._groups.get(key)
        c0 = req.sample.chunk_k0
        if group is None:
            self._groups[key] = [req]
            self._min_k[key] = k
            self._max_c0[key] = c0
            self._by_video.setdefault(key[0], set()).add(key[1])
            heapq.heappush(self._heap, (k, key[0], key[1]))
        else:
            group.append(req)
            if c0 > self._max_c0[key]:
                self._max_c0[key] = c0
            if k < self._min_k[key]:
                self._min_k[key] = k
                heapq.heappush(self._heap, (k, key[0], key[1]))

    def take(self, key, upto: int | None = None) -> list[Request]:
        """The group's live requests; with ``upto``, only those of batches <= upto (the
        others stay filed)."""
        reqs = self._groups.pop(key)
        del self._min_k[key]
        del self._max_c0[key]
        gs = self._by_video[key[0]]
        gs.discard(key[1])
        if not gs:
            del self._by_video[key[0]]
        live = [r for r in reqs if r.fresh()]
        if upto is None:
            return live
        for r in live:
            if r.sample.batch.k > upto:
                self.add(r, key, r.sample.batch.k)
        return [r for r in live if r.sample.batch.k <= upto]

    def gops_of(self, video: int) -> list[int]:
        return sorted(self._by_video.get(video, ()))

    def earliest(self) -> int | None:
        """The earliest batch any pending group feeds."""
        heap = self._heap
        while heap:
            k, v, g = heap[0]
            if self._min_k.get((v, g)) == k:
                return k
            heapq.heappop(heap)
        return None

    def _joins(self, key, limit: int, whole_upto: int | None) -> bool:
        """Whether a task may take group ``key`` along: it feeds batches <= ``limit``, or every
        chunk it serves was first seen by batch ``whole_upto`` (so all its batches are in)."""
        k = self._min_k.get(key)
        return k is not None and (k <= limit or (whole_upto is not None and self._max_c0[key] <= whole_upto))

    def pick(self, limit: int, *, last: tuple[int, int] | None, open_videos, only_limit: bool = False,
             whole_upto: int | None = None) -> tuple[int, list[Request], tuple | None] | None:
        """Requests for one task among groups feeding batches <= ``limit``: continue after
        ``last`` (video, GOP), else a video in ``open_videos`` (most recent last), else the
        earliest group. The task takes along the video's adjacent GOPs that feed batches <=
        ``limit`` or whose chunks are all in the window (first seen by batch ``whole_upto``):
        the next ones, and the earlier ones unless it continues after ``last``.
        ``only_limit``: of those groups, only the requests of batches <= ``limit``. Returns
        (video, requests, the new last) or None."""
        upto = limit if only_limit else None
        while True:
            k0 = self.earliest()
            if k0 is None or k0 > limit:
                return None
            key = None
            if last is not None:
                v, g = last
                for cand in ((v, g), (v, g + 1)):
                    if self._min_k.get(cand, limit + 1) <= limit:
                        key = cand
                        break
            back = key is None  # a continuation reads on: going back would seek
            if key is None:
                for v in reversed(list(open_videos)):
                    gs = self._by_video.get(v)
                    if gs:
                        g = min(gs)
                        if self._min_k[(v, g)] <= limit:
                            key = (v, g)
                            break
            if key is None:
                _, v, g = self._heap[0]
                key = (v, g)
            v, g = key
            reqs = self.take(key, upto)
            if g >= 0:
                n = 1
                while (back and g > 0 and n < MAX_GOPS_PER_TASK and len(reqs) < TASK_CAP
                       and self._joins((v, g - 1), limit, whole_upto)):
                    reqs = self.take((v, g - 1), upto) + reqs
                    g -= 1
                    n += 1
                while n < MAX_GOPS_PER_TASK and len(reqs) < TASK_CAP and self._joins((v, g + n), limit, whole_upto):
                    reqs += self.take((v, g + n), upto)
                    n += 1
                last = (v, g + n - 1)
            else:
                last = None
            if reqs:
                return v, reqs, last


def request_arrays(reqs: list[Request]):
    """Where each request's frame goes: (slot, row, t, crop, flip) arrays for a task message."""
    n = len(reqs)
    slot = np.empty(n, np.int32)
    row = np.empty(n, np.int32)
    t = np.empty(n, np.int32)
    crop = np.empty((n, 4), np.int32)
    flip = np.empty(n, bool)
    for i, r in enumerate(reqs):
        s = r.sample
        slot[i] = s.batch.slot
        row[i] = s.row
        t[i] = r.t
        crop[i] = s.crop
        flip[i] = s.flip
    return slot, row, t, crop, flip


class Window:
    """The batches between admission and release, the slots they hold, their pending
    requests, and what failures do to them. ``on_complete(batch, Completed)`` and
    ``on_fail(batch, error)`` tell the consumer side."""

    def __init__(self, *, num_slots: int, paths, infos, on_error: str, task_timeout_s: float, counters, on_complete, on_fail,
                 quarantined: dict[str, str] | None = None, split_head: bool = True):
        self.paths = paths
        self.split_head = split_head
        self.infos = infos
        self.on_error = on_error
        self.task_timeout_s = task_timeout_s
        self.counters = counters
        self.on_complete = on_complete
        self.on_fail = on_fail
        self.pending = Pending()
        # A stack: the slot freed last is filled first, so a deep ring's unused slots stay untouched
        # (their pages never become resident) while few batches are in flight.
        self.free_slots = list(range(num_slots - 1, -1, -1))
        self.slot_batch: dict[int, BatchState] = {}
        self.active: dict[int, BatchState] = {}
        self.sampler = None
        self.chunk_window = 1
        self.next_k = self.end_k = 0
        self.first_k, self.head_done = 0, False
        self.dead_videos: dict[int, str] = {}
        self.quarantined: dict[str, str] = dict(quarantined or {})  # path -> reason, from indexing on
        self._crashes: dict[int, list[str]] = {}  # video -> causes of consecutive decoder deaths on it
        self._task_seq = 0
        self._keyframes: dict[int, np.ndarray] = {}
        self._chunk_k0: dict[int, int] = {}  # chunk id -> first batch holding it, for chunks still arriving
        self._chunks_seen: collections.deque = collections.deque()  # (batch, chunk ids first seen there)

    # ---- passes and slots

    def begin(self, sampler, first_k: int, end_k: int) -> None:
        """Abandon the current pass and start batches first_k..end_k-1 of ``sampler``."""
        # Every batch of the old pass is retired before any slot is freed: a slot freed
        # while the old sampler is in place would be refilled with the old pass.
        old = list(self.slot_batch.values())
        for batch in old:
            batch.retired = True
        self.active.clear()
        self.pending.clear()
        self._chunk_k0.clear()
        self._chunks_seen.clear()
        self.sampler = sampler
        self.chunk_window = int(sampler.chunk_window)
        self.next_k, self.end_k = first_k, end_k
        self.first_k, self.head_done = first_k, False
        for batch in old:
            self._maybe_free(batch)
        self.admit()

    def admit(self) -> None:
        while self.free_slots and self.next_k < self.end_k and self.sampler is not None:
            slot = self.free_slots.pop()
            k = self.next_k
            self.next_k += 1
            batch = BatchState(k, slot)
            self.slot_batch[slot] = batch
            self.active[k] = batch
            content = self.sampler.batch(k)
            entry = content.entry
            chunk = getattr(content, "chunk", None)
            k0 = self._chunk_firsts(k, chunk) if chunk is not None and self.chunk_window > 1 else None
            for b in range(len(content.video)):
                batch.samples.append(
                    Sample(batch, b, int(content.video[b]), int(content.start[b]), content.frames[b], content.crop[b],
                           bool(content.flip[b]), int(entry[b]), None if k0 is None else k0[b])
                )
            batch.remaining = len(batch.samples)
            for s in batch.samples:
                if s.video in self.dead_videos:
                    self._fail_sample(s, VideoOpenError(self.paths[s.video], self.dead_videos[s.video]))
                else:
                    self._enqueue(s)
            if batch.remaining == 0 and not batch.failed:
                self._complete(batch)

    def _chunk_firsts(self, k: int, chunk: np.ndarray) -> list[int]:
        """The first batch of this pass holding each sample's chunk (batch ``k`` admitted now).
        A chunk's samples lie in at most ``chunk_window`` consecutive batches, so chunks first
        seen that long ago are complete and forgotten (one seen again would count as new:
        later, never wrongly early)."""
        first, seen = self._chunk_k0, self._chunks_seen
        while seen and seen[0][0] <= k - self.chunk_window:
            for c in seen.popleft()[1]:
                first.pop(c, None)
        new, out = [], []
        for c in chunk.tolist():
            k0 = first.get(c)
            if k0 is None:
                first[c] = k0 = k
                new.append(c)
            out.append(k0)
        seen.append((k, new))
        return out

    def hold(self, slot: int) -> None:
        batch = self.slot_batch.get(slot)
        if batch is not None:
            batch.held = True

    def release(self, slot: int) -> None:
        batch = self.slot_batch.get(slot)
        if batch is None:
            return
        batch.held = False
        batch.retired = True
        if self.active.get(batch.k) is batch:  # a batch of an older pass may share its k
            del self.active[batch.k]
        self._maybe_free(batch)

    def ready_batches(self) -> int:
        return sum(1 for b in list(self.slot_batch.values()) if b.remaining == 0 and not (b.retired or b.failed or b.held))

    def _maybe_free(self, batch: BatchState) -> None:
        if batch.retired and not batch.held and self.slot_batch.get(batch.slot) is batch and batch.inflight() == 0:
            del self.slot_batch[batch.slot]
            self.free_slots.append(batch.slot)
            self.admit()

    # ---- requests and tasks

    def keyframes(self, video: int) -> np.ndarray:
        kf = self._keyframes.get(video)
        if kf is None:
            kf = np.asarray(self.infos[video].keyframes, dtype=np.int64)
            if len(kf) == 0 or kf[0] != 0:
                kf = np.concatenate([[0], kf]).astype(np.int64)
            self._keyframes[video] = kf
        return kf

    def _enqueue(self, s: Sample) -> None:
        gops = np.searchsorted(self.keyframes(s.video), s.frames, side="right") - 1
        for t, (f, g) in enumerate(zip(s.frames.tolist(), gops.tolist())):
            self.pending.add(Request(s, t, f), (s.video, g), s.batch.k)

    def _requeue(self, r: Request) -> None:
        s = r.sample
        g = int(np.searchsorted(self.keyframes(s.video), r.frame, side="right") - 1)
        self.pending.add(r, (s.video, g), s.batch.k)

    def whole_upto(self) -> int:
        """The last batch whose chunks have all their batches admitted: a chunk first seen
        in batch k0 reaches at most batch k0 + ``chunk_window`` - 1."""
        return self.next_k - self.chunk_window if self.next_k < self.end_k else self.end_k

    def pick_limit(self, *, eager: bool) -> int | None:
        """The last batch whose groups may be decoded now. Only groups of the first GATE + 1
        incomplete batches are eligible (bounded mode: also those whose whole chunk is in
        the window, ``chunk_window`` being how many consecutive batches a chunk reaches), and
        before the pass's first batch is complete only that batch's; an idle decoder
        (``eager``) may start on the earliest group rather than wait."""
        k0 = self.pending.earliest()
        if k0 is None:
            return None
        heads = [k for k, b in self.active.items() if b.remaining > 0 and not b.failed]
        # Until the pass's first batch is out, only its groups (an idle decoder may still
        # start on the next): neither the gate's next batch nor whole chunks delay it.
        limit = (min(heads) if heads else k0) + (GATE if self.head_done else 0)
        if self.chunk_window > 1 and self.head_done:
            limit = max(limit, self.whole_upto())
        if k0 > limit:
            return k0 if eager else None
        return limit

    def pick(self, *, eager: bool, last: tuple[int, int] | None, open_videos):
        """The next task's (video, requests, new last) for a decoder (``Pending.pick`` within
        ``pick_limit``), or None. In a bounded pass (chunks reaching several batches), until
        its first batch is out a task takes only that batch's frames of its GOPs: the first
        batch then waits for no conversion of the later batches' frames there, which
        are nearly every frame of those chunks. What it costs: those GOPs are walked again
        for the later frames, once per pass (``split_head=False`` keeps them whole)."""
        limit = self.pick_limit(eager=eager)
        if limit is None:
            return None
        bounded = self.chunk_window > 1
        split = self.split_head and bounded and not self.head_done
        # A bounded task takes along its video's adjacent GOPs whatever batch they feed, where
        # their chunks have all their batches in the window: a chunk whose GOPs feed mostly
        # later batches (short GOPs, few samples each) would otherwise go in pieces, a task
        # and a seek each. A GOP of a chunk still arriving stays: taking it would leave the
        # rest of it to be walked again (1.44 decoded per delivered frame on 5 s videos,
        # bench/results/shape-5s-back.json).
        whole = self.whole_upto() if bounded and self.head_done else None
        return self.pending.pick(limit, last=last, open_videos=open_videos, only_limit=split, whole_upto=whole)

    def make_work(self, video: int, reqs: list[Request]) -> Work:
        frames = np.fromiter((r.frame for r in reqs), dtype=np.int64, count=len(reqs))
        uidx, req_u = np.unique(frames, return_inverse=True)
        for r in reqs:
            r.sample.inflight += 1
        # Hang timeout from the work: frames from each GOP's keyframe to its last target.
        kf = self.keyframes(video)
        gstart = kf[np.searchsorted(kf, uidx, side="right") - 1]
        span = int(np.sum(np.maximum.reduceat(uidx - gstart, np.r_[0, np.flatnonzero(np.diff(gstart)) + 1]) + 1))
        info = self.infos[video]
        pixels = max(1, int(info.width) * int(info.height))
        work = Work(self._task_seq, video, reqs, req_u.astype(np.int32), uidx, self.task_timeout_s + span * 4e-8 * pixels)
        self._task_seq += 1
        return work

    # ---- results

    def finish(self, work: Work, exc, delivered) -> None:
        """A task ended: done (exc None), or failed at ``exc`` with ``delivered`` per frame."""
        touched, retry, failed = [], [], []
        for i, r in enumerate(work.reqs):
            s = r.sample
            s.inflight -= 1
            touched.append(s)
            if not r.fresh():
                continue
            ok = exc is None if delivered is None else bool(delivered[work.req_frame[i]])
            if ok:
                s.remaining -= 1
                if s.remaining == 0:
                    s.batch.remaining -= 1
                    if s.batch.remaining == 0:
                        self._complete(s.batch)
            elif exc is None:
                retry.append(r)
            else:
                failed.append(r)
        if exc is None:
            self._crashes.pop(work.video, None)
        for r in retry:
            self._requeue(r)
        if failed:
            self._handle_failures(work, exc, failed)
        self._settle(touched)

    def lose(self, work: Work) -> None:
        """The decoder holding ``work`` died: its requests go back to the pending pool."""
        touched = []
        for r in work.reqs:
            r.sample.inflight -= 1
            touched.append(r.sample)
            if r.fresh():
                self._requeue(r)
        self._settle(touched)

    def decoder_died(self, work: Work, cause: str) -> None:
        """A decoder died with ``work`` as its current task: evidence against the file only
        while deaths on it repeat with no task on it succeeding between."""
        seen = self._crashes.setdefault(work.video, [])
        seen.append(cause)
        if len(seen) < CRASHES_PER_VIDEO:
            self.lose(work)
            return
        err = VideoOpenError(
            self.paths[work.video],
            f"a decoder process died {len(seen)} times in a row decoding this file, with no task on it "
            f"succeeding between ({'; '.join(seen)})",
        )
        self.finish(work, err, np.zeros(len(work.frames), dtype=bool))

    def _settle(self, touched) -> None:
        for s in touched:
            if s.needs_replace and s.inflight == 0 and not s.batch.retired:
                self._replace(s)
            if s.batch.retired:
                self._maybe_free(s.batch)

    def _handle_failures(self, work: Work, exc: VideoError, failed) -> None:
        video = work.video
        whole_file = isinstance(exc, (VideoOpenError, NoVideoStreamError))
        if whole_file and video not in self.dead_videos:
            self.dead_videos[video] = exc.reason  # logged where its samples fail or are quarantined
        if whole_file or len(work.frames) == 1:
            for r in failed:
                if r.fresh():
                    self._fail_sample(r.sample, exc)
            if whole_file:
                for g in self.pending.gops_of(video):
                    for r in self.pending.take((video, g)):
                        self._fail_sample(r.sample, exc)
            return
        # Several frames and a frame-level error: find out which frames are bad, one each.
        for r in failed:
            self.pending.add(r, (video, -1 - r.frame), r.sample.batch.k)

    def _fail_sample(self, s: Sample, exc: VideoError) -> None:
        batch = s.batch
        if batch.failed or batch.retired:
            return
        self.counters["failed_samples"] += 1
        if self.on_error == "raise":
            batch.failed = True
            self.on_fail(batch, exc)
            return
        if exc.path not in self.quarantined:
            log.warning("quarantined %s", exc)
            self.quarantined[exc.path] = exc.reason
        s.attempt += 1
        s.needs_replace = True
        if s.inflight == 0:
            self._replace(s)

    def _replace(self, s: Sample) -> None:
        s.needs_replace = False
        while True:
            if s.attempt > MAX_ATTEMPTS:
                raise WorkerError(
                    f"{MAX_ATTEMPTS} replacement draws in a row hit bad files; "
                    f"{len(self.quarantined)} files are quarantined (see stats()['quarantined'])"
                )
            video, start, frames, crop, flip, entry = self.sampler.replacement(s.key[0], s.key[1], s.attempt)
            if video not in self.dead_videos:
                break
            s.attempt += 1
        self.counters["replaced_samples"] += 1
        s.video, s.start, s.frames, s.crop, s.flip = video, start, frames, crop, flip
        s.entry = entry
        s.chunk_k0 = s.batch.k  # no longer its chunk's sample
        s.remaining = len(frames)
        self._enqueue(s)

    def _complete(self, batch: BatchState) -> None:
        if batch.retired or batch.failed:
            return
        if batch.k == self.first_k:
            self.head_done = True
        samples = batch.samples
        video = np.array([s.video for s in samples], dtype=np.int64)
        start = np.array([s.start for s in samples], dtype=np.int64)
        frames = np.stack([s.frames for s in samples]).astype(np.int64) if samples else np.zeros((0, 1), np.int64)
        entry = np.array([s.entry for s in samples], dtype=np.int64)
        self.on_complete(batch, Completed(batch.slot, video, start, frames, entry))
