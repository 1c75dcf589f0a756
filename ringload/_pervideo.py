"""Per-video epochs: ``plan_epoch(..., clips_per_video=k)``, k samples of every video.

An epoch is ``k`` *slots* per video with at least one valid start (videos without one are
left out, as in every plan). The slots are planned like samples by an ordinary
:class:`~ringload.plan.Plan` over ``k`` slots per video (the same sharding, ``drop_last``
and batch-position rules), then slot ``j`` of video ``v`` becomes a start, a pure function
of (seed, epoch, v, j), so every rank derives the same global epoch and takes its part:

- ``"strict"``: the video's slots are drawn uniformly without replacement over its
  valid starts (distinct while it has k starts; with n < k starts, every start is
  taken once before any repeats). Slots are spread over the epoch like strict samples.
- ``"bounded"``: the video's starts are cut into pieces of ``w = max(chunk_len, k)``
  consecutive starts at a random per-video offset, a piece shorter than k merged with its
  neighbour; a piece is picked with probability size / n and the k starts are drawn
  without replacement inside it. Each start is still exactly uniform over the video
  (P(piece) * 1 / size = 1 / n), and the k starts lie within ``w + 2k`` starts: one
  decode run. The k slots of a video form one chunk, dealt to at most
  ``max_per_chunk`` per batch over ``chunk_window`` batches.
- ``"sequential"``: file order; slot j is start ``round(j (n - 1) / (k - 1))`` (uniformly
  spaced from the first to the last valid start; the centre when k = 1), for evaluation.

With ``views_per_clip=c`` a video has k * c slots: slot j is view ``j % c`` of clip
``j // c`` (the c views of a clip share its start; the loader gives them different crop
boxes), and ``plan.views(k)`` says which of each sample of batch k.

With ``weights`` or ``balance`` (``ringload._weights``) video v has ``slot_counts[v]``
clips this epoch instead of k (``k * r_v`` rounded stochastically; 0 leaves it out): the
slot plan runs over those counts, and a bounded piece is ``max(chunk_len, slot_counts[v])``
starts wide. Everything else above holds per video with its own count.

Drawing without replacement costs O(k^2) per video of a batch, hence the cap on k (and on
``ceil(k * r_v)``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._perm import _derive, _mix
from ._weights import repeat_factors, slot_counts
from .errors import ConfigError
from .plan import DEFAULT_CHUNK_LEN, MAX_CHUNK_LEN, Plan, PlanConfig, _check_lengths

#: Largest accepted ``clips_per_video`` (draws cost O(k^2) per video of a batch).
MAX_CLIPS_PER_VIDEO = 256

# Stream tags, after plan.py's 1 to 6: the piece offsets and the draws of one (seed, epoch).
_S_PIECE = 7
_S_DRAW = 8


def _check_cap(factors: np.ndarray, k: int, by_weights: bool) -> None:
    """The most slots a video can get, ceil(k * r_v), must stay <= MAX_CLIPS_PER_VIDEO in every epoch."""
    most = int(np.ceil(k * factors.max())) if len(factors) else 0
    if most > MAX_CLIPS_PER_VIDEO:
        v = int(np.argmax(factors))
        what = "weights" if by_weights else "balance_threshold"
        raise ConfigError(
            f"{what}: video {v} would get up to {most} clips per epoch (clips_per_video={k} x repeat factor "
            f"{factors[v]:.4g}), more than {MAX_CLIPS_PER_VIDEO}: flatten the {what} or lower clips_per_video"
        )


class _SlotPlan(Plan):
    """A plan over slots: chunks are cut at slot 0, so a video's k slots form one chunk."""

    _warn_empty = False
    _fixed_cuts = True


