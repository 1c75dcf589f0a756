"""Batched per-sample augmentation on the batch's own device: colour jitter, flip, normalise.

Frames leave the loader as uint8 at their final size (the only bytes that cross PCIe);
everything here runs on whatever device the batch is on, in a handful of batched tensor ops.

Every random choice for a sample comes from ``ringload._rng`` keyed by
``(seed, epoch, sample key)``, where the sample key is the one of the sample's crop:
``sample_keys(video_index, start)``. So a resumed or re-sharded run draws the same factors
for the same sample, whatever batch or process it lands in.

The colour jitter follows torchvision's ``ColorJitter(brightness, contrast, saturation, hue)``
applied to a float image in ``[0, 1]``: the same parameter ranges and distributions, the same
four formulas, and the four operations applied in a uniformly random order per sample.
Clips share one set of factors across their frames (like torchvision's video transforms).

Example::

    from ringload import augment
    aug = augment.BatchAugment(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                               hflip_p=0.5, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD)
    x = aug(batch.frames, augment.keys_for_batch(batch), seed=0, epoch=epoch)  # float32
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import _rng
from .errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchAugment",
    "JitterParams",
    "keys_for_batch",
    "sample_keys",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Operation ids in torchvision's numbering (the order ColorJitter.get_params permutes).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
# All 24 orders, lexicographic; a sample's order is PERMUTATIONS[floor(u * 24)].
PERMUTATIONS = np.array(list(itertools.permutations(range(4))), dtype=np.int64)

# Grayscale weights torchvision uses for rgb_to_grayscale (ITU-R 601-2 luma, rounded).
_GRAY = (0.2989, 0.587, 0.114)

# Which of (v, p, q, t) gives (r, g, b) in each of the six hue sectors.
_V, _P, _Q, _T = 0, 1, 2, 3
_SECTOR_TABLE = (
    (_V, _T, _P),
    (_Q, _V, _P),
    (_P, _V, _T),
    (_P, _Q, _V),
    (_T, _P, _V),
    (_V, _P, _Q),
)


def sample_keys(video_index, start) -> np.ndarray:
    """The uint64 key of each (video, start) sample, the same key its crop is drawn from."""
    return _rng.sample_keys(_as_numpy(video_index), _as_numpy(start))


def keys_for_batch(batch) -> np.ndarray:
    """Sample keys of a loader ``Batch``: its ``sample_keys`` (every loader batch has them), else
    ``(video_index, first frame_index)`` of every sample."""
    keys = getattr(batch, "sample_keys", None)
    if keys is not None:
        return np.asarray(_as_numpy(keys), dtype=np.uint64)
    frame_index = _as_numpy(batch.frame_index)
    start = frame_index if frame_index.ndim == 1 else frame_index[:, 0]
    return sample_keys(batch.video_index, start)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _factor_range(name: str, value, *, center: float, lower: float, upper: float, clip: bool):
    """torchvision's rule: a number v means [center - v, center + v] (clipped at ``lower``
    when ``clip``), a pair is the range itself; a range that is just ``center`` is off."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"{name}={value!r}: must be a non-negative number or a (min, max) pair")
        lo, hi = center - v, center + v
        if clip:
            lo = max(lo, lower)
        if hi > upper:
            raise ConfigError(f"{name}={value!r}: must be at most {upper - center} (set {name} lower)")
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
        if not (lower <= lo <= hi <= upper):
            raise ConfigError(f"{name}={tuple(value)!r}: need {lower} <= min <= max <= {upper}")
    else:
        raise ConfigError(f"{name}={value!r}: must be a non-negative number or a (min, max) pair")
    if lo == hi == center:
        return None
    return (lo, hi)


@dataclass(frozen=True)
class JitterParams:
    """Per-sample draws for a batch (numpy, one row per sample).

    ``order[i]`` is the order in which sample i gets the four colour operations (ids:
    0 brightness, 1 contrast, 2 saturation, 3 hue); a factor array is None when that
    operation is switched off. ``flip[i]`` says whether sample i is mirrored left-right.
    """

    order: np.ndarray
    brightness: np.ndarray | None
    contrast: np.ndarray | None
    saturation: np.ndarray | None
    hue: np.ndarray | None
    flip: np.ndarray


