"""The sampling plan: which (video, start) samples go into batch k of an epoch.

A plan is a pure function of (lengths, seed, epoch, rank, world_size, config). It does no
I/O, reads no clock and starts no process, so every rank, every resumed run and every
process that rebuilds it gets the same batches. It is lazy: building it costs
O(videos) time and memory, never O(samples), and ``plan[k]`` computes one batch on demand.
That is what lets one plan describe 10^10 samples over 10^6 videos.

Samples. Video ``v`` with ``L`` frames has ``n = L - (clip_len - 1) * frame_stride``
valid starts (none when that is <= 0; such videos are skipped). Sample ``(v, s)`` covers
frames ``s + j * frame_stride`` for ``j < clip_len``. The global sample id of ``(v, s)``
is ``s`` plus the number of valid starts of the videos before ``v`` (file order).

Modes (docs/sampling.md derives their statistics):

- ``"strict"``: each epoch is a uniform random permutation of all samples.
- ``"bounded"``: the starts of each video are cut into *chunks* of at most ``chunk_len``
  consecutive starts (the cut points move with a random per-video offset every epoch).
  Chunks are shuffled globally, the starts inside a chunk are shuffled, and the sample
  stream is dealt out to batches in blocks of at most ``max_per_chunk`` so that a chunk
  lands in a few neighbouring batches, at most ``max_per_chunk`` samples per batch. A
  uniform random rotation of the stream makes every batch position exactly uniform over
  all samples, and positions inside a batch are shuffled.
- ``"sequential"``: file order.

Sharding. Rank ``r`` gets a contiguous part of the epoch's sample stream; every rank has
the same number of batches. With ``drop_last=True`` every batch is full and the
``N mod (world_size * batch_size)`` samples at the end of the stream are left out (in
strict and bounded mode a uniformly random set, different every epoch; in sequential mode
the last samples in file order). With ``drop_last=False`` nothing is left out: all
batches but each rank's last are full, and the last batches of the ranks share the
remainder as evenly as possible (their sizes differ by at most one; a rank's last batch is
empty only when fewer than ``world_size`` samples remain for the last round).
"""

from __future__ import annotations

import logging
import numbers

import numpy as np

from ._perm import _M64, _Perm, _derive, _mix
from .errors import ConfigError

logger = logging.getLogger(__name__)

from ._planconfig import (  # noqa: F401  (re-exported: ringload.plan is where users look)
    DEFAULT_CHUNK_LEN,
    DEFAULT_MAX_PER_CHUNK,
    MAX_AUTO_CHUNK_LEN,
    MAX_CHUNK_LEN,
    MODES,
    PlanConfig,
    _as_int,
    _check_lengths,
    default_max_per_chunk,
)

# Chunks up to this length are shuffled exactly; longer ones by an affine map (see _within).
_EXACT_WITHIN = 256
# Primes above MAX_CHUNK_LEN: multipliers coprime to every chunk size.
_PRIMES = np.array([4099, 4111, 4127, 4129, 4133, 4139, 4153, 4157, 4159, 4177, 4201, 4211, 4217, 4219, 4229, 4231],
                   dtype=np.int64)

# Stream tags: independent random choices of one (seed, epoch) must not share numbers.
_S_PERM = 1
_S_ROTATE = 2
_S_OFFSET = 3
_S_WITHIN = 4
_S_INBATCH = 5
# 6 is taken by the permutation's round keys (_perm._S_ROUNDS); 7 and 8 by _pervideo; 9 by
# _weights (the stochastic rounding of weighted slot counts).

