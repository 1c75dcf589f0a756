"""``VideoLoader``: batches of exact frames, clips or segments, decoded by spawned processes.

Data flow: the plan (``ringload.plan``) decides which samples make batch k; this module
turns them into frame indices, crop boxes and flips (a pure function of seed, epoch, rank,
k and the config); the scheduler (``ringload._scheduler``) has decoder processes write the
frames into a slot of the shared-memory ring (``ringload._ring``); the transfer
(``ringload._transfer``) turns a complete slot into the tensor the user receives.

CPU batches are copied out of shared memory before ``__next__`` returns: the user owns
every tensor of a :class:`Batch` and may keep it as long as they like. ``frames`` is a
uint8 tensor in channels-last memory order (a view with shape (B, C, H, W) or
(B, T, C, H, W) over (B, [T,] H, W, C) data); call ``.contiguous()`` for the other order.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
import weakref
from collections.abc import Sequence

import numpy as np

from . import _rng
from .errors import ConfigError, LoaderStateError, LoaderTimeoutError, VideoError
from .probe import short_files_warning

log = logging.getLogger(__name__)

SAMPLES = ("frames", "clips", "segments")
CROPS = ("random_resized", "center", "none")
SAMPLINGS = ("bounded", "strict", "sequential")
ON_ERROR = ("raise", "skip")
ORIENTATIONS = ("display", "coded")

# Default ring budget: prefetch as many batches as fit in this many bytes (2..8 batches).
_RING_BUDGET_BYTES = 1 << 30
_MAX_SEED = 2**64 - 1
_MAX_EPOCH = 2**32 - 1
# Tolerance when a clip's sampling times are matched to frame timestamps (see _clip_frames).
_TIME_EPS = 1e-6


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _pair(name: str, value, *, positive_ints: bool) -> tuple:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: pass a pair, e.g. {name}=(224, 224)") from None
    if positive_ints:
        if not (_is_int(a) and _is_int(b)) or a < 1 or b < 1:
            raise ConfigError(f"{name}={value!r}: pass two ints >= 1 (height, width)")
        return int(a), int(b)
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: pass two numbers") from None
    return a, b


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Every setting of a :class:`VideoLoader`, validated. See ``VideoLoader`` for meanings."""

    batch_size: int = 128
    sample: str = "frames"
    clip_len: int = 1
    frame_stride: int = 1
    fps: float | None = None
    num_segments: int | None = None
    size: tuple[int, int] | None = (224, 224)
    crop: str = "random_resized"
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False
    orientation: str = "display"
    sampling: str = "bounded"
    chunk_len: int | None = None
    max_per_chunk: int | None = None
    seed: int = 0
    num_workers: int | None = None
    prefetch_batches: int | None = None
    device: str = "cpu"
    drop_last: bool = False
    rank: int | None = None
    world_size: int | None = None
    on_error: str = "raise"
    timeout_s: float = 300.0
    task_timeout_s: float = 60.0

    def __post_init__(self):
        def need_int(name, low, *, none_ok=False, high=None):
            v = getattr(self, name)
            if v is None and none_ok:
                return
            if not _is_int(v) or v < low or (high is not None and v > high):
                within = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
                raise ConfigError(f"{name}={v!r}: pass {within}" + (" or None" if none_ok else ""))

        need_int("batch_size", 1)
        need_int("clip_len", 1)
        need_int("frame_stride", 1)
        need_int("seed", 0, high=_MAX_SEED)  # 64-bit generators: a larger seed would alias a smaller one
        need_int("num_segments", 1, none_ok=True)
        need_int("chunk_len", 1, none_ok=True)
        need_int("max_per_chunk", 1, none_ok=True)
        need_int("num_workers", 0, none_ok=True)
        need_int("prefetch_batches", 1, none_ok=True)
        need_int("rank", 0, none_ok=True)
        need_int("world_size", 1, none_ok=True)
        for name, allowed in (("sample", SAMPLES), ("crop", CROPS), ("sampling", SAMPLINGS), ("on_error", ON_ERROR),
                              ("orientation", ORIENTATIONS)):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: pass one of {', '.join(map(repr, allowed))}")
        if self.size is not None:
            object.__setattr__(self, "size", _pair("size", self.size, positive_ints=True))
        elif self.crop == "random_resized" or self.crop == "center":
            raise ConfigError(f"size=None needs crop='none' (crop={self.crop!r} needs an output size)")
        scale = _pair("scale", self.scale, positive_ints=False)
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(f"scale={self.scale!r}: pass (min, max) with 0 < min <= max <= 1")
        object.__setattr__(self, "scale", scale)
        ratio = _pair("ratio", self.ratio, positive_ints=False)
        if not (0 < ratio[0] <= ratio[1]):
            raise ConfigError(f"ratio={self.ratio!r}: pass (min, max) aspect ratios (w/h) with 0 < min <= max")
        object.__setattr__(self, "ratio", ratio)
        if not isinstance(self.hflip, (bool, np.bool_)):
            raise ConfigError(f"hflip={self.hflip!r}: pass True or False")
        if not isinstance(self.drop_last, (bool, np.bool_)):
            raise ConfigError(f"drop_last={self.drop_last!r}: pass True or False")
        if self.fps is not None:
            if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float, np.integer, np.floating)) or not (
                math.isfinite(self.fps) and self.fps > 0
            ):
                raise ConfigError(f"fps={self.fps!r}: pass a positive number of frames per second, or None")
            if self.sample != "clips":
                raise ConfigError(f"fps={self.fps!r} applies to sample='clips' only (sample={self.sample!r})")
            if self.frame_stride != 1:
                raise ConfigError(
                    f"fps={self.fps!r} and frame_stride={self.frame_stride} both set the spacing of a clip's frames: "
                    "pass one of them (fps picks frames by timestamp, frame_stride by position)"
                )
            object.__setattr__(self, "fps", float(self.fps))
        if self.sample == "segments" and self.num_segments is None:
            raise ConfigError("sample='segments' needs num_segments (frames per sample, one per equal part of the video)")
        if self.sample != "segments" and self.num_segments is not None:
            raise ConfigError(f"num_segments={self.num_segments} applies to sample='segments' only")
        if self.sample == "frames" and (self.clip_len != 1 or self.frame_stride != 1):
            raise ConfigError("clip_len/frame_stride apply to sample='clips'; with sample='frames' leave them at 1")
        if (self.rank is None) != (self.world_size is None):
            raise ConfigError("pass rank and world_size together (or neither, to take them from torch.distributed)")
        if self.rank is not None and self.rank >= self.world_size:
            raise ConfigError(f"rank={self.rank} must be < world_size={self.world_size}")
        for name in ("timeout_s", "task_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"{name}={v!r}: pass a positive number of seconds")
        dev = str(self.device)
        if not (dev == "cpu" or dev.startswith("cuda")):
            raise ConfigError(f"device={self.device!r}: pass 'cpu' or a CUDA device such as 'cuda' or 'cuda:0'")

    @property
    def frames_per_sample(self) -> int:
        if self.sample == "frames":
            return 1
        if self.sample == "clips":
            return self.clip_len
        return self.num_segments


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """One batch. ``frames`` uint8 RGB (B, C, H, W) for frames, (B, T, C, H, W) for clips and
    segments, in channels-last memory order (``.contiguous()`` gives the other one);
    ``video_index`` (B,) int64 (position in the source); ``frame_index`` (B,) or (B, T)
    int64 (frame i of a full decode in presentation order) and ``pts_seconds`` float64 of
    the same shape; ``labels`` int64 (B,) class ids, float32 (B, C) multi-hot, or None
    without labels. On the CPU every tensor is the caller's own copy."""

    frames: object
    video_index: object
    frame_index: object
    pts_seconds: object
    labels: object | None
    _paths: Sequence[str] = dataclasses.field(repr=False, compare=False, default=())

    @property
    def paths(self) -> list[str]:
        """Path of each sample's video."""
        return [self._paths[i] for i in self.video_index.tolist()]

    def __len__(self) -> int:
        return int(self.video_index.shape[0])


@dataclasses.dataclass(frozen=True)
class _Content:
    video: np.ndarray
    start: np.ndarray
    frames: np.ndarray
    crop: np.ndarray
    flip: np.ndarray


def random_resized_boxes(width, height, u, scale, ratio) -> np.ndarray:
    """Crop boxes (x, y, w, h) drawn like torchvision's RandomResizedCrop.get_params.

    Up to 10 attempts per sample (4 uniforms each: area scale, log aspect ratio, top, left),
    then the centre-crop fallback, vectorised over samples. ``u`` is (n, 40) in [0, 1).
    """
    W = np.asarray(width, dtype=np.float64)
    H = np.asarray(height, dtype=np.float64)
    n = len(W)
    area = W * H
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    out = np.zeros((n, 4), dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    for a in range(10):
        target = area * (scale[0] + u[:, 4 * a] * (scale[1] - scale[0]))
        aspect = np.exp(lr0 + u[:, 4 * a + 1] * (lr1 - lr0))
        w = np.round(np.sqrt(target * aspect))
        h = np.round(np.sqrt(target / aspect))
        ok = ~done & (w > 0) & (w <= W) & (h > 0) & (h <= H)
        if ok.any():
            top = np.floor(u[:, 4 * a + 2] * (H - h + 1))
            left = np.floor(u[:, 4 * a + 3] * (W - w + 1))
            out[ok] = np.stack([left, top, w, h], axis=1)[ok].astype(np.int64)
            done |= ok
        if done.all():
            break
    if not done.all():
        rest = ~done
        Wr, Hr = W[rest], H[rest]
        in_ratio = Wr / Hr
        w = Wr.copy()
        h = Hr.copy()
        lo = in_ratio < ratio[0]
        hi = in_ratio > ratio[1]
        h[lo] = np.round(Wr[lo] / ratio[0])
        w[hi] = np.round(Hr[hi] * ratio[1])
        out[rest] = np.stack([(Wr - w) // 2, (Hr - h) // 2, w, h], axis=1).astype(np.int64)
    return out


def display_to_coded_boxes(boxes, width, height, rotation, hflip) -> np.ndarray:
    """Boxes (x, y, w, h) on displayed frames -> boxes of the same pixels on the coded frames.

    ``width``/``height`` are the coded sizes; a frame is displayed turned ``rotation``
    degrees counter-clockwise, then mirrored if ``hflip`` (``VideoInfo.orient``). Scalars
    or one value per box.
    """
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    n = len(b)
    W, H, rot, flip = (np.broadcast_to(np.asarray(v), (n,)) for v in (width, height, rotation, hflip))
    W, H, rot, flip = W.astype(np.int64), H.astype(np.int64), rot.astype(np.int64), flip.astype(bool)
    x, y, w, h = (b[:, i].copy() for i in range(4))
    turned = (rot == 90) | (rot == 270)
    # The mirror came last: undo it first, on the displayed width.
    x = np.where(flip, np.where(turned, H, W) - x - w, x)
    out = np.stack([x, y, w, h], axis=1)
    r90, r180, r270 = rot == 90, rot == 180, rot == 270
    # np.rot90 semantics: a quarter turn counter-clockwise shows coded column W-1-i as row i.
    out[r90] = np.stack([W - y - h, x, h, w], axis=1)[r90]
    out[r180] = np.stack([W - x - w, H - y - h, w, h], axis=1)[r180]
    out[r270] = np.stack([y, H - x - w, h, w], axis=1)[r270]
    return out


def _snap_even(boxes: np.ndarray) -> np.ndarray:
    """Move boxes onto the 2x2 chroma grid (at most one pixel) so a crop is a plane copy."""
    b = boxes.copy()
    b[:, 0] -= b[:, 0] % 2
    b[:, 1] -= b[:, 1] % 2
    b[:, 2] = np.where(b[:, 2] >= 2, b[:, 2] - b[:, 2] % 2, b[:, 2])
    b[:, 3] = np.where(b[:, 3] >= 2, b[:, 3] - b[:, 3] % 2, b[:, 3])
    return b


class _Sampler:
    """What batch k holds: samples from the plan, their frames, crop boxes and flips."""

    def __init__(self, cfg: LoaderConfig, infos, counts: np.ndarray, plan, epoch: int):
        self.cfg = cfg
        self.infos = infos
        self.plan = plan
        self.epoch = epoch
        self.width = np.array([i.width if i is not None else 0 for i in infos], dtype=np.int64)
        self.height = np.array([i.height if i is not None else 0 for i in infos], dtype=np.int64)
        orients = [i.orient(cfg.orientation) if i is not None else (0, False) for i in infos]
        self.turn = np.array([o[0] for o in orients], dtype=np.int64)
        self.mirror = np.array([o[1] for o in orients], dtype=bool)
        self.counts = counts
        # Consecutive batches a bounded chunk can reach (the scheduler's look-ahead unit).
        self.chunk_window = plan.chunk_window if cfg.sampling == "bounded" else 1
        self.eligible = np.flatnonzero(counts > 0)
        self.cum = np.cumsum(counts[self.eligible])

    def batch(self, k: int) -> _Content:
        vs = np.asarray(self.plan[k], dtype=np.int64)
        return self.content(vs[:, 0], vs[:, 1])

    def content(self, video: np.ndarray, start: np.ndarray) -> _Content:
        keys = _rng.sample_keys(video, start)
        return _Content(video, start, self.frames(video, start, keys), self.crops(video, keys), self.flips(keys))

    def frames(self, video, start, keys) -> np.ndarray:
        cfg = self.cfg
        T = cfg.frames_per_sample
        if cfg.sample == "frames":
            return start[:, None].copy()
        if cfg.sample == "clips":
            if cfg.fps is None:
                return start[:, None] + np.arange(T, dtype=np.int64)[None, :] * cfg.frame_stride
            out = np.empty((len(video), T), dtype=np.int64)
            for i, (v, s) in enumerate(zip(video.tolist(), start.tolist())):
                out[i] = _clip_frames(self.infos[v].pts_seconds, s, T, cfg.fps)
            return out
        mode = "center" if cfg.sampling == "sequential" else "random"
        seeds = (_rng.uniforms(cfg.seed, self.epoch, keys, _rng.STREAM_SEGMENTS, 1)[:, 0] * (1 << 53)).astype(np.int64)
        from .plan import segment_indices

        out = np.empty((len(video), T), dtype=np.int64)
        for i, v in enumerate(video.tolist()):
            out[i] = segment_indices(self.infos[v].num_frames, T, seed=int(seeds[i]), mode=mode)
        return out

    def crops(self, video, keys) -> np.ndarray:
        """Boxes in coded pixels, chosen on the frames as delivered (displayed, or coded)."""
        cfg = self.cfg
        n = len(video)
        Wc, Hc, turn = self.width[video], self.height[video], self.turn[video]
        turned = (turn == 90) | (turn == 270)
        W, H = np.where(turned, Hc, Wc), np.where(turned, Wc, Hc)
        if cfg.crop == "none":
            return np.zeros((n, 4), dtype=np.int32)
        if cfg.crop == "center":
            oh, ow = cfg.size
            wide = W * oh > H * ow
            w = np.where(wide, np.round(H * ow / oh), W).astype(np.int64)
            h = np.where(wide, H, np.round(W * oh / ow)).astype(np.int64)
            boxes = np.stack([(W - w) // 2, (H - h) // 2, w, h], axis=1)
        else:
            u = _rng.uniforms(cfg.seed, self.epoch, keys, _rng.STREAM_CROP, 40)
            boxes = random_resized_boxes(W, H, u, cfg.scale, cfg.ratio)
        boxes = display_to_coded_boxes(boxes, Wc, Hc, turn, self.mirror[video])
        # Snapped in coded pixels: the chroma grid is the coded frame's.
        return _snap_even(boxes).astype(np.int32)

    def flips(self, keys) -> np.ndarray:
        if not self.cfg.hflip:
            return np.zeros(len(keys), dtype=bool)
        return _rng.uniforms(self.cfg.seed, self.epoch, keys, _rng.STREAM_FLIP, 1)[:, 0] < 0.5

    def replacement(self, key_video: int, key_start: int, attempt: int):
        """Redraw ``attempt`` (1, 2, ...) for the plan's sample (key_video, key_start):
        a uniform sample over all samples, keyed by the original sample only."""
        if len(self.eligible) == 0:
            raise VideoError("<dataset>", "no usable video is left to draw a replacement sample from")
        u = _rng.uniforms(self.cfg.seed, self.epoch, _rng.sample_keys([key_video], [key_start]), _rng.STREAM_SKIP, 2 * attempt)
        u0, u1 = u[0, 2 * attempt - 2], u[0, 2 * attempt - 1]
        j = int(np.searchsorted(self.cum, u0 * self.cum[-1], side="right"))
        v = int(self.eligible[min(j, len(self.eligible) - 1)])
        s = min(int(u1 * self.counts[v]), int(self.counts[v]) - 1)
        if self.cfg.sample == "segments":
            s = 0
        c = self.content(np.array([v], np.int64), np.array([s], np.int64))
        return v, s, c.frames[0], c.crop[0], bool(c.flip[0])


def _clip_frames(pts_seconds: np.ndarray, start: int, clip_len: int, fps: float) -> np.ndarray:
    """Frames of a clip sampled at ``fps`` from frame ``start``: for j < clip_len, the frame on
    screen at time pts[start] + j / fps (the last frame whose pts <= that time)."""
    t = pts_seconds[start] + np.arange(clip_len) / fps + _TIME_EPS
    return np.searchsorted(pts_seconds, t, side="right").astype(np.int64) - 1


def _fps_starts(pts_seconds: np.ndarray, clip_len: int, fps: float) -> int:
    """Number of starts whose clip at ``fps`` ends at or before the last frame's timestamp."""
    if len(pts_seconds) == 0:
        return 0
    last = pts_seconds[-1] - (clip_len - 1) / fps + _TIME_EPS
    return int(np.searchsorted(pts_seconds, last, side="right"))


def _dist_defaults() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class VideoLoader:
    """Iterate batches of frames, clips or segments from many videos.

    ``source``: a directory (recursive), a glob, a list of paths, or a CSV/JSONL manifest
    with ``path`` and optional ``label``/``labels``.

    Sampling: ``sample`` is ``"frames"`` (one frame), ``"clips"`` (``clip_len`` frames
    every ``frame_stride``, or at a target ``fps``: frame j is the one on screen at
    ``pts[start] + j / fps``, correct for variable frame rates) or ``"segments"`` (TSN:
    ``num_segments`` frames, one per equal part of the video). ``sampling`` is
    ``"bounded"`` (chunks of ``chunk_len`` consecutive starts, at most ``max_per_chunk``
    per batch; docs/sampling.md), ``"strict"`` (uniform permutation) or ``"sequential"``.
    Bounded ``chunk_len=None`` takes four median GOPs of the data, at least 64, and longer
    than 64 only while a chunk spans at most 8 batches (``plan.chunk_len_for_gop``);
    ``stats()`` reports the values in use.

    Pixels: ``crop`` is ``"random_resized"`` (torchvision's RandomResizedCrop with
    ``scale``/``ratio``), ``"center"`` (largest centred box with the aspect of ``size``) or
    ``"none"`` (whole frame); the box is then resized to ``size=(h, w)`` (swscale's area filter) in the
    same conversion pass. Boxes lie on even coordinates (the chroma grid). A clip shares
    one box and one flip. ``hflip`` flips half the samples.

    Orientation: ``orientation="display"`` (the default) delivers frames the way a video
    player shows them, the pictures you looked at when choosing and labelling the footage:
    phone footage (an iPhone ``.MOV``) carries a display matrix (a turn by 90, 180 or 270
    degrees, perhaps a mirror), and as coded its portrait clips arrive sideways. The
    crop box is chosen on the displayed frame, ``size`` is the displayed size and ``hflip``
    mirrors the displayed frame. ``"coded"`` delivers frames as decoded, unturned.
    Either way a frame equals ``read_frames`` with the same ``orientation``.

    All random choices are keyed by
    (seed, epoch, sample), so batch k is the same for any ``num_workers``, timing or fault.

    Epochs, like ``DataLoader``: every ``iter(loader)`` starts a fresh, whole pass (so
    ``next(iter(loader))`` to peek, or a ``break``, never eats training batches). Without
    ``set_epoch`` each pass takes the next epoch number (0, 1, 2, ...: reshuffled);
    ``set_epoch(e)`` fixes the epoch of every pass until the next ``set_epoch``
    (DistributedSampler's rule). Exact mid-epoch resume is ``load_state_dict``: the next
    pass continues the saved epoch at the saved batch. One pass at a time: an older
    iterator raises :class:`ringload.LoaderStateError`. ``drop_last`` (default False, as
    in DataLoader: nothing is dropped unless asked) drops the short last batch; an epoch
    that would be empty is a ConfigError. ``rank``/``world_size`` default to
    torch.distributed's when it is initialised.

    Resources: ``num_workers`` decoder processes (default: one per CPU; 0 decodes in
    this process, on the loader's thread, with the same batches: for debugging); a ring of
    ``prefetch_batches + 1`` batch slots in shared memory (default: 8, in bounded mode
    enough for a whole chunk's batches plus two per decoder, at most what fits in 1 GiB and
    at least 2). ``on_error="skip"`` quarantines bad files (``stats()``) and replaces
    their samples deterministically; ``"raise"`` raises a :class:`ringload.VideoError`
    (from the constructor for files that cannot be indexed, from ``__next__`` at the first
    batch that needs a file that fails to decode).
    ``timeout_s`` bounds the wait for one batch, ``task_timeout_s`` (plus a share per frame)
    the time a decoder may spend on one task before it is killed and replaced.
    """

    def __init__(
        self,
        source,
        *,
        batch_size: int = 128,
        sample: str = "frames",
        clip_len: int = 1,
        frame_stride: int = 1,
        fps: float | None = None,
        num_segments: int | None = None,
        size: tuple[int, int] | None = (224, 224),
        crop: str = "random_resized",
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = False,
        orientation: str = "display",
        sampling: str = "bounded",
        chunk_len: int | None = None,
        max_per_chunk: int | None = None,
        seed: int = 0,
        num_workers: int | None = None,
        prefetch_batches: int | None = None,
        device="cpu",
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        on_error: str = "raise",
        timeout_s: float = 300.0,
        task_timeout_s: float = 60.0,
    ):
        self.config = cfg = LoaderConfig(
            batch_size=batch_size, sample=sample, clip_len=clip_len, frame_stride=frame_stride, fps=fps,
            num_segments=num_segments, size=size, crop=crop, scale=scale, ratio=ratio, hflip=hflip,
            orientation=orientation, sampling=sampling, chunk_len=chunk_len, max_per_chunk=max_per_chunk, seed=seed,
            num_workers=num_workers, prefetch_batches=prefetch_batches, device=str(device), drop_last=drop_last,
            rank=rank, world_size=world_size, on_error=on_error, timeout_s=timeout_s, task_timeout_s=task_timeout_s,
        )
        from ._source import resolve_source

        _refuse_in_a_spawned_import()
        self._closed = False
        self._finalizer = None
        self._owner_pid = os.getpid()
        self.source = resolve_source(source, on_error=cfg.on_error)
        self._paths = [os.path.abspath(p) for p in self.source.paths]
        self._rank, self._world = (cfg.rank, cfg.world_size) if cfg.rank is not None else _dist_defaults()
        self._quarantined: dict[str, str] = {}
        self._infos = self._probe_all()
        short = short_files_warning(self._infos)
        if short is not None:
            log.warning("%s", short)  # every time the loader is built, cached index or not
        self._counts, self._plan_lengths = self._sample_counts()
        self._chunk_len = self._default_chunk_len()
        if not self._counts.any():
            raise ConfigError(
                f"no video in source has a full sample (sample={cfg.sample!r}, clip_len={cfg.clip_len}, "
                f"frame_stride={cfg.frame_stride}, fps={cfg.fps}); {len(self._quarantined)} files are unusable"
            )
        self._size = self._output_size()
        self._epoch = 0  # epoch of the current (or last, or resumed) pass
        self._next_batch = 0  # position in it
        self._pinned: int | None = None  # set_epoch(e): every pass is epoch e until the next set_epoch
        self._resume = False  # load_state_dict: the next pass continues (epoch, next_batch)
        self._passes = 0
        self._gen = None  # the scheduler generation of the live pass
        self._plan_cache = None
        if len(self._plan()) == 0:
            raise ConfigError(
                f"batch_size={cfg.batch_size} is larger than the {int(self._plan().total_samples)} samples of an epoch"
                + (f" shared by {self._world} ranks" if self._world > 1 else "")
                + " and drop_last=True drops them all: lower batch_size, or pass drop_last=False"
            )
        plan = self._plan()
        if len(np.asarray(plan[len(plan) - 1])) == 0:
            # Ranks keep equal batch counts and nothing is padded (a padded sample would be seen twice).
            log.warning(
                "rank %d of %d: the last batch of each epoch is empty (the samples do not fill a last round "
                "across ranks); pass drop_last=True to drop short last batches", self._rank, self._world,
            )
        self._settings = self._make_settings()
        self._fingerprint = _digest(self._settings)
        self._counters = {"batches": 0, "samples": 0, "frames": 0, "wait_s": 0.0, "busy_s": 0.0}
        self._t_first = None
        self._start_resources()

    # ------------------------------------------------------------------ set-up

    def _default_chunk_len(self) -> int | None:
        # Bounded chunks sized from the data's GOPs (plan.chunk_len_for_gop) unless set.
        cfg = self.config
        if cfg.sampling != "bounded" or cfg.chunk_len is not None:
            return cfg.chunk_len
        from .plan import chunk_len_for_gop, default_max_per_chunk

        gaps = [np.diff(i.keyframes) for i in self._infos if i is not None and len(i.keyframes) > 1]
        if not gaps:
            return None
        m = cfg.max_per_chunk or default_max_per_chunk(cfg.batch_size)
        return chunk_len_for_gop(float(np.median(np.concatenate(gaps))), max_per_chunk=m)

    def _probe_all(self):
        from .probe import index_paths, probe

        if len(self._paths) > 8:
            index_paths(self._paths)  # fills the on-disk index in parallel; errors come below
        infos = []
        for p in self._paths:
            try:
                infos.append(probe(p))
            except VideoError as exc:
                if self.config.on_error == "raise":
                    raise _with_hint(exc) from None
                log.warning("quarantined %s", exc)
                self._quarantined[exc.path] = exc.reason
                infos.append(None)
        return infos

    def _sample_counts(self):
        """(valid starts per video, the lengths handed to plan_epoch)."""
        cfg = self.config
        n = np.array([i.num_frames if i is not None else 0 for i in self._infos], dtype=np.int64)
        if cfg.sample == "frames":
            return n.copy(), n
        if cfg.sample == "segments":
            ones = (n > 0).astype(np.int64)
            return ones, ones
        if cfg.fps is None:
            return np.maximum(n - (cfg.clip_len - 1) * cfg.frame_stride, 0), n
        m = np.array(
            [_fps_starts(i.pts_seconds, cfg.clip_len, cfg.fps) if i is not None else 0 for i in self._infos], dtype=np.int64
        )
        return m, m

    def _output_size(self) -> tuple[int, int]:
        if self.config.size is not None:
            return self.config.size
        dims = {i.size(self.config.orientation) for i, c in zip(self._infos, self._counts) if i is not None and c > 0}
        if len(dims) != 1:
            raise ConfigError(f"size=None needs every video to have the same size; found {len(dims)} sizes: pass size=(h, w)")
        return dims.pop()

    def _start_resources(self) -> None:
        import torch

        from ._ring import Ring, RingLayout
        from ._scheduler import Scheduler, SchedulerOptions
        from ._transfer import make_transfer

        cfg = self.config
        T = cfg.frames_per_sample
        h, w = self._size
        batch_bytes = cfg.batch_size * T * h * w * 3
        workers = cfg.num_workers
        if workers is None:
            workers = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self._num_workers = workers
        prefetch = cfg.prefetch_batches
        if prefetch is None:
            fit = max(2, _RING_BUDGET_BYTES // batch_bytes)
            want = 8
            if cfg.sampling == "bounded":
                # Room for whole chunks plus work for every decoder: each chunk decodes once.
                want = max(want, self._plan().chunk_window + 2 * max(1, workers))
            prefetch = int(min(want, fit))
        layout = RingLayout(prefetch + 1, (cfg.batch_size, T, h, w, 3))
        _check_ring_fits(layout, f"{layout.num_slots} slots of {cfg.batch_size} x {T} frames of {h}x{w}")
        ring = sched = transfer = None
        try:
            try:
                ring = Ring(layout)
            except OSError as exc:
                raise ConfigError(
                    f"cannot allocate the ring: {layout.nbytes / 2**20:.0f} MiB of shared memory "
                    f"({layout.num_slots} slots of {cfg.batch_size} x {T} frames of {h}x{w}): {exc.strerror or exc}. "
                    "Lower prefetch_batches or batch_size, or give /dev/shm more room (docker: --shm-size)"
                ) from None
            transfer = make_transfer(cfg.device)
            self._slot_tensors = [torch.from_numpy(ring.slots[i]) for i in range(layout.num_slots)]
            transfer.register(self._slot_tensors)
            sched = Scheduler(
                ring=ring, num_workers=workers, paths=self._paths, infos=self._infos, size=(h, w),
                on_error=cfg.on_error,
                options=SchedulerOptions(task_timeout_s=cfg.task_timeout_s, orientation=cfg.orientation),
            )
            sched.start()
        except BaseException:
            _release(sched, transfer, ring, os.getpid())
            raise
        self._ring, self._sched, self._transfer = ring, sched, transfer
        self._finalizer = weakref.finalize(self, _release, sched, transfer, ring, self._owner_pid)

    def _make_settings(self) -> dict:
        """What decides the batches (the resume check): every setting but the resources, plus the data."""
        cfg = self.config
        keep = {
            f.name: getattr(cfg, f.name)
            for f in dataclasses.fields(cfg)
            if f.name not in ("num_workers", "prefetch_batches", "device", "timeout_s", "task_timeout_s", "rank", "world_size")
        }
        keep.update(
            rank=self._rank, world_size=self._world, size=self._size, num_videos=len(self._paths),
            paths=_digest(self._paths), lengths=_digest(self._plan_lengths.tolist()),
        )
        return json.loads(json.dumps(keep, default=str))

    # ------------------------------------------------------------------ epochs

    def _plan(self):
        if self._plan_cache is not None and self._plan_cache[0] == self._epoch:
            return self._plan_cache[1]
        from .plan import plan_epoch

        cfg = self.config
        clips_native = cfg.sample == "clips" and cfg.fps is None
        plan = plan_epoch(
            self._plan_lengths,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            epoch=self._epoch,
            mode=cfg.sampling,
            clip_len=cfg.clip_len if clips_native else 1,
            frame_stride=cfg.frame_stride if clips_native else 1,
            chunk_len=self._chunk_len,
            max_per_chunk=cfg.max_per_chunk,
            rank=self._rank,
            world_size=self._world,
            drop_last=bool(cfg.drop_last),
        )
        self._plan_cache = (self._epoch, plan)
        return plan

    def __len__(self) -> int:
        return len(self._plan())

    @property
    def epoch(self) -> int:
        """The epoch of the current or last pass (or of the pass a restored state resumes)."""
        return self._epoch

    @property
    def paths(self) -> list[str]:
        """Absolute path of every video, in source order (``Batch.video_index`` indexes it)."""
        return list(self._paths)

    @property
    def num_videos(self) -> int:
        return len(self._paths)

    @property
    def classes(self) -> list[str] | None:
        """Class names in id order (manifests with named labels), else None."""
        names = self.source.class_names
        return list(names) if names is not None else None

    @property
    def num_classes(self) -> int:
        """Number of classes (0 without labels)."""
        labels = self.source.labels
        if labels is None:
            return 0
        if self.source.class_names is not None:
            return len(self.source.class_names)
        return int(labels.shape[1]) if labels.ndim == 2 else int(labels.max()) + 1 if len(labels) else 0

    def set_epoch(self, epoch: int) -> None:
        """Make every following pass epoch ``epoch`` (like DistributedSampler.set_epoch).

        After ``load_state_dict``, setting the saved epoch keeps the saved position."""
        if not _is_int(epoch) or not 0 <= epoch <= _MAX_EPOCH:
            raise ConfigError(f"set_epoch({epoch!r}): pass an int in [0, {_MAX_EPOCH}]")
        epoch = int(epoch)
        if not (self._resume and epoch == self._epoch):
            self._resume = False
            self._epoch = epoch
            self._next_batch = 0
        self._pinned = epoch

    def __iter__(self):
        """A fresh, whole pass: the pinned epoch, else the next one (epoch 0 first); after
        ``load_state_dict``, the rest of the saved pass."""
        self._check_open()
        if self._resume:
            first = self._next_batch
        else:
            if self._pinned is not None:
                self._epoch = self._pinned
            elif self._passes:
                self._epoch += 1
            first = 0
        self._resume = False
        self._passes += 1
        plan = self._plan()
        n = len(plan)
        self._next_batch = first
        sampler = _Sampler(self.config, self._infos, self._counts, plan, self._epoch)
        gen = self._gen = self._sched.start_epoch(sampler, first, n)
        return self._batches(gen, first, n)

    def _batches(self, gen: int, first: int, n: int):
        for k in range(first, n):
            if gen != self._gen:
                raise LoaderStateError(
                    "this iterator was superseded: iter(loader) was called again, which starts a new pass. "
                    "The loader serves one pass at a time: keep using the newest iterator"
                )
            batch = self._fetch(gen, k)
            self._next_batch = k + 1
            yield batch

    def _fetch(self, gen: int, k: int) -> Batch:
        import torch

        self._check_open()
        cfg = self.config
        t0 = time.perf_counter()
        if self._t_first is None:
            self._t_first = t0
        deadline = t0 + cfg.timeout_s
        while True:
            for slot in self._transfer.reclaim(0.0):
                self._sched.release(slot)
            # Slots still being copied to a device come back through reclaim(): look again soon.
            step = 0.01 if self._transfer.in_flight() else 0.5
            try:
                done = self._sched.wait(gen, k, min(step, max(0.0, deadline - time.perf_counter())))
                break
            except VideoError as exc:
                raise _with_hint(exc) from None
            except concurrent.futures.CancelledError:
                if self._closed:
                    raise LoaderStateError(
                        f"the loader was closed (close() was called, perhaps from another thread) while batch {k} "
                        f"of epoch {self._epoch} was awaited"
                    ) from None
                raise
            except concurrent.futures.TimeoutError:
                if time.perf_counter() >= deadline:
                    raise LoaderTimeoutError(
                        f"batch {k} of epoch {self._epoch} was not ready after timeout_s={cfg.timeout_s:g} s "
                        f"(decoders: {self._sched.snapshot()['decoders']}); raise timeout_s for very slow files"
                    ) from None
        t1 = time.perf_counter()
        n = len(done.video)
        view = self._slot_tensors[done.slot][:n]
        if cfg.sample == "frames":
            view = view[:, 0].permute(0, 3, 1, 2)
        else:
            view = view.permute(0, 1, 4, 2, 3)
        frames = self._transfer.submit(done.slot, view)
        for slot in self._transfer.reclaim(0.0):
            self._sched.release(slot)
        pts = np.empty(done.frames.shape, dtype=np.float64)
        for i, v in enumerate(done.video.tolist()):
            pts[i] = self._infos[v].pts_seconds[done.frames[i]]
        frame_index = done.frames[:, 0] if cfg.sample == "frames" else done.frames
        if cfg.sample == "frames":
            pts = pts[:, 0]
        labels = None
        if self.source.labels is not None:
            labels = torch.from_numpy(np.ascontiguousarray(self.source.labels[done.video]))
        c = self._counters
        c["batches"] += 1
        c["samples"] += n
        c["frames"] += int(done.frames.size)
        c["wait_s"] += t1 - t0
        c["busy_s"] = time.perf_counter() - self._t_first
        return Batch(
            frames=frames,
            video_index=torch.from_numpy(done.video.copy()),
            frame_index=torch.from_numpy(np.ascontiguousarray(frame_index)),
            pts_seconds=torch.from_numpy(np.ascontiguousarray(pts)),
            labels=labels,
            _paths=self._paths,
        )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Where the loader stands: batch ``next_batch`` of ``epoch`` comes next (``load_state_dict``)."""
        return {
            "version": _STATE_VERSION,
            "seed": self.config.seed,
            "epoch": self._epoch,
            "next_batch": self._next_batch,
            "pinned_epoch": self._pinned,
            "fingerprint": self._fingerprint,
            "settings": self._settings,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next pass yields exactly the rest of the saved pass (a state saved
        after a whole pass resumes with the pass that would have followed)."""
        try:
            version = state["version"]
            epoch, nxt, pinned, fp = (state[k] for k in ("epoch", "next_batch", "pinned_epoch", "fingerprint"))
        except (KeyError, TypeError):
            raise ConfigError("load_state_dict: pass a dict made by VideoLoader.state_dict()") from None
        if version != _STATE_VERSION:
            raise ConfigError(
                f"load_state_dict: state version {version} is not supported (this ringload writes and reads "
                f"version {_STATE_VERSION}); it was saved by another ringload version"
            )
        if fp != self._fingerprint:
            saved = state.get("settings") or {}
            diff = [
                f"{k}: saved {saved.get(k)!r}, this loader {v!r}" for k, v in self._settings.items() if saved.get(k) != v
            ]
            raise ConfigError(
                "load_state_dict: the state was saved by a loader with other settings or data ("
                + ("; ".join(diff) or "unknown differences")
                + "); build the loader with the same arguments and videos"
            )
        if not (_is_int(epoch) and _is_int(nxt) and 0 <= epoch <= _MAX_EPOCH and nxt >= 0):
            raise ConfigError("load_state_dict: the state's epoch or next_batch is invalid")
        self._epoch, self._next_batch = int(epoch), int(nxt)
        self._pinned = int(pinned) if pinned is not None else None
        self._passes = 1
        # A pass that had ended resumes as the pass that follows it.
        self._resume = self._next_batch < len(self._plan())

    # ------------------------------------------------------------------ reporting and teardown

    def stats(self) -> dict:
        """Counters since the loader was built.

        ``batches``, ``samples``, ``frames`` delivered; ``seconds`` since the first request
        and ``images_per_s``/``samples_per_s`` over it; ``wait_s`` the consumer spent waiting;
        ``ring_bytes`` = ``num_slots`` x ``slot_bytes`` (all the shared memory there is);
        ``ready_batches`` decoded and waiting in the ring;
        ``num_workers``, ``decoder_pids``; ``decoded_frames`` (frames the decoders produced,
        including those walked from a keyframe) and ``tasks``; ``decoder_busy_s`` and
        ``decoder_idle_s`` summed over decoders; ``decoder_restarts`` (deaths and kills)
        and ``hung_decoders_killed``; ``failed_samples``, ``replaced_samples`` and
        ``quarantined`` ({path: reason}) for bad files; ``sampling``, and the ``chunk_len`` and
        ``max_per_chunk`` in use (bounded mode, else None).
        """
        snap = self._sched.snapshot() if not self._closed else {"counters": {}, "quarantined": {}, "decoders": []}
        sc = snap["counters"]
        c = dict(self._counters)
        busy = c.pop("busy_s")
        q = dict(self._quarantined)
        q.update(snap["quarantined"])
        layout = self._ring.layout if not self._closed else None
        plan = self._plan() if not self._closed else None
        return {
            **c,
            "seconds": busy,
            "images_per_s": c["frames"] / busy if busy > 0 else 0.0,
            "samples_per_s": c["samples"] / busy if busy > 0 else 0.0,
            "ring_bytes": layout.nbytes if layout else 0,
            "num_slots": layout.num_slots if layout else 0,
            "ready_batches": snap.get("ready_batches", 0),
            "slot_bytes": layout.slot_stride if layout else 0,
            "num_workers": self._num_workers,
            "decoder_pids": snap.get("decoder_pids", []),
            "decoder_restarts": sc.get("decoder_restarts", 0),
            "hung_decoders_killed": sc.get("hung_decoders_killed", 0),
            "decoded_frames": sc.get("decoded_frames", 0),
            "decoder_busy_s": sc.get("decoder_busy_s", 0.0),
            "decoder_idle_s": sc.get("decoder_idle_s", 0.0),
            "tasks": sc.get("tasks", 0),
            "failed_samples": sc.get("failed_samples", 0),
            "replaced_samples": sc.get("replaced_samples", 0),
            "quarantined": q,
            "sampling": self.config.sampling,
            "chunk_len": plan.chunk_len if plan is not None and self.config.sampling == "bounded" else None,
            "max_per_chunk": plan.max_per_chunk if plan is not None and self.config.sampling == "bounded" else None,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise LoaderStateError("this VideoLoader is closed; build a new one")
        if os.getpid() != self._owner_pid:
            raise LoaderStateError(
                f"this VideoLoader belongs to process {self._owner_pid}; a process made by fork() cannot use it: "
                "build a new VideoLoader in the child (or start the child with the 'spawn' method)"
            )

    def close(self) -> None:
        """Stop the decoders and free the ring (idempotent; also runs when the loader is collected)."""
        if self._closed:
            return
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()
        self._slot_tensors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"VideoLoader({len(self._paths)} videos, sample={c.sample!r}, sampling={c.sampling!r}, "
            f"batch_size={c.batch_size}, size={self._size}, epoch={self._epoch}, rank={self._rank}/{self._world})"
        )


_STATE_VERSION = 2
_MAIN_GUARD_HELP = (
    "Decoders are spawned processes that import your main module; a script that builds a VideoLoader "
    "at module level builds it again in every decoder. Build the loader (and train) under "
    "`if __name__ == \"__main__\":`, e.g.\n\n    def main():\n        loader = VideoLoader(...)\n"
    "        for batch in loader: ...\n\n    if __name__ == \"__main__\":\n        main()"
)


def _refuse_in_a_spawned_import() -> None:
    """In a process spawned by multiprocessing that is still importing the parent's main
    module, building a loader means the script lacks its main guard: say so in one line and
    exit with a code the parent recognises, instead of multiprocessing's long traceback."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        log.critical("ringload: a VideoLoader was built while a spawned process imported __main__ (missing main guard)")
        from ._pool import MAIN_GUARD_EXIT

        os._exit(MAIN_GUARD_EXIT)


def _with_hint(exc: VideoError) -> VideoError:
    """The same error, telling an ``on_error="raise"`` user how to go on."""
    hint = "pass on_error='skip' to quarantine bad files and go on; `ringload index SOURCE` lists every bad file at once"
    if exc.hint:
        hint = f"{exc.hint}; {hint}"
    try:
        return type(exc)(exc.path, exc.reason, hint=hint)
    except TypeError:  # a subclass with another signature
        return exc


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_ring_fits(layout, what: str) -> None:
    """Refuse, before reserving anything, a ring that /dev/shm or the machine's memory cannot hold."""
    need = layout.nbytes
    fix = "lower prefetch_batches (or batch_size, or size)"
    avail = _mem_available_bytes()
    if avail is not None and need > avail // 2:
        raise ConfigError(
            f"the ring needs {need / 2**30:.2f} GiB of shared memory ({what}), more than half of the "
            f"{avail / 2**30:.2f} GiB of available memory: {fix}"
        )
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise ConfigError(
            f"the ring needs {need / 2**30:.2f} GiB of shared memory ({what}) and /dev/shm has "
            f"{free / 2**30:.2f} GiB free: {fix}, or give /dev/shm more room (docker: --shm-size)"
        )


def _release(sched, transfer, ring, owner_pid: int) -> None:
    """Teardown shared by close() and the finalizer: it must not reference the loader."""
    if os.getpid() != owner_pid:
        return  # a forked child exiting: decoders, ring and device state are the parent's
    for obj in (sched, transfer, ring):
        if obj is None:
            continue
        try:
            obj.close()
        except Exception:  # teardown goes on: the other resources must still be freed
            log.warning("error while closing %r", obj, exc_info=True)
