"""``LoaderConfig``: every setting of a ``VideoLoader``, validated when it is made."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .errors import ConfigError

SAMPLES = ("frames", "clips", "segments")
CROPS = ("random_resized", "center", "three", "none")
SAMPLINGS = ("bounded", "strict", "sequential")
ON_ERROR = ("raise", "skip")
ORIENTATIONS = ("display", "coded")
#: What a video shorter than one sample gets. "repeat_last" (the default) clamps frame
#: indices to the last frame, as SlowFast's and PyTorchVideo's samplers do: the video keeps
#: its samples (a class cannot vanish) and no motion is invented; "wrap" starts the video
#: over (mmaction2's "loop", a jump cut a temporal model sees); "skip" never samples it;
#: "error" refuses the dataset.
SHORT_VIDEOS = ("repeat_last", "wrap", "skip", "error")

_MAX_SEED = 2**64 - 1
_MAX_EPOCH = 2**32 - 1


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



def check_weighted(name: str, cfg) -> None:
    """A ConfigError naming ``name`` (weights or balance) where the settings cannot weigh videos."""
    if cfg.sample == "segments":
        raise ConfigError(f"{name} with sample='segments' is not supported yet: use sample='clips' with clips_per_video")
    if cfg.clips_per_video is None:
        raise ConfigError(
            f"{name} weigh videos, and the unit of a weighted epoch is a video's clip: pass clips_per_video "
            "(clips_per_video=1: one sample per video per epoch on average, times its repeat factor)"
        )
    if cfg.sampling == "sequential":
        raise ConfigError(f"{name} apply to sampling='strict' or 'bounded'; sequential (evaluation) visits every video alike")


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
    min_effective_batch: int | None = None
    clips_per_video: int | None = None
    balance: str | None = None
    balance_threshold: float | None = None
    balance_power: float | None = None
    short_video: str = "repeat_last"
    seed: int = 0
    num_workers: int | None = None
    decoder_threads: int | None = None
    prefetch_batches: int | None = None
    ring_bytes: int | None = None
    device: str = "cpu"
    drop_last: bool = False
    rank: int | None = None
    world_size: int | None = None
    on_error: str = "raise"
    timeout_s: float = 300.0
    task_timeout_s: float = 60.0
    remote_cache_bytes: int = 256 << 20
    remote_retries: int = 3
    remote_timeout_s: float = 30.0

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
        need_int("min_effective_batch", 1, none_ok=True, high=self.batch_size)
        if self.min_effective_batch is not None and self.max_per_chunk is not None:
            raise ConfigError(
                f"min_effective_batch={self.min_effective_batch} and max_per_chunk={self.max_per_chunk} both set: "
                "min_effective_batch chooses max_per_chunk (batch_size // min_effective_batch); pass one of them"
            )
        from ._pervideo import MAX_CLIPS_PER_VIDEO

        need_int("clips_per_video", 1, none_ok=True, high=MAX_CLIPS_PER_VIDEO)
        need_int("num_workers", 0, none_ok=True)
        need_int("prefetch_batches", 1, none_ok=True)
        need_int("decoder_threads", 0, none_ok=True)
        need_int("ring_bytes", 1, none_ok=True)
        if self.prefetch_batches is not None and self.ring_bytes is not None:
            raise ConfigError(
                f"prefetch_batches={self.prefetch_batches} and ring_bytes={self.ring_bytes} both size the ring: pass one"
            )
        need_int("rank", 0, none_ok=True)
        need_int("world_size", 1, none_ok=True)
        for name, allowed in (("sample", SAMPLES), ("crop", CROPS), ("sampling", SAMPLINGS), ("on_error", ON_ERROR),
                              ("orientation", ORIENTATIONS), ("short_video", SHORT_VIDEOS)):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: pass one of {', '.join(map(repr, allowed))}")
        if self.size is not None:
            object.__setattr__(self, "size", _pair("size", self.size, positive_ints=True))
        elif self.crop != "none":
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
        if self.crop == "three" and (self.sampling != "sequential" or self.clips_per_video is None):
            raise ConfigError(
                f"crop='three' makes evaluation views: pass sampling='sequential' (got {self.sampling!r}) and "
                f"clips_per_video (got {self.clips_per_video!r}), e.g. clips_per_video=10 for 10 clips x 3 crops"
            )
        if self.sample == "segments" and self.clips_per_video is not None:
            raise ConfigError(
                f"clips_per_video={self.clips_per_video} does not apply to sample='segments': segments are already "
                "one sample per video and epoch"
            )
        from ._weights import check_balance

        check_balance(self.balance, self.balance_threshold, self.balance_power)
        if self.balance is not None:
            check_weighted("balance", self)
        if self.sample == "frames" and (self.clip_len != 1 or self.frame_stride != 1):
            raise ConfigError("clip_len/frame_stride apply to sample='clips'; with sample='frames' leave them at 1")
        if (self.rank is None) != (self.world_size is None):
            raise ConfigError("pass rank and world_size together (or neither, to take them from torch.distributed)")
        if self.rank is not None and self.rank >= self.world_size:
            raise ConfigError(f"rank={self.rank} must be < world_size={self.world_size}")
        need_int("remote_cache_bytes", 0)
        need_int("remote_retries", 0, high=100)
        for name in ("timeout_s", "task_timeout_s", "remote_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"{name}={v!r}: pass a positive number of seconds")
        dev = str(self.device)
        if not (dev == "cpu" or dev.startswith("cuda")):
            raise ConfigError(f"device={self.device!r}: pass 'cpu' or a CUDA device such as 'cuda' or 'cuda:0'")

    @property
    def views_per_clip(self) -> int:
        """Spatial views of each clip: 3 for crop="three", else 1."""
        return 3 if self.crop == "three" else 1

    @property
    def frames_per_sample(self) -> int:
        if self.sample == "frames":
            return 1
        if self.sample == "clips":
            return self.clip_len
        return self.num_segments