def _uniforms(key: int, video: np.ndarray, n: int) -> np.ndarray:
    """(len(video), n) keyed U[0, 1) draws per video."""
    x = video.astype(np.uint64)[:, None] * np.uint64(MAX_CLIPS_PER_VIDEO + 2) + np.arange(n, dtype=np.uint64)[None, :]
    return (_mix(key, x) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _without_replacement(u: np.ndarray, size: np.ndarray) -> np.ndarray:
    """(rows, J) draws: column i uniform over [0, size) minus the earlier columns.

    Draw i picks the r-th value not taken yet, r = floor(u_i (size - i)); mapping r to a
    value walks the earlier picks in increasing order. Columns at or beyond ``size`` start
    over (every value once before any repeats).
    """
    rows, J = u.shape
    out = np.zeros((rows, J), dtype=np.int64)
    for i in range(J):
        i_eff = i % np.maximum(size, 1)  # the position inside the current round
        r = np.minimum((u[:, i] * (size - i_eff)).astype(np.int64), size - i_eff - 1)
        # Earlier picks of this round, sorted; values past them shift r up by one each.
        lo = i - i_eff
        x = r.copy()
        if i > 0:
            prev = np.sort(np.where(np.arange(i)[None, :] >= lo[:, None], out[:, :i], np.iinfo(np.int64).max), axis=1)
            for c in range(prev.shape[1]):
                x += prev[:, c] <= x
        out[:, i] = x
    return out


class PerVideoPlan(Plan):
    """k samples of every video with a valid start: :func:`plan_epoch` with ``clips_per_video=k``.

    The same interface as :class:`Plan`; ``plan.clips_per_video`` is k. ``chunks(k)``
    are slot ids (strict), one id per video's slots (bounded) or the video (sequential).
    """

    def __init__(self, lengths, config: PlanConfig, *, weights=None, labels=None):
        cfg = self.config = config
        k = self.clips_per_video = int(cfg.clips_per_video)
        c = self.views_per_clip = int(cfg.views_per_clip)
        self.lengths = _check_lengths(lengths)
        self.lengths.setflags(write=False)
        self.starts_per_video = np.maximum(self.lengths - (cfg.span - 1), 0)
        self.starts_per_video.setflags(write=False)
        usable = self.starts_per_video > 0
        #: Repeat factor of every video (1 for usable videos unless weighted), and the clips
        #: each video gets this epoch (k unless weighted: ``k * r_v`` rounded stochastically).
        self.repeat_factors = usable.astype(np.float64)
        self.slot_counts = np.where(usable, k, 0).astype(np.int64)
        self.weighted = weights is not None or cfg.balance is not None
        if self.weighted:
            self.repeat_factors = repeat_factors(
                usable, weights=weights, labels=labels, balance=cfg.balance,
                threshold=cfg.balance_threshold, power=cfg.balance_power,
            )
            _check_cap(self.repeat_factors, k, weights is not None)
            self.slot_counts = slot_counts(self.repeat_factors, k, cfg.seed, cfg.epoch)
        self.repeat_factors.setflags(write=False)
        self.slot_counts.setflags(write=False)
        #: Samples an epoch has on average over epochs (all ranks): ``k * views * sum(r_v)``.
        self.expected_samples = float(k * c * self.repeat_factors.sum())
        self._usable = np.flatnonzero(self.slot_counts > 0).astype(np.int64)
        most = max(int(self.slot_counts.max()), 1) if self.weighted and len(self.lengths) else k
        self._piece_base = cfg.chunk_len or DEFAULT_CHUNK_LEN
        self.window = max(self._piece_base, most)
        inner = dataclasses.replace(
            cfg, clip_len=1, frame_stride=1, clips_per_video=None, views_per_clip=1,
            chunk_len=min(most * c, MAX_CHUNK_LEN) if cfg.mode == "bounded" else None,
            balance=None, balance_threshold=None, balance_power=None,
        )
        self._inner = _SlotPlan(self.slot_counts[self._usable] * c, inner)
        i = self._inner
        self.total_samples, self.num_samples, self.num_batches = i.total_samples, i.num_samples, i.num_batches
        self.num_chunks, self.chunk_window, self.max_per_chunk = i.num_chunks, i.chunk_window, i.max_per_chunk
        self.rounds, self.min_block = i.rounds, i.min_block
        # What a reader decodes per video in one run: the piece (bounded), the video (sequential).
        self.chunk_len = self.window if cfg.mode == "bounded" else i.chunk_len
        if cfg.mode == "sequential":
            self.chunk_len = int(self.starts_per_video.max()) if len(self.lengths) else 0
        key = _derive(cfg.seed, cfg.epoch)
        self._piece_key, self._draw_key = _derive(key, _S_PIECE), _derive(key, _S_DRAW)
        if self.total_samples == 0:
            from .plan import logger

            logger.warning(
                "no video has a valid sample: %d videos, clip_len=%d, frame_stride=%d",
                len(self.lengths), cfg.clip_len, cfg.frame_stride,
            )
        self._cache = (-1, None, None)

    def batch_len(self, k: int) -> int:
        return self._inner.batch_len(k)

    def starts(self, video, slot) -> np.ndarray:
        """int64 start of slot ``slot`` (in [0, k)) of each ``video``: the plan's pure map."""
        video = np.asarray(video, dtype=np.int64)
        slot = np.asarray(slot, dtype=np.int64)
        n = self.starts_per_video[video]
        k = self.clips_per_video
        mode = self.config.mode
        if mode == "sequential":
            if k == 1:
                return (n - 1) // 2
            return (2 * slot * (n - 1) + (k - 1)) // (2 * (k - 1))
        out = np.empty(len(video), dtype=np.int64)
        uniq, inv = np.unique(video, return_inverse=True)
        if len(uniq) == 0:
            return out
        J = int(slot.max()) + 1
        un = self.starts_per_video[uniq]
        lo, size = np.zeros(len(uniq), dtype=np.int64), un.copy()
        if mode == "bounded":
            lo, size = self._piece(uniq, un)
        draws = _without_replacement(_uniforms(self._draw_key, uniq, J), size)
        return lo[inv] + draws[inv, slot]

    def _piece(self, video, n):
        """(first start, size) of the video's piece this epoch: the one holding a uniform start."""
        # Per video: k its clips this epoch, w = max(chunk_len, k) its piece width.
        k = self.slot_counts[video]
        w = np.maximum(self._piece_base, k)
        h = _mix(self._piece_key, video.astype(np.uint64))
        off = (h % w.astype(np.uint64)).astype(np.int64)
        u0 = (_mix(self._piece_key, h) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        first = np.where(off > 0, off, w)  # the first cut inside (0, n), if < n
        last = first + np.maximum(n - 1 - first, 0) // w * w  # the last cut, if first < n
        has = first < n
        # Merge a piece shorter than k into its neighbour: drop the cut that makes it.
        c0 = np.where(first >= k, first, first + w)
        c1 = np.where(n - last >= k, last, last - w)
        cut = has & (c0 <= c1)
        s0 = np.minimum((u0 * n).astype(np.int64), n - 1)
        prev = np.where(s0 < c0, 0, np.minimum(c0 + np.maximum(s0 - c0, 0) // w * w, c1))
        nxt = np.where(s0 < c0, c0, np.where(prev >= c1, n, prev + w))
        lo = np.where(cut, prev, 0)
        hi = np.where(cut, nxt, n)
        return lo, hi - lo

    def _batch(self, k: int):
        cache = self._cache
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and cache[0] == k:
            return cache[1], cache[2]
        slots = self._inner[k]
        chunks = self._inner.chunks(k)
        video = self._usable[slots[:, 0]]
        out = np.stack([video, self.starts(video, slots[:, 1] // self.views_per_clip)], axis=1).astype(np.int64)
        if self.config.mode == "sequential":
            chunks = video
        chunks = np.asarray(chunks, dtype=np.int64)
        out.setflags(write=False)
        chunks.setflags(write=False)
        kk = int(k) if int(k) >= 0 else int(k) + self.num_batches
        self._cache = (kk, out, chunks)
        return out, chunks

    def views(self, k: int) -> np.ndarray:
        """int64 ``(b, 2)``: ``(clip_index, view_index)`` of each sample of ``plan[k]``."""
        j = self._inner[k][:, 1]
        out = np.stack([j // self.views_per_clip, j % self.views_per_clip], axis=1)
        out.setflags(write=False)
        return out

    def chunk_extent(self, ids) -> np.ndarray:
        """int64 ``(len(ids), 3)``: ``(video, first_start, last_start)`` of each chunk id."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_chunks):
            raise IndexError(f"chunk id out of range [0, {self.num_chunks})")
        mode = self.config.mode
        if mode == "sequential":
            return np.stack([ids, np.zeros_like(ids), self.starts_per_video[ids] - 1], axis=1)
        ext = self._inner.chunk_extent(ids)  # (slot video, first slot, last slot)
        video = self._usable[ext[:, 0]]
        if mode == "strict":
            s = self.starts(video, ext[:, 1] // self.views_per_clip)
            return np.stack([video, s, s], axis=1)
        # A bounded chunk is a video's slots: the extent of all its starts.
        if not len(video):
            return np.zeros((0, 3), dtype=np.int64)
        cnt = self.slot_counts[video]
        first = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        slot = np.arange(int(cnt.sum()), dtype=np.int64) - np.repeat(first, cnt)
        every = self.starts(np.repeat(video, cnt), slot)
        return np.stack([video, np.minimum.reduceat(every, first), np.maximum.reduceat(every, first)], axis=1)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Plan(mode={c.mode!r}, clips_per_video={self.clips_per_video}, "
            + (f"weighted (expected samples {self.expected_samples:.6g}), " if self.weighted else "")
            + f"epoch={c.epoch}, "
            f"rank={c.rank}/{c.world_size}, batches={self.num_batches}, samples={self.num_samples}/{self.total_samples}, "
            f"chunk_len={self.chunk_len}, max_per_chunk={self.max_per_chunk})"
        )
