"""The plan's settings: :class:`PlanConfig` (the arguments of ``plan_epoch`` but ``lengths``,
validated), the defaults and limits they are checked against, and the check of ``lengths``."""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from .errors import ConfigError

MODES = ("strict", "bounded", "sequential")

#: Default chunk length (consecutive starts of one video). docs/sampling.md, "Throughput
#: model": with GOPs of ~30 frames a chunk of 64 wastes ~18 % of decode work on the walk
#: from the keyframe (measured 197 vs ~240 frames/s sequential on 2 processes).
DEFAULT_CHUNK_LEN = 64
#: Cap on the default ``max_per_chunk``; the default is ``min(16, max(1, batch_size // 8))``
#: so a batch always mixes at least ``min(8, batch_size)`` chunks.
DEFAULT_MAX_PER_CHUNK = 16
#: Longest accepted chunk: beyond this the keyframe walk is already < 0.4 % of the work.
MAX_CHUNK_LEN = 4096
# Limit of the GOP-based default: longer chunks read faster but raise the variance over
# several steps towards 1 + (chunk_len - 1) * rho (docs/sampling.md).
MAX_AUTO_CHUNK_LEN = 256


def _as_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high}, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """The arguments of :func:`plan_epoch` except ``lengths``, validated.

    ``chunk_len`` and ``max_per_chunk`` are the values asked for (``None``: the default);
    the values in use are ``Plan.chunk_len`` and ``Plan.max_per_chunk``. ``cut_grid`` G
    puts bounded chunk cuts on multiples of G starts when G divides the chunk length in
    use (``Plan.cut_grid``; the loader passes the median GOP, so cuts fall on keyframes).
    They only matter in bounded mode.
    """

    batch_size: int
    seed: int
    epoch: int = 0
    mode: str = "bounded"
    clip_len: int = 1
    frame_stride: int = 1
    chunk_len: int | None = None
    max_per_chunk: int | None = None
    rank: int = 0
    world_size: int = 1
    drop_last: bool = True
    clips_per_video: int | None = None
    views_per_clip: int = 1
    balance: str | None = None
    balance_threshold: float | None = None
    balance_power: float | None = None
    cut_grid: int = 1

    def __post_init__(self):
        _as_int("batch_size", self.batch_size, low=1)
        # The generators take 64-bit seeds and 32-bit epochs: larger values would alias.
        _as_int("seed", self.seed, low=0, high=2**64 - 1)
        _as_int("epoch", self.epoch, low=0, high=2**32 - 1)
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(map(repr, MODES))}, got {self.mode!r}")
        _as_int("clip_len", self.clip_len, low=1)
        _as_int("frame_stride", self.frame_stride, low=1)
        if self.chunk_len is not None:
            _as_int("chunk_len", self.chunk_len, low=1, high=MAX_CHUNK_LEN)
        if self.max_per_chunk is not None:
            _as_int("max_per_chunk", self.max_per_chunk, low=1)
        _as_int("cut_grid", self.cut_grid, low=1, high=MAX_CHUNK_LEN)
        world = _as_int("world_size", self.world_size, low=1)
        _as_int("rank", self.rank, low=0, high=world - 1)
        if not isinstance(self.drop_last, (bool, np.bool_)):
            raise ConfigError(f"drop_last must be True or False, got {self.drop_last!r}")
        if self.clips_per_video is not None:
            from ._pervideo import MAX_CLIPS_PER_VIDEO

            _as_int("clips_per_video", self.clips_per_video, low=1, high=MAX_CLIPS_PER_VIDEO)
        if _as_int("views_per_clip", self.views_per_clip, low=1, high=64) > 1 and self.clips_per_video is None:
            raise ConfigError("views_per_clip applies with clips_per_video only")
        from ._weights import check_balance

        check_balance(self.balance, self.balance_threshold, self.balance_power)

    @property
    def span(self) -> int:
        """Frames from a sample's first to its last frame, inclusive."""
        return (self.clip_len - 1) * self.frame_stride + 1


def default_max_per_chunk(batch_size: int) -> int:
    """The default ``max_per_chunk``: ``min(16, max(1, batch_size // 8))``."""
    return min(DEFAULT_MAX_PER_CHUNK, max(1, batch_size // 8))


def _check_lengths(lengths) -> np.ndarray:
    try:
        arr = np.asarray(lengths)
    except Exception as exc:  # ragged input and the like
        raise ConfigError(f"lengths must be a 1-D array of frame counts: {exc}") from None
    if arr.ndim != 1:
        raise ConfigError(f"lengths must be a 1-D array of frame counts, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ConfigError(f"lengths must hold integer frame counts, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=True)
    if arr.size and arr.min() < 0:
        bad = int(np.flatnonzero(arr < 0)[0])
        raise ConfigError(f"lengths must be >= 0, lengths[{bad}] = {arr[bad]}")
    return arr
