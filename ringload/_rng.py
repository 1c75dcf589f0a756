"""Counter-based randomness: per-sample draws keyed by (seed, epoch, sample key, stream).

Every random choice made for a sample (crop box, flip, jitter factors) comes from here, so
the value depends only on the key, never on which process computed it or when. That is
what makes resumed and re-sharded runs bitwise equal.
"""

from __future__ import annotations

import numpy as np

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)

# Stream tags keep independent uses of the same sample from drawing the same numbers.
STREAM_CROP = 1
STREAM_FLIP = 2
STREAM_JITTER = 3
STREAM_SEGMENTS = 4
STREAM_SKIP = 5
# BatchAugment's flip: its own stream, so with the loader's hflip on too the two flips of a
# sample are independent instead of one draw that cancels itself.
STREAM_AUG_FLIP = 6


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_keys(videos, starts) -> np.ndarray:
    """One uint64 key per (video, start) sample: stable across ranks, workers and resumes."""
    v = np.asarray(videos, dtype=np.int64).astype(np.uint64)
    s = np.asarray(starts, dtype=np.int64).astype(np.uint64)
    return (v << np.uint64(32)) ^ s


def uniforms(seed: int, epoch: int, keys, stream: int, n: int) -> np.ndarray:
    """Float64 array (len(keys), n) of independent U[0, 1) draws for each key."""
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    with np.errstate(over="ignore"):
        base = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix64(np.uint64(epoch & 0xFFFFFFFF) + np.uint64(stream << 32)))
        h = _splitmix64(keys ^ base)
        ctr = np.arange(n, dtype=np.uint64)
        bits = _splitmix64(h[:, None] + ctr[None, :] * np.uint64(0xD1B54A32D192ED03))
    # Top 53 bits -> exactly representable doubles in [0, 1).
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
