"""Bounded mode's defaults: ``chunk_len`` and ``max_per_chunk`` from the data and the settings.

The rule (docs/sampling.md, "Choosing the defaults", has the measurement behind it):

1. ``chunk_len`` C: four median GOPs, at least 64 and at most 256, a whole number of GOPs
   where one fits (``chunk_len_for_gop``). Where starts are frames (no ``fps``, no
   trimmed rows) and the median GOP G is a whole number dividing C, the chunk cuts lie on
   multiples of G (``cut_grid``): on keyframes for videos of regular GOP, so no chunk
   walks from a keyframe; elsewhere a chunk reads at about ``C / (C + (G - 1) / 2)``.
2. ``max_per_chunk`` M: the smallest of 1, 2, 4, 8, 16 (and at most the batch size) whose
   look-ahead fits the default ring: a chunk's batches (``chunk_window``, about
   ``1 + (C - 1) / M``) plus ``WORK_BATCHES`` batches of work for the decoders must fit in
   ``DEFAULT_RING_BYTES`` (1 GiB) at this batch's size. The per-batch design effect is
   at most ``1 + (M - 1) * rho``, so the smallest M that keeps the speed is the one with the
   least statistical cost. When no candidate fits, M = 16.

Both are functions of the data (median GOP, output size) and the settings alone, never of
the machine (cores, memory) nor of ``ring_bytes`` (the ring changes when frames are
decoded, never what a batch holds), so every rank and every resumed run derive the same
plan. A ring set smaller than the window needs makes the engine log the ``ring_bytes``
that restores the speed.
``min_effective_batch=E`` replaces step 2 by ``M = max(1, batch_size // E)``: with rho = 1
(the worst case) a batch then carries the information of at least E independent samples.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

log = logging.getLogger(__name__)

#: max_per_chunk values the rule chooses from, smallest bound first.
CANDIDATES = (1, 2, 4, 8, 16)
#: Batches of look-ahead the decoders work in beside a chunk's own window; a constant
#: (two per decoder of an 8-decoder machine), not the machine's count, so the rule is the
#: same everywhere.
WORK_BATCHES = 16
#: The ring's default budget (``ring_bytes`` unset).
DEFAULT_RING_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class BoundedDefaults:
    """The values in use and why: ``reason`` is one line for logs and ``stats()``."""

    chunk_len: int
    max_per_chunk: int
    chunk_window: int
    reason: str
    cut_grid: int = 1


def min_block(batch_size: int, max_per_chunk: int) -> int:
    """The smallest block the plan deals (``Plan.min_block``)."""
    groups = -(-batch_size // max_per_chunk)
    return batch_size // groups


def chunk_window(chunk_len: int, batch_size: int, max_per_chunk: int) -> int:
    """Consecutive batches a chunk's samples reach (``Plan.chunk_window`` without the epoch's end)."""
    return 1 + -(-(chunk_len - 1) // min_block(batch_size, max_per_chunk))


def ring_batches(slot_bytes: int, ring_bytes: int | None = None) -> int:
    """Batches the look-ahead may hold in a ring of ``ring_bytes`` (None: the default) beside
    the consumer's slot. The rule always uses the default."""
    budget = ring_bytes if ring_bytes is not None else DEFAULT_RING_BYTES
    return budget // max(1, slot_bytes) - 1


def median_gop(keyframes, offsets) -> float | None:
    """Median keyframe interval over the complete intervals of all videos (video i's
    keyframes are ``keyframes[offsets[i]:offsets[i + 1]]``); None when no video has two."""
    kf, off = np.asarray(keyframes, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
    owner = np.repeat(np.arange(len(off) - 1), np.diff(off))
    gaps = np.diff(kf)[owner[1:] == owner[:-1]]
    return float(np.median(gaps)) if len(gaps) else None


def design_effect_bound(max_per_chunk: int, rho: float = 1.0) -> float:
    """Upper bound of a batch mean's variance against strict sampling: ``1 + (M - 1) * rho``."""
    return 1.0 + (max_per_chunk - 1) * rho


def effective_batch_size(batch_size: int, max_per_chunk: int, rho: float = 1.0) -> float:
    """``batch_size / design_effect_bound``: independent samples a batch is worth at correlation rho."""
    return batch_size / design_effect_bound(max_per_chunk, rho)


def choose(*, median_gop: float | None, batch_size: int, slot_bytes: int, chunk_len: int | None = None, max_per_chunk: int | None = None,
           min_effective_batch: int | None = None, frame_starts: bool = True) -> BoundedDefaults:
    """The bounded ``chunk_len``, ``max_per_chunk`` and ``cut_grid`` for these data and
    settings (module docstring).

    Values the user set are kept; ``median_gop`` None (no keyframe gap known) takes the
    plan's fixed default chunk length. ``frame_starts``: a sample's start is its first
    frame's index in the file (False with ``fps`` or trimmed rows: no cut grid).
    """
    from .plan import DEFAULT_CHUNK_LEN, chunk_len_for_gop

    c = chunk_len if chunk_len is not None else (
        chunk_len_for_gop(median_gop) if median_gop is not None else DEFAULT_CHUNK_LEN
    )
    fit = ring_batches(slot_bytes)
    if max_per_chunk is not None:
        m, why = max_per_chunk, "max_per_chunk set"
    elif min_effective_batch is not None:
        m = max(1, batch_size // min_effective_batch)
        why = f"min_effective_batch={min_effective_batch}: batch_size {batch_size} // {min_effective_batch}"
    else:
        fits = [m for m in CANDIDATES if m <= batch_size and chunk_window(c, batch_size, m) + WORK_BATCHES <= fit]
        if fits:
            m = fits[0]
            why = (f"smallest max_per_chunk whose look-ahead ({chunk_window(c, batch_size, m)} + {WORK_BATCHES} "
                   f"batches) fits the default ring ({fit} batches)")
        else:
            m = min(CANDIDATES[-1], batch_size)
            why = f"no look-ahead fits the default ring ({fit} batches of {slot_bytes / 2**20:.0f} MiB)"
    g = cut_grid(median_gop, c) if frame_starts else 1
    return BoundedDefaults(c, m, chunk_window(c, batch_size, m), why, g)


def cut_grid(median_gop: float | None, chunk_len: int) -> int:
    """The median GOP where it is a whole number of frames (at least 2) dividing ``chunk_len``, else 1."""
    from .plan import whole_gop

    g = whole_gop(median_gop)
    return g if g and chunk_len % g == 0 else 1