@dataclass(frozen=True)
class BatchAugment:
    """Colour jitter (torchvision ``ColorJitter`` semantics), horizontal flip with
    probability ``hflip_p``, then ``(x - mean) / std``; input uint8 (scaled by 1/255) or
    float in [0, 1], shape (B, C, H, W) or (B, T, C, H, W); output ``dtype``.

    ``brightness``, ``contrast``, ``saturation``: a number v draws the factor uniformly
    from [max(0, 1 - v), 1 + v], a pair (min, max) from that range. ``hue``: a number
    h <= 0.5 draws the shift from [-h, h], a pair from that range (within [-0.5, 0.5]).
    """

    brightness: float | tuple[float, float] = 0.0
    contrast: float | tuple[float, float] = 0.0
    saturation: float | tuple[float, float] = 0.0
    hue: float | tuple[float, float] = 0.0
    hflip_p: float = 0.0
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    dtype: torch.dtype = torch.float32
    _ranges: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        inf = float("inf")
        ranges = (
            _factor_range("brightness", self.brightness, center=1.0, lower=0.0, upper=inf, clip=True),
            _factor_range("contrast", self.contrast, center=1.0, lower=0.0, upper=inf, clip=True),
            _factor_range("saturation", self.saturation, center=1.0, lower=0.0, upper=inf, clip=True),
            _factor_range("hue", self.hue, center=0.0, lower=-0.5, upper=0.5, clip=False),
        )
        object.__setattr__(self, "_ranges", ranges)
        if not (0.0 <= float(self.hflip_p) <= 1.0):
            raise ConfigError(f"hflip_p={self.hflip_p!r}: must lie in [0, 1]")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("mean and std: give both or neither")
        if self.mean is not None:
            if len(self.mean) != len(self.std):
                raise ConfigError(f"mean={self.mean!r}, std={self.std!r}: need one value per channel in each")
            if any(float(s) <= 0 for s in self.std):
                raise ConfigError(f"std={self.std!r}: every value must be > 0")
        if not self.dtype.is_floating_point:
            raise ConfigError(f"dtype={self.dtype}: must be a floating-point dtype")

    @property
    def jitter_enabled(self) -> bool:
        return any(r is not None for r in self._ranges)

    def params(self, keys, *, seed: int, epoch: int) -> JitterParams:
        """The draws for these sample keys: a pure function of (seed, epoch, key)."""
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        u = _rng.uniforms(seed, epoch, keys, _rng.STREAM_JITTER, 5)
        perm = np.minimum((u[:, 0] * len(PERMUTATIONS)).astype(np.int64), len(PERMUTATIONS) - 1)
        factors = []
        for j, r in enumerate(self._ranges):
            factors.append(None if r is None else r[0] + u[:, j + 1] * (r[1] - r[0]))
        flip = _rng.uniforms(seed, epoch, keys, _rng.STREAM_AUG_FLIP, 1)[:, 0] < float(self.hflip_p)
        return JitterParams(PERMUTATIONS[perm], *factors, flip)

    def __call__(self, frames: torch.Tensor, keys, *, seed: int, epoch: int) -> torch.Tensor:
        """Augment a batch on its device; ``keys`` holds one sample key per batch row."""
        if frames.dim() not in (4, 5):
            raise ConfigError(f"frames of shape {tuple(frames.shape)}: expected (B, C, H, W) or (B, T, C, H, W)")
        clip_shape = frames.dim() == 5
        x = frames if clip_shape else frames.unsqueeze(1)
        n, _, c = x.shape[:3]
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        if len(keys) != n:
            raise ConfigError(f"got {len(keys)} sample keys for a batch of {n}: pass one key per sample")
        if self.mean is not None and len(self.mean) != c:
            raise ConfigError(f"mean has {len(self.mean)} values but frames have {c} channels")
        if frames.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        elif frames.dtype.is_floating_point:
            x = x.to(torch.float32, copy=True)
        else:
            raise ConfigError(f"frames dtype {frames.dtype}: expected uint8 or float in [0, 1]")
        p = self.params(keys, seed=seed, epoch=epoch)
        plan = _Plan(p, n)
        idx, fac = plan.upload(x.device)
        for op, a, b, full in plan.groups:
            f = fac[a:b].view(-1, 1, 1, 1, 1)
            if full:
                x = _OPS[op](x, f)
            else:
                rows = idx[a:b]
                x[rows] = _OPS[op](x[rows], f)
        if plan.flip_span is not None:
            rows = idx[plan.flip_span[0]:plan.flip_span[1]]
            x[rows] = x[rows].flip(-1)
        if self.mean is not None:
            mean = _channel_constant(tuple(float(v) for v in self.mean), x.device).view(1, 1, c, 1, 1)
            std = _channel_constant(tuple(float(v) for v in self.std), x.device).view(1, 1, c, 1, 1)
            x = x.sub_(mean).div_(std)
        x = x if clip_shape else x.squeeze(1)
        return x.to(self.dtype)


