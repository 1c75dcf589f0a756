"""What one ``ringload bench`` run does: the dataset it generates and the measurement settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from ..errors import ConfigError
from .contenders import PEER_KINDS

#: Contenders in the order they run in each round by default.
DEFAULT_CONTENDERS = (
    "starter",
    "ceiling",
    "sequential",
    "strict",
    "bounded",
    "torchcodec-exact",
    "torchcodec-approx",
    "decord",
    "spdl",
)
ALL_CONTENDERS = DEFAULT_CONTENDERS
#: The contenders that run in the peer interpreter (``--peer-python``).
PEER_CONTENDERS = PEER_KINDS
SWEEPS = ("none", "chunks", "gop", "resolution")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A generated dataset: ``distinct`` synthetic videos visible under ``names`` file names."""

    width: int = 1920
    height: int = 1080
    fps: int = 30
    seconds: float = 20.0
    gop: int = 30
    bframes: int = 2
    codec: str = "h264"
    distinct: int = 1
    names: int = 200

    def __post_init__(self):
        # 20 and 20.0 are the same dataset (the cache key is built from these fields).
        object.__setattr__(self, "seconds", float(self.seconds))
        if self.distinct < 1:
            raise ConfigError(f"--videos={self.distinct}: need at least one distinct video")
        if self.names < self.distinct:
            raise ConfigError(f"--names={self.names} must be >= --videos={self.distinct}")
        if self.width % 2 or self.height % 2:
            raise ConfigError(f"--resolution {self.width}x{self.height}: width and height must be even")

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Everything one ``ringload bench`` run does; validated on construction.

    The run measures every contender once per round, in the same order each round
    (A B C, A B C, ...), each time in a fresh process tree. In one round a contender gets
    a warm-up and ``repeats`` timed windows of at least ``window_s`` seconds (or of
    ``batches`` batches), within ``budget_s`` seconds from its first batch.
    """

    dataset: DatasetSpec = DatasetSpec()
    source: str | None = None
    data_dir: str | None = None
    contenders: tuple[str, ...] = DEFAULT_CONTENDERS
    batch_size: int = 128
    size: int = 224
    workers: int = 0  # 0: os.cpu_count()
    clip_len: int = 1
    frame_stride: int = 1
    clips_per_video: int | None = None  # ringload: k clips per video per epoch; starter: k random clips per video
    rounds: int = 3
    warmup_batches: int = 2
    repeats: int = 1  # timed windows per contender per round
    window_s: float = 6.0
    batches: int | None = None  # fixed batches per timed window (else time-based windows)
    budget_s: float = 60.0  # per contender per round, from its first batch
    chunk_lens: tuple[int, ...] = ()
    max_per_chunks: tuple[int, ...] = ()
    sweep: str = "none"
    rho: float = 0.5
    ring_bytes: int | None = None  # the ringload contenders' ring_bytes (None: the loader's default)
    decoder_threads: tuple[int, ...] = ()  # each ringload contender once per value (0: FFmpeg's auto)
    seed: int = 0
    peer_python: str | None = None  # the interpreter the peers run in; None: peers skipped

    def __post_init__(self):
        unknown = [c for c in self.contenders if c not in ALL_CONTENDERS]
        if unknown:
            raise ConfigError(f"--contenders: unknown {unknown}; choose from {', '.join(ALL_CONTENDERS)}")
        if self.sweep not in SWEEPS:
            raise ConfigError(f"--sweep={self.sweep!r}: choose one of {', '.join(SWEEPS)}")
        for name in ("batch_size", "size", "rounds", "repeats", "clip_len", "frame_stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)}: must be >= 1")
        if self.warmup_batches < 1:
            raise ConfigError("--warmup: must be >= 1 (the first batch is always warm-up)")
        if self.batches is not None and self.batches < 1:
            raise ConfigError(f"--batches={self.batches}: must be >= 1")
        if not self.budget_s > 0:
            raise ConfigError(f"--budget-s={self.budget_s}: must be > 0")
        if self.clips_per_video is not None and (self.clips_per_video < 1 or self.clip_len < 2):
            raise ConfigError(f"--clips-per-video={self.clips_per_video}: needs a value >= 1 and --clip-len >= 2")
        if self.ring_bytes is not None and self.ring_bytes < 1 << 20:
            raise ConfigError(f"--ring-bytes={self.ring_bytes}: at least 1M (e.g. 4G)")
        if any(t < 0 for t in self.decoder_threads):
            raise ConfigError(f"--decoder-threads={self.decoder_threads}: counts >= 0 (0: FFmpeg chooses)")
        if not 0.0 <= self.rho <= 1.0:
            raise ConfigError(f"--rho={self.rho}: a correlation in [0, 1]")
        if self.peer_python is not None and not (
            os.path.isfile(self.peer_python) and os.access(self.peer_python, os.X_OK)
        ):
            raise ConfigError(f"--peer-python={self.peer_python}: not an executable file "
                              "(bash bench/peers_env.sh builds one: <venv>/bin/python)")  # fmt: skip

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


def quick_config(**overrides) -> BenchConfig:
    """The ``--quick`` settings: 480p data, 3 rounds of one 2 s window per contender."""
    base = dict(
        # 20 s like the default run: with 8 s videos most bounded chunks are cut short by
        # the video's ends, which the default data does not show.
        dataset=DatasetSpec(width=854, height=480, seconds=20.0),
        warmup_batches=1,
        rounds=3,
        repeats=1,
        window_s=2.0,
        budget_s=20.0,
    )
    base.update(overrides)
    return BenchConfig(**base)


def kinetics_config(**overrides) -> BenchConfig:
    """The ``--kinetics`` workload: many short 340p videos, one random 16-frame clip per video
    per epoch (Kinetics-style training), against the starter-style per-clip Dataset."""
    base = dict(
        # 2000 names over 20 distinct contents: the harness's convention (generation cost),
        # the loader treats every name as its own video.
        dataset=DatasetSpec(width=604, height=340, seconds=10.0, distinct=20, names=2000),
        contenders=("starter", "strict", "bounded"),
        batch_size=16,
        clip_len=16,
        clips_per_video=1,
        rounds=3,
        window_s=4.0,
        budget_s=40.0,
    )
    base.update(overrides)
    return BenchConfig(**base)


def smoke_config(**overrides) -> BenchConfig:
    """The ``--smoke`` settings: tiny data, 2 rounds of 2 batches of 16 per contender.

    It checks that every contender runs and that the result file and plots are written
    (a CI test does so from a fresh install); its numbers say nothing about speed.
    """
    base = dict(
        dataset=DatasetSpec(width=320, height=240, seconds=3.0, names=12),
        batch_size=16,
        warmup_batches=1,
        rounds=2,
        repeats=1,
        batches=2,
        budget_s=30.0,
    )
    base.update(overrides)
    return BenchConfig(**base)