class Plan:
    """One rank's batches of one epoch. Build it with :func:`plan_epoch`.

    - ``len(plan)`` / ``plan.num_batches``: batches on this rank (equal on every rank).
    - ``plan[k]``: int64 array ``(b, 2)`` of ``(video, start)``; ``b == batch_size``
      except for the last batch when ``drop_last=False``.
    - ``plan.chunks(k)``: int64 chunk id of each sample of ``plan[k]`` (same order).
      Bounded: ids of this epoch's chunks. Strict: the global sample id (every sample is
      its own chunk). Sequential: the video index (a rank reads a video as one run).
    - ``plan.chunk_extent(ids)``: ``(video, first_start, last_start)`` of chunks, so a
      reader can decode a whole chunk as one forward run: frames ``first_start`` to
      ``last_start + (clip_len - 1) * frame_stride``.
    - ``plan.chunk_window``: on this rank, the samples of a chunk lie in at most this many
      consecutive batches (bounded: ``1 + ceil((chunk_len - 1) / min_block)``, see
      docs/sampling.md). A look-ahead of that many batches decodes each chunk once.
      Exceptions: a chunk cut by a rank boundary or by the dropped tail is simply smaller;
      at most ``rounds`` chunks per rank and epoch straddle the end of a dealing round
      (the last batch) and continue in the first batches, so they lie in two runs.
    - ``plan.config``: the :class:`PlanConfig` echo of the arguments.
    """

    _warn_empty = True
    # Chunks cut at random per-video offsets; _pervideo's slot plan cuts at 0 (a chunk per video).
    _fixed_cuts = False

    def __init__(self, lengths, config: PlanConfig):
        self.config = config
        cfg = config
        self.lengths = _check_lengths(lengths)
        self.lengths.setflags(write=False)
        self.starts_per_video = np.maximum(self.lengths - (cfg.span - 1), 0)
        self.starts_per_video.setflags(write=False)
        self._cum = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.starts_per_video, out=self._cum[1:])
        #: Valid samples over all videos and ranks.
        self.total_samples = int(self._cum[-1])
        self._key = _derive(cfg.seed, cfg.epoch)
        self._shard()
        self.max_per_chunk = cfg.max_per_chunk or default_max_per_chunk(cfg.batch_size)
        self.chunk_len = 1
        self.cut_grid = 1
        #: Blocks per batch (bounded dealing rounds) and the smallest block; 1 and
        #: batch_size outside bounded mode.
        self.rounds, self.min_block = 1, cfg.batch_size
        if cfg.mode == "bounded":
            self._build_bounded()
        elif cfg.mode == "strict":
            self._perm = _Perm(self.total_samples, _derive(self._key, _S_PERM))
            self._rot = self._rotation()
            self.max_per_chunk = 1
            self.num_chunks = self.total_samples
            self.chunk_window = 1
        else:
            self.max_per_chunk = cfg.batch_size
            self.num_chunks = len(self.lengths)
            longest = int(self.starts_per_video.max()) if len(self.lengths) else 0
            self.chunk_len = longest
            self.chunk_window = min(self.num_batches, 1 + -(-max(longest - 1, 0) // cfg.batch_size))
        if self.total_samples == 0 and self._warn_empty:
            logger.warning(
                "no video has a valid sample: %d videos, clip_len=%d, frame_stride=%d",
                len(self.lengths), cfg.clip_len, cfg.frame_stride,
            )
        self._cache = (-1, None, None)

    # ----------------------------------------------------------------- sharding
    def _shard(self) -> None:
        cfg = self.config
        n_total, w, b, r = self.total_samples, cfg.world_size, cfg.batch_size, cfg.rank
        if cfg.drop_last:
            n = n_total // (w * b)
            self._last = b
            self._offset = r * n * b
            self._any_short = False
        else:
            n = -(-n_total // (w * b))
            rem = n_total - w * (n - 1) * b if n else 0
            q, extra = divmod(rem, w)
            self._last = q + (r < extra)
            self._offset = r * (n - 1) * b + r * q + min(r, extra) if n else 0
            self._any_short = rem < w * b
        self.num_batches = n
        #: Samples in this rank's batches.
        self.num_samples = (n - 1) * b + self._last if n else 0

    def _rotation(self) -> int:
        if self.total_samples == 0:
            return 0
        return _derive(self._key, _S_ROTATE) % self.total_samples

    # ----------------------------------------------------------------- bounded
    def _build_bounded(self) -> None:
        cfg = self.config
        b, n = cfg.batch_size, self.num_batches
        m = self.max_per_chunk
        groups = -(-b // m)
        self._block = np.full(groups, b // groups, dtype=np.int64)
        self._block[: b % groups] += 1
        self.min_block = int(self._block.min())
        self.rounds = groups
        # A chunk's samples form a cyclic run of the rank's stream; between two blocks of the
        # same batch lie blocks of all other batches (one of them possibly the short last
        # batch), so this length never puts more than max_per_chunk samples in one batch.
        gap = max(0, n - 1 - int(self._any_short)) * self.min_block
        self.chunk_len = max(1, min(cfg.chunk_len or DEFAULT_CHUNK_LEN, m + gap))
        if cfg.chunk_len and self.chunk_len < cfg.chunk_len:
            logger.info("chunk_len %d reduced to %d: too few batches per rank", cfg.chunk_len, self.chunk_len)
        c = self.chunk_len
        self.chunk_window = min(n, 1 + -(-(c - 1) // self.min_block)) if n else 0
        #: Cut points lie on multiples of this many starts (1: anywhere).
        self.cut_grid = cfg.cut_grid if c % cfg.cut_grid == 0 else 1

        # Layout of this rank's stream: round j deals one block of size block[j] to each batch.
        cum_block = np.zeros(groups + 1, dtype=np.int64)
        np.cumsum(self._block, out=cum_block[1:])
        last_blocks = np.clip(self._last - cum_block[:-1], 0, self._block)
        round_sizes = (max(n - 1, 0)) * self._block + last_blocks
        self._cum_block = cum_block
        self._round_start = np.concatenate([[0], np.cumsum(round_sizes)[:-1]]).astype(np.int64)

        # Chunks: per video a random offset moves the cut points every epoch. On a grid of
        # G starts (a GOP) the cuts fall on keyframes, so no chunk walks from the one before.
        nv = self.starts_per_video
        vids = np.arange(len(nv), dtype=np.uint64)
        g = self.cut_grid
        off = (_mix(_derive(self._key, _S_OFFSET), vids) % np.uint64(c // g)).astype(np.int64) * g
        off[(nv == 0) | self._fixed_cuts] = 0
        self._chunk_off = off
        nchunks = np.where(nv > 0, (nv + off + c - 1) // c, 0)
        self._cum_chunks = np.zeros(len(nv) + 1, dtype=np.int64)
        np.cumsum(nchunks, out=self._cum_chunks[1:])
        self.num_chunks = int(self._cum_chunks[-1])
        self._perm = _Perm(self.num_chunks, _derive(self._key, _S_PERM))

        # Only the first and last chunk of a video can be shorter than c: record them (in
        # the shuffled chunk order) so stream positions map to chunks by arithmetic.
        has = nv > 0
        first_size = np.minimum(nv, c - off)
        last_size = nv + off - (nchunks - 1) * c
        first_id = self._cum_chunks[:-1]
        last_id = self._cum_chunks[1:] - 1
        ids = np.concatenate([first_id[has & (first_size < c)], last_id[has & (nchunks > 1) & (last_size < c)]])
        sizes = np.concatenate([first_size[has & (first_size < c)], last_size[has & (nchunks > 1) & (last_size < c)]])
        pos = self._perm.inv(ids) if len(ids) else np.zeros(0, dtype=np.int64)
        # Positions are distinct: sort (position, size) packed in one int64, faster than argsort.
        if self.num_chunks < 1 << 50:
            packed = np.sort((pos << 13) | sizes)
            self._short_pos = packed >> 13
            self._short_size = packed & ((1 << 13) - 1)
        else:
            order = np.argsort(pos)
            self._short_pos, self._short_size = pos[order], sizes[order]
        deficit_before = np.concatenate([[0], np.cumsum(c - self._short_size)[:-1]]).astype(np.int64)
        self._short_start = self._short_pos * c - deficit_before
        self._rot = self._rotation()

    def _layout(self, k: int, slots: np.ndarray) -> np.ndarray:
        j = np.searchsorted(self._cum_block, slots, side="right") - 1
        return self._round_start[j] + k * self._block[j] + (slots - self._cum_block[j])

    def _stream_to_chunk(self, x: np.ndarray):
        """Positions in the shuffled chunk stream -> (chunk id, offset inside the chunk)."""
        c = self.chunk_len
        i = np.searchsorted(self._short_start, x, side="right") - 1
        p = x // c
        e = x % c
        has = i >= 0
        if has.any():
            ii = i[has]
            rel = x[has] - self._short_start[ii]
            size = self._short_size[ii]
            inside = rel < size
            rel2 = rel - size
            p[has] = np.where(inside, self._short_pos[ii], self._short_pos[ii] + 1 + rel2 // c)
            e[has] = np.where(inside, rel, rel2 % c)
        return self._perm.fwd(p), e

    def chunk_extent(self, ids) -> np.ndarray:
        """int64 ``(len(ids), 3)``: ``(video, first_start, last_start)`` of each chunk id."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_chunks):
            raise IndexError(f"chunk id out of range [0, {self.num_chunks})")
        mode = self.config.mode
        if mode == "strict":
            v, s = self._split_ids(ids)
            return np.stack([v, s, s], axis=1)
        if mode == "sequential":
            return np.stack([ids, np.zeros_like(ids), self.starts_per_video[ids] - 1], axis=1)
        v, lo, hi = self._chunk_bounds(ids)
        return np.stack([v, lo, hi - 1], axis=1)

    def _chunk_bounds(self, ids: np.ndarray):
        c = self.chunk_len
        v = np.searchsorted(self._cum_chunks, ids, side="right") - 1
        j = ids - self._cum_chunks[v]
        lo = np.maximum(0, j * c - self._chunk_off[v])
        hi = np.minimum(self.starts_per_video[v], (j + 1) * c - self._chunk_off[v])
        return v, lo, hi

    def _within(self, ids: np.ndarray, e: np.ndarray, size: np.ndarray) -> np.ndarray:
        """Shuffle of the starts inside each chunk: offset e -> shuffled offset.

        The map depends only on (seed, epoch, chunk id, size), so the parts of one chunk
        that land in different batches never collide. Chunks up to _EXACT_WITHIN starts
        get a uniformly random order (argsort of keyed hashes, O(unique chunks x
        chunk_len) per batch); longer ones an affine map ``(a * e + b) mod size`` with a
        prime multiplier a > MAX_CHUNK_LEN (coprime to every size), which spreads a
        batch's share evenly over the chunk at O(1) per sample.
        """
        c = self.chunk_len
        key = _derive(self._key, _S_WITHIN)
        if c > _EXACT_WITHIN:
            h = _mix(key, ids.astype(np.uint64))
            a = _PRIMES[(h % np.uint64(len(_PRIMES))).astype(np.int64)]
            b = ((h >> np.uint64(8)) % size.astype(np.uint64)).astype(np.int64)
            return (a * e + b) % size
        uniq, inv = np.unique(ids, return_inverse=True)
        cols = np.arange(c, dtype=np.uint64)
        h = _mix(key, uniq.astype(np.uint64)[:, None] * np.uint64(c) + cols[None, :]) >> np.uint64(1)
        usize = np.zeros(len(uniq), dtype=np.int64)
        usize[inv] = size
        h[cols[None, :] >= usize[:, None].astype(np.uint64)] = np.uint64(_M64)
        perm = np.argsort(h, axis=1, kind="stable")
        return perm[inv, e]

    # ----------------------------------------------------------------- batches
    def _split_ids(self, g: np.ndarray):
        v = np.searchsorted(self._cum, g, side="right") - 1
        return v, g - self._cum[v]

    def batch_len(self, k: int) -> int:
        """Number of samples in batch k."""
        return self.config.batch_size if k < self.num_batches - 1 else self._last

    def _batch(self, k: int):
        cfg = self.config
        n = self.num_batches
        if not isinstance(k, numbers.Integral) or isinstance(k, bool):
            raise TypeError(f"batch index must be an integer, got {type(k).__name__}")
        k = int(k)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"batch {k} out of range: the plan has {n} batches")
        # plan[k] and plan.chunks(k) come in pairs; one tuple read keeps this thread-safe.
        cache = self._cache
        if cache[0] == k:
            return cache[1], cache[2]
        b = self.batch_len(k)
        slots = np.arange(b, dtype=np.int64)
        if cfg.mode == "sequential":
            g = self._offset + k * cfg.batch_size + slots
            v, s = self._split_ids(g)
            chunks = v
        else:
            # Positions inside a batch are exchangeable: shuffle them.
            gid = np.uint64(cfg.rank * n + k) * np.uint64(cfg.batch_size)
            h = _mix(_derive(self._key, _S_INBATCH), gid + slots.astype(np.uint64))
            slots = slots[np.argsort(h, kind="stable")]
            if cfg.mode == "strict":
                q = self._offset + k * cfg.batch_size + slots
                g = self._perm.fwd((q + self._rot) % self.total_samples)
                v, s = self._split_ids(g)
                chunks = g
            else:
                q = self._offset + self._layout(k, slots)
                x = (q + self._rot) % self.total_samples
                chunks, e = self._stream_to_chunk(x)
                v, lo, hi = self._chunk_bounds(chunks)
                s = lo + self._within(chunks, e, hi - lo)
        out = np.stack([v, s], axis=1).astype(np.int64)
        chunks = chunks.astype(np.int64)
        out.setflags(write=False)
        chunks.setflags(write=False)
        self._cache = (k, out, chunks)
        return out, chunks

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, k: int) -> np.ndarray:
        return self._batch(k)[0]

    def chunks(self, k: int) -> np.ndarray:
        """Chunk id of each sample of ``plan[k]``."""
        return self._batch(k)[1]

    def __iter__(self):
        for k in range(self.num_batches):
            yield self[k]

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Plan(mode={c.mode!r}, epoch={c.epoch}, rank={c.rank}/{c.world_size}, "
            f"batches={self.num_batches}, samples={self.num_samples}/{self.total_samples}, "
            f"chunk_len={self.chunk_len}, max_per_chunk={self.max_per_chunk})"
        )


def plan_epoch(
    lengths,
    *,
    batch_size: int,
    seed: int,
    epoch: int = 0,
    mode: str = "bounded",
    clip_len: int = 1,
    frame_stride: int = 1,
    chunk_len: int | None = None,
    max_per_chunk: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    clips_per_video: int | None = None,
    views_per_clip: int = 1,
    weights=None,
    labels=None,
    balance: str | None = None,
    balance_threshold: float | None = None,
    balance_power: float | None = None,
    cut_grid: int = 1,
) -> Plan:
    """The batches of one epoch on one rank: a lazy, deterministic :class:`Plan`.

    ``lengths`` are frames per video. ``mode`` is ``"strict"`` (uniform random permutation),
    ``"bounded"`` (chunks of at most ``chunk_len`` consecutive starts, at most
    ``max_per_chunk`` samples of one chunk per batch; defaults ``64`` and
    ``min(16, max(1, batch_size // 8))``) or ``"sequential"`` (file order).
    ``chunk_len``/``max_per_chunk`` (and ``cut_grid``: chunk cuts on multiples of it, e.g. the
    GOP, where it divides the chunk length) are ignored outside bounded mode. ``clips_per_video=k``
    makes an epoch k samples of every video with a valid start instead of every start
    (``ringload._pervideo``), each ``views_per_clip`` times (spatial views: ``plan.views(k)``).
    ``weights`` (one per video, normalised to mean 1) and ``balance`` (``"repeat_factor"``
    with ``balance_threshold``, or ``"frequency"`` with ``balance_power``, over ``labels``:
    class ids (N,) or multi-hot (N, C)) make video v's slots ``k * r_v`` rounded
    stochastically per epoch (``ringload._weights``); they need ``clips_per_video``.
    The module docstring says how ranks and ``drop_last`` split
    the epoch; docs/sampling.md gives the statistics.
    Bad arguments raise :class:`ringload.ConfigError` naming the argument.
    """
    cfg = PlanConfig(
        batch_size=batch_size,
        seed=seed,
        epoch=epoch,
        mode=mode,
        clip_len=clip_len,
        frame_stride=frame_stride,
        chunk_len=chunk_len,
        max_per_chunk=max_per_chunk,
        rank=rank,
        world_size=world_size,
        drop_last=bool(drop_last) if isinstance(drop_last, np.bool_) else drop_last,
        clips_per_video=clips_per_video,
        views_per_clip=views_per_clip,
        balance=balance,
        balance_threshold=balance_threshold,
        balance_power=balance_power,
        cut_grid=cut_grid,
    )
    weighted = weights is not None or cfg.balance is not None
    if weighted and cfg.clips_per_video is None:
        what = "weights" if weights is not None else "balance"
        raise ConfigError(
            f"{what} weigh videos, and the unit of a weighted epoch is a video's clip: pass clips_per_video "
            "(clips_per_video=1: one sample per video per epoch on average, times its repeat factor)"
        )
    if weighted and cfg.mode == "sequential":
        what = "weights" if weights is not None else "balance"
        raise ConfigError(f"{what} apply to mode='strict' or 'bounded'; sequential (evaluation) visits every video alike")
    if labels is not None and cfg.balance is None:
        raise ConfigError("labels are used by balance only: pass balance='repeat_factor' or 'frequency', or no labels")
    if cfg.clips_per_video is not None:
        from ._pervideo import PerVideoPlan

        return PerVideoPlan(lengths, cfg, weights=weights, labels=labels)
    return Plan(lengths, cfg)


def segment_indices(num_frames: int, num_segments: int, *, seed: int, mode: str = "random") -> np.ndarray:
    """TSN-style sampling: one frame index from each of ``num_segments`` equal parts.

    Part ``j`` is frames ``[j * F // S, (j + 1) * F // S)``. ``"random"`` draws one frame
    uniformly inside each part (keyed by ``seed``: pass a per-sample seed, e.g. from
    ``ringload._rng``); ``"center"`` takes the middle frame (evaluation). When a video has
    fewer frames than segments, parts are one frame wide and frames repeat. Returns a
    sorted int64 array of length ``num_segments``.
    """
    f = _as_int("num_frames", num_frames, low=1)
    s = _as_int("num_segments", num_segments, low=1)
    _as_int("seed", seed)
    if mode not in ("random", "center"):
        raise ConfigError(f"mode must be 'random' or 'center', got {mode!r}")
    j = np.arange(s, dtype=np.int64)
    lo = j * f // s
    width = np.maximum((j + 1) * f // s - lo, 1)
    lo = np.minimum(lo, f - 1)
    width = np.minimum(width, f - lo)
    if mode == "center":
        return lo + (width - 1) // 2
    h = _mix(_derive(seed, f, s), j.astype(np.uint64))
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return lo + np.minimum((u * width).astype(np.int64), width - 1)


def whole_gop(median_gop: float | None) -> int:
    """The median GOP as a whole number of frames (at least 2), else 0: a grid chunk cuts can lie on."""
    if median_gop is None or not np.isfinite(median_gop):
        return 0
    g = round(float(median_gop))
    return g if g >= 2 and g == median_gop else 0


def chunk_len_for_gop(median_gop: float) -> int:
    """Default bounded ``chunk_len`` for videos whose median keyframe interval is ``median_gop``.

    A chunk that starts at a random point of a GOP decodes about ``(G - 1) / 2`` frames it
    does not deliver, so it reads at ``C / (C + (G - 1) / 2)`` of sequential speed: four
    GOPs keep that near 0.89. At least ``DEFAULT_CHUNK_LEN``, at most ``MAX_AUTO_CHUNK_LEN``
    (the many-step design effect grows with C; docs/sampling.md says why); for a whole G, a
    multiple of G where one lies in that range (the next above, else the last below), so
    that the loader can cut chunks on keyframes (``ringload._bounded.cut_grid``). The
    loader then picks ``max_per_chunk`` so that the look-ahead this C needs fits its ring.
    """
    if not np.isfinite(median_gop) or median_gop <= 0:
        return DEFAULT_CHUNK_LEN
    c = int(max(DEFAULT_CHUNK_LEN, min(round(4 * float(median_gop)), MAX_AUTO_CHUNK_LEN)))
    g = whole_gop(median_gop)
    if g and g <= MAX_AUTO_CHUNK_LEN:
        up = -(-c // g) * g
        c = up if up <= MAX_AUTO_CHUNK_LEN else c // g * g
    return c
