"""The benchmark harness behind ``ringload bench``.

One run prepares a dataset (generated with :mod:`ringload.synth`, or an existing source),
then runs each *contender* one after another on the same files, each in a fresh process
tree so that its CPU time, memory and start-up are its own:

- ``starter``: the robotics exercise's loader (``bench/starter.py``), the baseline;
- ``ceiling``: plain PyAV, every frame in file order, decoded and converted to the output
  size by spawned processes into shared memory (the decode ceiling without ringload);
- ``strict``, ``bounded``, ``sequential``: :class:`ringload.VideoLoader` in each sampling
  mode, plus a sweep over ``chunk_len`` and ``max_per_chunk`` for bounded;
- ``torchcodec-exact``, ``torchcodec-approx``, ``decord``: peers, when they import.

Per contender it measures images/s (median over timed windows after a warm-up), CPU
seconds per image (all processes of the contender, from ``/proc``), the consumer's wait per
batch (p50/p95/p99), time to first batch, peak RSS and PSS summed over the processes,
shared-memory bytes, and for bounded modes the design-effect bound. Results go to a JSON
file with system metadata; ``bench/plot.py`` turns that file into PNG plots.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib
import importlib.util
import json
import logging
import math
import os
import pathlib
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA = "ringload-bench/1"
_REPO = pathlib.Path(__file__).resolve().parent.parent
_BENCH_DIR = _REPO / "bench"
_PROTO = "@@ringload-bench "

#: Contenders in the order they run by default.
DEFAULT_CONTENDERS = (
    "starter",
    "ceiling",
    "sequential",
    "strict",
    "bounded",
    "torchcodec-exact",
    "torchcodec-approx",
    "decord",
)
ALL_CONTENDERS = DEFAULT_CONTENDERS
SWEEPS = ("none", "chunks", "gop", "resolution")


# --- configuration ----------------------------------------------------------------------------


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
    """Everything one ``ringload bench`` run does; validated on construction."""

    dataset: DatasetSpec = DatasetSpec()
    source: str | None = None
    data_dir: str | None = None
    contenders: tuple[str, ...] = DEFAULT_CONTENDERS
    batch_size: int = 128
    size: int = 224
    workers: int = 0  # 0: os.cpu_count()
    clip_len: int = 1
    frame_stride: int = 1
    warmup_batches: int = 2
    repeats: int = 3
    window_s: float = 6.0
    batches: int | None = None  # fixed batches per timed window (else time-based windows)
    budget_s: float = 150.0  # per contender, warm-up included
    chunk_lens: tuple[int, ...] = ()
    max_per_chunks: tuple[int, ...] = ()
    sweep: str = "none"
    rho: float = 0.5
    seed: int = 0

    def __post_init__(self):
        unknown = [c for c in self.contenders if c not in ALL_CONTENDERS]
        if unknown:
            raise ConfigError(f"--contenders: unknown {unknown}; choose from {', '.join(ALL_CONTENDERS)}")
        if self.sweep not in SWEEPS:
            raise ConfigError(f"--sweep={self.sweep!r}: choose one of {', '.join(SWEEPS)}")
        for name in ("batch_size", "size", "repeats", "clip_len", "frame_stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)}: must be >= 1")
        if self.warmup_batches < 1:
            raise ConfigError("--warmup: must be >= 1 (the first batch is always warm-up)")
        if self.batches is not None and self.batches < 1:
            raise ConfigError(f"--batches={self.batches}: must be >= 1")
        if not self.budget_s > 0:
            raise ConfigError(f"--budget-s={self.budget_s}: must be > 0")
        if not 0.0 <= self.rho <= 1.0:
            raise ConfigError(f"--rho={self.rho}: a correlation in [0, 1]")

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


def quick_config(**overrides) -> BenchConfig:
    """The ``--quick`` settings: small data, short windows; finishes in under 3 minutes."""
    base = dict(
        # 20 s like the default run: with 8 s videos most bounded chunks are cut short by
        # the video's ends, which the default data does not show.
        dataset=DatasetSpec(width=854, height=480, seconds=20.0),
        warmup_batches=1,
        repeats=2,
        window_s=2.0,
        budget_s=30.0,
    )
    base.update(overrides)
    return BenchConfig(**base)


# --- dataset ----------------------------------------------------------------------------------


def default_data_dir() -> pathlib.Path:
    return pathlib.Path(tempfile.gettempdir()) / "ringload-bench"


def prepare_dataset(spec: DatasetSpec, *, data_dir=None, seed: int = 0, progress=None) -> list[str]:
    """Generate (or reuse) ``spec`` under ``data_dir`` and return the ``names`` paths."""
    from .synth import make_video

    root = pathlib.Path(data_dir or default_data_dir()) / f"{spec.codec}-{spec.height}p-g{spec.gop}-{spec.key()}"
    videos = root / "videos"
    names = root / "names"
    videos.mkdir(parents=True, exist_ok=True)
    names.mkdir(parents=True, exist_ok=True)
    ext = ".webm" if spec.codec == "vp9" else ".mp4"
    distinct = []
    for v in range(spec.distinct):
        path = videos / f"cam_{v:04d}{ext}"
        if not path.exists():
            log.info("generating %s", path)
            if progress:
                progress(f"generating {path.name} ({spec.width}x{spec.height} {spec.codec}, {spec.seconds:g} s)")
            make_video(
                path,
                width=spec.width,
                height=spec.height,
                fps=spec.fps,
                seconds=spec.seconds,
                gop=spec.gop,
                bframes=spec.bframes,
                codec=spec.codec,
                seed=seed + v,
            )
        distinct.append(path)
    out = []
    for n in range(spec.names):
        link = names / f"video_{n:04d}{ext}"
        target = distinct[n % spec.distinct]
        if not link.is_symlink() or os.readlink(link) != str(target):
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        out.append(str(link))
    return out


def list_source(source: str) -> list[str]:
    """Video files of a directory (recursive), a glob, or a text file with one path a line."""
    import glob

    p = pathlib.Path(source)
    exts = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts"}
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in exts and f.is_file())
    elif p.is_file() and p.suffix.lower() in exts:
        files = [str(p)]
    elif p.is_file():
        files = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    else:
        files = sorted(glob.glob(source, recursive=True))
    if not files:
        raise ConfigError(f"SOURCE={source}: no video files found")
    return files


# --- system metadata --------------------------------------------------------------------------


def system_info() -> dict[str, Any]:
    """CPU, cores, RAM, load, versions and git commit, for the result file."""
    info: dict[str, Any] = {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_bytes": _meminfo("MemTotal"),
        "loadavg_start": list(os.getloadavg()),
        "gpu": _gpu_name(),
    }
    for mod in ("torch", "av", "numpy", "PIL", "uvloop", "posix_ipc", "torchcodec", "decord"):
        try:
            info[f"{mod}_version"] = importlib.import_module(mod).__version__
        except Exception:
            info[f"{mod}_version"] = None
    try:
        import av

        info["ffmpeg_libavcodec"] = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    except Exception:
        info["ffmpeg_libavcodec"] = None
    try:
        import ringload

        info["ringload_version"] = ringload.__version__
    except Exception:
        info["ringload_version"] = None
    info["git_commit"], info["git_dirty"] = _git_state()
    return info


def _cpu_model() -> str | None:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _meminfo(key: str) -> int | None:
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return None


def _git_state() -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=_REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return commit, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


# --- process-tree accounting (/proc) ------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root``'s live process tree, including reaped children."""
    ticks = 0
    for pid in tree_pids(root):
        f = _proc_stat(pid)
        if f:
            # fields after comm: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / _CLK_TCK


def tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over ``root``'s process tree."""
    rss = pss = 0
    for pid in tree_pids(root):
        try:
            rss += int(pathlib.Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
            for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
        except (OSError, IndexError, ValueError):
            continue
    return rss, pss


class _MemorySampler:
    """Samples the tree's summed RSS/PSS on a thread; keeps the peaks."""

    def __init__(self, root: int, interval_s: float = 0.25):
        self.root = root
        self.interval_s = interval_s
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-mem", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def sample(self):
        rss, pss = tree_memory(self.root)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.sample()


# --- contenders (run inside the child process) ------------------------------------------------


def _load_bench_module(name: str):
    path = _BENCH_DIR / f"{name}.py"
    if not path.exists():
        raise _Skip(f"{path} not found: run from a source checkout of ringload")
    spec = importlib.util.spec_from_file_location(f"_ringload_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Skip(Exception):
    """A contender cannot run here (not installed, not built yet); the note says why."""


class _Contender:
    """Wraps a loader: ``iterate()`` yields (B, C, H, W) tensors; ``close()``; ``info()``."""

    def __init__(self, loader, *, unwrap=None, info=None, buffered=None):
        self.loader = loader
        self.unwrap = unwrap or (lambda b: b)
        self._info = info or {}
        self._buffered = buffered

    def buffered_batches(self) -> int:
        """How many batches the loader can hold ready ahead of the consumer.

        Timing starts only after that many batches have been taken, or the first window
        would time a buffer that filled while the loader started, not steady-state work.
        """
        if callable(self._buffered):
            try:
                return int(self._buffered())
            except Exception:
                return 0
        return int(self._buffered or 0)

    def iterate(self):
        epoch = 0
        while True:
            produced = False
            for batch in self.loader:
                produced = True
                yield self.unwrap(batch)
            if not produced:
                raise RuntimeError("the loader produced no batch: the dataset is smaller than one batch")
            epoch += 1
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)

    def info(self) -> dict:
        out = dict(self._info)
        stats = getattr(self.loader, "stats", None)
        if callable(stats):
            try:
                out["loader_stats"] = _jsonable(stats())
            except Exception as exc:  # stats are a nice-to-have; never fail a run on them
                out["loader_stats_error"] = repr(exc)
        return out

    def close(self):
        close = getattr(self.loader, "close", None)
        if callable(close):
            close()


def _jsonable(obj, depth=0):
    if depth > 4:
        return repr(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in obj][:200]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    if dataclasses.is_dataclass(obj):
        return _jsonable(dataclasses.asdict(obj), depth + 1)
    try:
        return float(obj)
    except Exception:
        return repr(obj)


def _make_starter(spec, paths):
    starter = _load_bench_module("starter")
    import torch

    torch.manual_seed(spec["seed"])
    loader = starter.make_loader(paths, batch_size=spec["batch_size"], num_workers=spec["workers"])
    note = f"exercise loader, transforms: {starter.TRANSFORMS}; output float32 after ColorJitter"
    # Each worker builds one batch at a time; at the first batch the others are (nearly) done.
    buffered = spec["workers"]
    return _Contender(loader, info={"note": note, "shm_bytes": None}, buffered=buffered)


def _make_ringload(spec, paths, sampling):
    try:
        import ringload

        VideoLoader = ringload.VideoLoader
    except (AttributeError, ImportError) as exc:
        raise _Skip(f"ringload.VideoLoader is not available ({exc})") from None
    kwargs = dict(
        batch_size=spec["batch_size"],
        size=(spec["size"], spec["size"]),
        sampling=sampling,
        seed=spec["seed"],
        num_workers=spec["workers"],
    )
    if spec.get("clip_len", 1) > 1:
        kwargs.update(sample="clips", clip_len=spec["clip_len"], frame_stride=spec["frame_stride"])
    if sampling == "bounded":
        if spec.get("chunk_len"):
            kwargs["chunk_len"] = spec["chunk_len"]
        if spec.get("max_per_chunk"):
            kwargs["max_per_chunk"] = spec["max_per_chunk"]
    if sampling == "sequential":
        kwargs["crop"] = "none"
    loader = VideoLoader(paths, **kwargs)
    info = {"loader_kwargs": _jsonable(kwargs)}
    if sampling == "bounded":
        info["chunk_len"], info["max_per_chunk"] = _effective_bound(loader, kwargs)
    return _Contender(loader, unwrap=lambda b: b.frames, info=info, buffered=lambda: loader.stats()["num_slots"])


def _effective_bound(loader, kwargs):
    """The (chunk_len, max_per_chunk) the loader really uses (its config holds None for defaults)."""
    stats = loader.stats()
    return stats.get("chunk_len", kwargs.get("chunk_len")), stats.get("max_per_chunk", kwargs.get("max_per_chunk"))


def _make_ceiling(spec, paths):
    loader = _SequentialCeiling(paths, batch_size=spec["batch_size"], size=spec["size"], workers=spec["workers"])
    note = f"{spec['workers']} spawned processes, plain PyAV decode (1 thread each) + reformat to {spec['size']}px"
    return _Contender(loader, info={"note": note, "shm_bytes": loader.shm_bytes}, buffered=loader.buffered)


def _make_torchcodec(spec, paths, seek_mode):
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as exc:
        raise _Skip(f"torchcodec is not installed ({type(exc).__name__}); pip install torchcodec") from None
    return _peer_contender(spec, paths, "torchcodec", seek_mode)


def _make_decord(spec, paths):
    try:
        import decord  # noqa: F401
    except Exception as exc:
        raise _Skip(f"decord is not installed ({type(exc).__name__}); pip install decord") from None
    return _peer_contender(spec, paths, "decord", None)


def _peer_contender(spec, paths, library, seek_mode):
    import torch

    dataset = _PeerBatches(
        paths, library=library, seek_mode=seek_mode, batch_size=spec["batch_size"], size=spec["size"], seed=spec["seed"]
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=spec["workers"])
    note = f"{library}{' ' + seek_mode if seek_mode else ''}: uniform random frames, one batched read per video per batch"
    return _Contender(loader, info={"note": note, "shm_bytes": None}, buffered=spec["workers"])


def _random_resized_box(rng, width, height, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    return 0, 0, width, height


class _PeerBatches:
    """IterableDataset-like: endless batches of uniform random frames read with a peer library."""

    def __init__(self, paths, *, library, seek_mode, batch_size, size, seed):
        self.paths = list(paths)
        self.library = library
        self.seek_mode = seek_mode
        self.batch_size = batch_size
        self.size = size
        self.seed = seed

    def _decoder(self, cache, path):
        dec = cache.get(path)
        if dec is None:
            if self.library == "torchcodec":
                from torchcodec.decoders import VideoDecoder

                dec = VideoDecoder(path, seek_mode=self.seek_mode, num_ffmpeg_threads=1)
            else:
                import decord

                dec = decord.VideoReader(path, num_threads=1)
            cache[path] = dec
        return dec

    def _length(self, dec):
        if self.library == "torchcodec":
            return int(dec.metadata.num_frames)
        return len(dec)

    def __iter__(self):
        import numpy as np
        import torch
        import torch.nn.functional as F

        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        cache: dict = {}
        lengths = [self._length(self._decoder(cache, p)) for p in self.paths]
        cum = np.cumsum(lengths)
        while True:
            flat = rng.integers(0, int(cum[-1]), self.batch_size)
            vids = np.searchsorted(cum, flat, side="right")
            frames_idx = flat - np.concatenate([[0], cum[:-1]])[vids]
            out = torch.empty((self.batch_size, 3, self.size, self.size), dtype=torch.uint8)
            for v in np.unique(vids):
                pos = np.nonzero(vids == v)[0]
                idx = frames_idx[pos].tolist()
                dec = self._decoder(cache, self.paths[v])
                if self.library == "torchcodec":
                    data = dec.get_frames_at(indices=idx).data  # (N, C, H, W) uint8
                else:
                    data = torch.from_numpy(dec.get_batch(idx).asnumpy()).permute(0, 3, 1, 2)
                for j, p in enumerate(pos):
                    h, w = data.shape[-2:]
                    x, y, cw, ch = _random_resized_box(rng, w, h)
                    crop = data[j : j + 1, :, y : y + ch, x : x + cw].float()
                    out[p] = F.interpolate(crop, size=(self.size, self.size), mode="bilinear")[0].round().byte()
            yield out


class _SequentialCeiling:
    """Every frame in file order, decoded + resized by spawned processes into shared memory.

    Plain PyAV, no ringload: the speed a loader cannot beat on these files. Files are dealt
    to the workers round-robin; each worker fills whole batches in its own slots (two per
    worker, so decoding overlaps the consumer) and the consumer copies each batch out into a
    tensor it owns.
    """

    def __init__(self, paths, *, batch_size, size, workers, slots_per_worker=2, timeout_s=120.0):
        import torch
        import torch.multiprocessing as tmp

        self.batch_size = batch_size
        self.size = size
        self.timeout_s = timeout_s
        ctx = tmp.get_context("spawn")
        self._ready = ctx.Queue()
        self._free = []
        self._slots = []
        self._procs = []
        for w in range(workers):
            slots = [torch.empty((batch_size, size, size, 3), dtype=torch.uint8).share_memory_() for _ in range(slots_per_worker)]
            free = ctx.Queue()
            for s in range(slots_per_worker):
                free.put(s)
            mine = paths[w::workers] or paths
            proc = ctx.Process(
                target=_ceiling_worker, args=(w, mine, slots, self._ready, free, size), daemon=True, name=f"ceiling-{w}"
            )
            proc.start()
            self._slots.append(slots)
            self._free.append(free)
            self._procs.append(proc)
        self.shm_bytes = workers * slots_per_worker * batch_size * size * size * 3
        self.buffered = workers * slots_per_worker

    def __iter__(self):
        import torch

        while True:
            try:
                item = self._ready.get(timeout=self.timeout_s)
            except queue.Empty:
                raise TimeoutError(f"ceiling: no batch within {self.timeout_s} s") from None
            if isinstance(item, str):
                raise RuntimeError(f"ceiling worker failed: {item}")
            w, s = item
            batch = self._slots[w][s].permute(0, 3, 1, 2).contiguous()
            self._free[w].put(s)
            yield batch

    def close(self):
        for free in self._free:
            free.put(None)
        deadline = time.monotonic() + 10
        for p in self._procs:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


def _ceiling_worker(rank, paths, slots, ready, free, size):
    import av

    views = [s.numpy() for s in slots]
    try:
        slot = free.get(timeout=60)
        pos = 0
        i = 0
        while slot is not None:
            path = paths[i % len(paths)]
            i += 1
            with av.open(path) as container:
                stream = container.streams.video[0]
                stream.thread_count = 1
                for frame in container.decode(stream):
                    views[slot][pos] = frame.reformat(width=size, height=size, format="rgb24").to_ndarray()
                    pos += 1
                    if pos == len(views[slot]):
                        ready.put((rank, slot))
                        slot = free.get(timeout=600)
                        pos = 0
                        if slot is None:
                            break
    except Exception as exc:  # the consumer raises it; a worker has no one else to tell
        ready.put(f"{type(exc).__name__}: {exc}")


_FACTORIES = {
    "starter": _make_starter,
    "ceiling": _make_ceiling,
    "strict": lambda spec, paths: _make_ringload(spec, paths, "strict"),
    "bounded": lambda spec, paths: _make_ringload(spec, paths, "bounded"),
    "sequential": lambda spec, paths: _make_ringload(spec, paths, "sequential"),
    "torchcodec-exact": lambda spec, paths: _make_torchcodec(spec, paths, "exact"),
    "torchcodec-approx": lambda spec, paths: _make_torchcodec(spec, paths, "approximate"),
    "decord": _make_decord,
}


def _percentile(values, q):
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def measure(spec: dict, paths: list[str], emit=lambda msg: None) -> dict:
    """Run one contender in this process and return its measurements (see module docstring)."""
    kind = spec["kind"]
    me = os.getpid()
    result: dict[str, Any] = {"status": "ok"}
    t_start = time.perf_counter()
    with _MemorySampler(me) as mem:
        try:
            contender = _FACTORIES[kind](spec, paths)
        except _Skip as exc:
            return {"status": "skipped", "note": str(exc)}
        it = contender.iterate()
        try:
            waits: list[float] = []
            windows: list[float] = []
            images = 0
            cpu = 0.0
            batch = next(it)
            result["first_batch_s"] = time.perf_counter() - t_start
            result["output"] = {"shape": list(batch.shape), "dtype": str(batch.dtype).replace("torch.", "")}
            done = 1
            emit({"progress": done})
            # Warm-up: at least warmup_batches, and enough to drain what the loader buffered
            # while it started (else the first window times a full buffer), unless the
            # contender is so slow that a quarter of the budget passes first (then the
            # buffer is a small share of a window anyway).
            t_first = time.perf_counter()
            drain = contender.buffered_batches() + 1
            warm_deadline = t_first + 0.25 * spec["budget_s"]
            warmup = 1
            while warmup < spec["warmup_batches"] or (warmup < drain and time.perf_counter() < warm_deadline):
                next(it)
                warmup += 1
                done += 1
                emit({"progress": done})
            result["warmup_batches"] = warmup
            # Windows hold a multiple of the worker count (a DataLoader delivers its workers'
            # batches in bursts) and at least min_window_batches.
            step = max(1, spec["workers"])
            min_n = max(spec["min_window_batches"], step)
            min_n += (-min_n) % step
            # The budget runs from the first batch (start-up has the parent's timeout); past
            # it, one window is still measured.
            deadline = t_first + spec["budget_s"]
            for _ in range(spec["repeats"]):
                if windows and time.perf_counter() > deadline:
                    result["over_budget"] = True
                    break
                cpu0 = tree_cpu_seconds(me)
                t0 = time.perf_counter()
                n = 0
                while True:
                    ts = time.perf_counter()
                    b = next(it)
                    waits.append(time.perf_counter() - ts)
                    n += 1
                    done += 1
                    emit({"progress": done})
                    elapsed = time.perf_counter() - t0
                    if spec.get("batches"):
                        if n >= spec["batches"]:
                            break
                    elif n >= min_n and n % step == 0 and (
                        elapsed >= spec["window_s"] or time.perf_counter() > deadline
                    ):
                        break
                elapsed = time.perf_counter() - t0
                cpu += tree_cpu_seconds(me) - cpu0
                windows.append(n * b.shape[0] / elapsed)
                images += n * b.shape[0]
            result.update(contender.info())
            result["peak_rss_bytes_at_end"] = tree_memory(me)[0]
        finally:
            it.close()  # drops the loader's iterator (a DataLoader shuts its workers down)
            contender.close()
    windows_sorted = sorted(windows)
    result.update(
        images_per_s=_percentile(windows_sorted, 50),
        images_per_s_windows=windows,
        images_measured=images,
        cpu_s_per_image=cpu / images if images else None,
        wait_ms={f"p{q}": 1000 * _percentile(waits, q) for q in (50, 95, 99)},
        batches_measured=len(waits),
        peak_rss_bytes=mem.peak_rss,
        peak_pss_bytes=mem.peak_pss,
        wall_s=time.perf_counter() - t_start,
    )
    result.pop("peak_rss_bytes_at_end", None)
    stats = result.get("loader_stats") or {}
    if result.get("shm_bytes") is None and isinstance(stats, dict):
        for key in ("shm_bytes", "ring_bytes", "shared_memory_bytes"):
            if isinstance(stats.get(key), (int, float)):
                result["shm_bytes"] = int(stats[key])
                break
    return result


def _child_main() -> int:
    """``python -m ringload.bench``: read one contender spec on stdin, report on stdout."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = json.loads(sys.stdin.read())
    out = sys.stdout

    def emit(msg):
        out.write(_PROTO + json.dumps(msg) + "\n")
        out.flush()

    try:
        result = measure(spec, spec["paths"], emit)
    except Exception as exc:
        log.exception("contender %s failed", spec.get("name"))
        result = {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}
    emit({"result": result})
    return 0


# --- the parent: run contenders, collect, report ------------------------------------------------


def _run_child(spec: dict, *, timeout_s: float, on_progress=None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ringload.bench"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: a timeout can stop the whole tree
        )
        lines: queue.Queue = queue.Queue()

        def reader():
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        reader_thread = threading.Thread(target=reader, daemon=True, name="bench-child-reader")
        reader_thread.start()
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        deadline = time.monotonic() + timeout_s
        result = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill_group(proc)
                result = {"status": "failed", "note": f"timed out after {timeout_s:.0f} s"}
                break
            try:
                line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                break
            if not line.startswith(_PROTO):
                continue
            msg = json.loads(line[len(_PROTO) :])
            if "progress" in msg and on_progress:
                on_progress(msg["progress"])
            if "result" in msg:
                result = msg["result"]
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
        # Whatever the contender left behind (a stuck worker) goes with its process group.
        _kill_group(proc, quiet=True)
        reader_thread.join(timeout=10)
        proc.stdout.close()
        if result is None:
            err.seek(0)
            tail = err.read()[-1500:]
            result = {"status": "failed", "note": f"exit code {proc.returncode}; stderr: {tail.strip()}"}
        elif result.get("status") == "failed":
            err.seek(0)
            result["stderr_tail"] = err.read()[-1500:]
    return result


def _kill_group(proc, quiet=False):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if not quiet:
            log.debug("process group %d already gone", proc.pid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("contender process %d did not exit after SIGKILL", proc.pid)


def plan_runs(cfg: BenchConfig) -> list[dict]:
    """The contender specs of one run: (name, kind, dataset, settings), in run order."""
    runs = []
    base = {
        "batch_size": cfg.batch_size,
        "size": cfg.size,
        "workers": cfg.num_workers,
        "clip_len": cfg.clip_len,
        "frame_stride": cfg.frame_stride,
        "warmup_batches": cfg.warmup_batches,
        "repeats": cfg.repeats,
        "window_s": cfg.window_s,
        "min_window_batches": 2,
        "batches": cfg.batches,
        "budget_s": cfg.budget_s,
        "seed": cfg.seed,
    }
    if cfg.sweep in ("gop", "resolution"):
        if cfg.source:
            raise ConfigError("--sweep gop/resolution generates its own data; drop SOURCE")
        if cfg.sweep == "gop":
            variants = [dataclasses.replace(cfg.dataset, gop=g) for g in (10, 30, 120, 300)]
        else:
            variants = [dataclasses.replace(cfg.dataset, width=w, height=h) for w, h in ((854, 480), (1920, 1080))]
        for ds in variants:
            tag = f"gop{ds.gop}" if cfg.sweep == "gop" else f"{ds.height}p"
            for kind in ("ceiling", "strict", "bounded"):
                if kind in cfg.contenders:
                    runs.append({**base, "name": f"{kind} [{tag}]", "kind": kind, "dataset": ds, "sweep": {cfg.sweep: tag}})
        return runs
    for kind in cfg.contenders:
        runs.append({**base, "name": kind, "kind": kind, "dataset": cfg.dataset})
    if "bounded" in cfg.contenders:
        points = []
        if cfg.sweep == "chunks":
            points += [(None, m) for m in (cfg.max_per_chunks or (1, 2, 4, 8, 16, 32))]
            points += [(c, None) for c in (cfg.chunk_lens or (15, 30, 60, 120))]
        else:
            points += [(c, m) for c in cfg.chunk_lens for m in (cfg.max_per_chunks or (None,))]
            if not cfg.chunk_lens:
                points += [(None, m) for m in cfg.max_per_chunks]
        for c, m in points:
            name = "bounded " + " ".join(f"{k}={v}" for k, v in (("chunk_len", c), ("max_per_chunk", m)) if v)
            runs.append(
                {**base, "name": name, "kind": "bounded", "dataset": cfg.dataset, "chunk_len": c, "max_per_chunk": m,
                 "sweep": {"chunk_len": c, "max_per_chunk": m}}
            )
    return runs


def run(cfg: BenchConfig, *, progress: bool = True, checkpoint=None) -> dict:
    """Run the benchmark described by ``cfg``; return the result document (see SCHEMA).

    ``checkpoint(doc)``, when given, is called after every contender with the document so
    far, so that a long run that is interrupted still leaves its results.
    """
    from tqdm import tqdm

    runs = plan_runs(cfg)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "system": system_info(),
        "config": _jsonable(dataclasses.asdict(cfg)),
        "datasets": {},
        "results": [],
    }
    paths_by_key: dict[str, list[str]] = {}
    expected = cfg.warmup_batches + cfg.repeats * (cfg.batches or 4)
    bar = tqdm(total=len(runs) * expected, unit="batch", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    try:
        for spec in runs:
            ds: DatasetSpec = spec.pop("dataset")
            key = "source" if cfg.source else ds.key()
            if key not in paths_by_key:
                if cfg.source:
                    paths_by_key[key] = list_source(cfg.source)
                    doc["datasets"][key] = {"source": cfg.source, "files": len(paths_by_key[key])}
                else:
                    t0 = time.perf_counter()
                    paths_by_key[key] = prepare_dataset(ds, data_dir=cfg.data_dir, seed=cfg.seed, progress=bar.set_description)
                    doc["datasets"][key] = {
                        **dataclasses.asdict(ds),
                        "files": len(paths_by_key[key]),
                        "bytes_per_video": _size(paths_by_key[key][0]),
                        "prepare_s": time.perf_counter() - t0,
                        "root": str(pathlib.Path(paths_by_key[key][0]).parent.parent),
                    }
            spec["paths"] = paths_by_key[key]
            if spec["kind"] in _RINGLOAD_KINDS and "ringload_index_s" not in doc["datasets"][key]:
                bar.set_description(f"ringload index ({len(spec['paths'])} files)")
                doc["datasets"][key]["ringload_index_s"] = _warm_index(spec["paths"], cfg.num_workers)
            bar.set_description(spec["name"])
            base_n = bar.n

            def on_progress(done, base_n=base_n):
                bar.n = min(base_n + done, bar.total)
                bar.refresh()

            result = _run_child(spec, timeout_s=cfg.budget_s + 300, on_progress=on_progress)
            bar.n = base_n + expected
            bar.refresh()
            entry = {
                "name": spec["name"],
                "kind": spec["kind"],
                "dataset": key,
                "workers": spec["workers"],
                "batch_size": spec["batch_size"],
                **{k: spec[k] for k in ("sweep",) if k in spec},
                **result,
            }
            if spec["kind"] == "bounded" and entry.get("status") == "ok":
                entry.setdefault("chunk_len", spec.get("chunk_len"))
                entry.setdefault("max_per_chunk", spec.get("max_per_chunk"))
                m = entry.get("max_per_chunk")
                entry["rho"] = cfg.rho
                entry["design_effect_bound"] = 1 + (m - 1) * cfg.rho if isinstance(m, int) else None
            doc["results"].append(entry)
            if checkpoint is not None:
                doc["ratios"] = ratios(doc["results"])
                checkpoint(doc)
            if entry.get("status") != "ok":
                log.info("%s: %s (%s)", spec["name"], entry.get("status"), entry.get("note"))
    finally:
        bar.close()
    doc["system"]["loadavg_end"] = list(os.getloadavg())
    doc["ratios"] = ratios(doc["results"])
    return doc


_RINGLOAD_KINDS = ("strict", "bounded", "sequential")


def _warm_index(paths: list[str], workers: int) -> float | None:
    """Fill ringload's probe cache for ``paths``; returns the seconds it took (None if no ringload).

    Indexing is a one-time cost per file (cached on disk), reported on its own so that
    the first ringload contender's time to first batch is not charged with it.
    """
    import concurrent.futures
    import multiprocessing

    try:
        from .probe import probe
    except ImportError:
        return None
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx) as pool:
            list(pool.map(probe, paths, chunksize=8))
    except Exception as exc:  # the contenders will meet the same error and report it
        log.warning("indexing failed: %s", exc)
        return None
    return time.perf_counter() - t0


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def ratios(results: list[dict]) -> dict:
    """Ratios against the starter and the ceiling, for the issue's targets.

    ``x_*`` compare images/s. ``cpu_x_*`` compare images per CPU-second (the inverse of
    CPU s/img): on a machine shared with other work, a contender's images/s depends on how
    much CPU it was given while it ran, its CPU cost per image much less, so both are kept.
    """

    def get(name, key):
        for r in results:
            if r["name"] == name and r.get("status") == "ok":
                return r.get(key)
        return None

    def ips(name):
        return get(name, "images_per_s")

    def eff(name):
        c = get(name, "cpu_s_per_image")
        return 1.0 / c if c else None

    out: dict[str, Any] = {}
    ceiling_name = "sequential" if ips("sequential") else ("ceiling" if ips("ceiling") else None)
    out["ceiling_used"] = ceiling_name
    base, ceiling = ips("starter"), ips(ceiling_name) if ceiling_name else None
    base_e, ceiling_e = eff("starter"), eff(ceiling_name) if ceiling_name else None
    for r in results:
        if r.get("status") != "ok" or not r.get("images_per_s"):
            continue
        v, e = r["images_per_s"], eff(r["name"])
        row = {}
        if base:
            row["x_starter"] = v / base
        if ceiling:
            row["x_ceiling"] = v / ceiling
        if ips("ceiling"):
            row["x_plain_ceiling"] = v / ips("ceiling")
        if e and base_e:
            row["cpu_x_starter"] = e / base_e
        if e and ceiling_e:
            row["cpu_x_ceiling"] = e / ceiling_e
        out[r["name"]] = row
    targets = {}
    for label, num, den, need in (
        ("bounded >= 0.85 x ceiling", "bounded", ceiling_name, 0.85),
        ("bounded >= 10 x starter", "bounded", "starter", 10.0),
        ("strict >= 1.5 x starter", "strict", "starter", 1.5),
        ("strict >= torchcodec exact", "strict", "torchcodec-exact", 1.0),
    ):
        if den and ips(num) and ips(den):
            targets[label] = ips(num) / ips(den) >= need
            if eff(num) and eff(den):
                targets[label + " (per CPU-second)"] = eff(num) / eff(den) >= need
    out["targets"] = targets
    return out


def format_table(doc: dict) -> str:
    """The human-readable result table."""
    rat = doc.get("ratios", {})
    head = ["contender", "img/s", "x starter", "x ceiling", "CPU s/img", "x st/ceil per CPU", "wait p50/p95/p99 ms",
            "1st batch s",
            "peak RSS MB", "PSS MB", "shm MB", "bound"]
    rows = [head]
    notes = []
    for r in doc["results"]:
        if r.get("status") != "ok":
            rows.append([r["name"], r.get("status", "?")] + [""] * (len(head) - 2))
            notes.append(f"{r['name']}: {r.get('status')}: {r.get('note')}")
            continue
        rr = rat.get(r["name"], {})
        w = r.get("wait_ms") or {}
        bound = ""
        if r.get("design_effect_bound") is not None:
            bound = f"c={r.get('chunk_len')} m={r.get('max_per_chunk')} deff<={r['design_effect_bound']:.2f}"
        elif r["kind"] == "bounded":
            bound = f"c={r.get('chunk_len')} m={r.get('max_per_chunk')}"
        rows.append(
            [
                r["name"],
                _fmt(r.get("images_per_s"), 1),
                _fmt(rr.get("x_starter"), 2),
                _fmt(rr.get("x_ceiling"), 2),
                _fmt(r.get("cpu_s_per_image"), 4),
                f"{_fmt(rr.get('cpu_x_starter'), 2)}/{_fmt(rr.get('cpu_x_ceiling'), 2)}",
                "/".join(_fmt(w.get(k), 0) for k in ("p50", "p95", "p99")),
                _fmt(r.get("first_batch_s"), 1),
                _fmt((r.get("peak_rss_bytes") or 0) / 2**20, 0),
                _fmt((r.get("peak_pss_bytes") or 0) / 2**20, 0),
                _fmt(r["shm_bytes"] / 2**20, 0) if r.get("shm_bytes") else "-",
                bound,
            ]
        )
        if r.get("note"):
            notes.append(f"{r['name']}: {r['note']}")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    sysinfo = doc.get("system", {})
    lines.append("")
    lines.append(
        f"machine: {sysinfo.get('cpu_model')}, {sysinfo.get('cpu_count')} cores, "
        f"{(sysinfo.get('ram_bytes') or 0) / 2**30:.0f} GiB RAM, GPU: {sysinfo.get('gpu') or 'none'}; "
        f"load average at start {_fmt((sysinfo.get('loadavg_start') or [None])[0], 2)}, "
        f"end {_fmt((sysinfo.get('loadavg_end') or [None])[0], 2)}"
    )
    if rat.get("ceiling_used"):
        lines.append(f"ceiling for ratios: {rat['ceiling_used']}")
    for k, v in (rat.get("targets") or {}).items():
        lines.append(f"target {k}: {'met' if v else 'MISSED'}")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def _fmt(v, digits):
    if v is None:
        return "-"
    return f"{v:.{digits}f}"


def write_json(doc: dict, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def make_plots(json_path, out_dir) -> list[str]:
    """Render the PNG plots with ``bench/plot.py``; returns the files written ([] without it)."""
    try:
        plot = _load_bench_module("plot")
    except _Skip as exc:
        log.warning("no plots: %s", exc)
        return []
    return [str(p) for p in plot.plot(json_path, out_dir)]


if __name__ == "__main__":
    sys.exit(_child_main())