class _Plan:
    """The batch's draws as a few slices of two small arrays, sent to the device in one
    non-blocking copy each, so that augmenting never makes the host wait for the GPU.

    ``groups``: (op, start, end, whole batch?) in application order. At step s, every
    operation runs once on the samples whose order puts it at s: at most 16 batched calls
    whatever the batch size. ``idx[start:end]`` holds the rows, ``fac[start:end]`` their factors.
    """

    def __init__(self, p: JitterParams, n: int):
        factors = (p.brightness, p.contrast, p.saturation, p.hue)
        self.groups: list[tuple[int, int, int, bool]] = []
        rows_parts, fac_parts = [], []
        off = 0
        for step in range(4):
            at_step = p.order[:, step]
            for op in range(4):
                if factors[op] is None:
                    continue
                rows = np.flatnonzero(at_step == op)
                if rows.size == 0:
                    continue
                self.groups.append((op, off, off + rows.size, rows.size == n))
                rows_parts.append(rows)
                fac_parts.append(factors[op][rows])
                off += rows.size
        self.flip_span = None
        flips = np.flatnonzero(p.flip)
        if flips.size:
            rows_parts.append(flips)
            self.flip_span = (off, off + flips.size)
        self._idx = np.concatenate(rows_parts).astype(np.int64) if rows_parts else np.zeros(0, np.int64)
        self._fac = np.concatenate(fac_parts).astype(np.float32) if fac_parts else np.zeros(0, np.float32)

    def upload(self, device: torch.device):
        return _to_device(self._idx, device), _to_device(self._fac, device)


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(a)
    if device.type == "cpu":
        return t
    # From pageable memory a copy would wait for the device to drain; from pinned memory it
    # is queued like a kernel (the caching host allocator keeps the buffer until it ran).
    return t.pin_memory().to(device, non_blocking=True)


@functools.lru_cache(maxsize=64)
def _channel_constant(values: tuple, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).to(device)


@functools.lru_cache(maxsize=16)
def _sector_table(device: torch.device) -> torch.Tensor:
    return torch.tensor(_SECTOR_TABLE, dtype=torch.int64).to(device)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * a + (1.0 - f) * b).clamp_(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(-3)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


def _brightness(x, f):
    # A blend with black: f * x + (1 - f) * 0, which is exactly f * x.
    return (f * x).clamp_(0.0, 1.0)


def _contrast(x, f):
    mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, f)


def _saturation(x, f):
    if x.shape[-3] == 1:
        return x
    return _blend(x, _gray(x), f)


def _hue(x, f):
    if x.shape[-3] == 1:
        return x
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + f.squeeze(-3), 1.0)
    return _hsv_to_rgb(h, s, v)


def _rgb_to_hsv(x: torch.Tensor):
    r, g, b = x.unbind(-3)
    maxc = x.amax(dim=-3)
    minc = x.amin(dim=-3)
    delta = maxc - minc
    grey = delta == 0
    one = torch.ones_like(maxc)
    s = delta / torch.where(grey, one, maxc)
    d = torch.where(grey, one, delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    # The channel holding the maximum picks the sector; ties resolve red, then green.
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.remainder(h / 6.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    p = (v * (1.0 - s)).clamp_(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp_(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp_(0.0, 1.0)
    cand = torch.stack((v, p, q, t), dim=-3)  # ids _V, _P, _Q, _T
    idx = _sector_table(h.device)[sector.to(torch.int64).remainder_(6)]  # (..., H, W, 3)
    idx = idx.movedim(-1, -3)
    return cand.gather(-3, idx)


_OPS = (_brightness, _contrast, _saturation, _hue)
