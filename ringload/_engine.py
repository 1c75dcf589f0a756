"""A loader's running parts: the shared-memory ring, the transfer that turns a slot into
the user's tensor, and the scheduler with its decoders; built together, torn down together."""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref

from ._bounded import ring_batches
from ._config import LoaderConfig
from .errors import ConfigError

log = logging.getLogger(__name__)

# The ring's default budget (ring_bytes) is _bounded.DEFAULT_RING_BYTES: what the look-ahead
# may hold. Batches are the same for any ring size; only when and where frames are decoded changes.
# Batches in the window by mode, within the budget: strict shares a GOP's decode between the
# samples of all batches in the window, so deeper is faster (docs/benchmarks.md has the
# curve); bounded needs a chunk's batches plus work for every decoder; sequential reads in
# order and needs little.
MAX_STRICT_DEPTH = 256
SEQUENTIAL_DEPTH = 8
MIN_DEPTH = 2

# Engines alive in this process: a second loader (validation beside training) takes the
# cores the first left, so two loaders do not oversubscribe the machine unnoticed.
_LIVE: weakref.WeakSet = weakref.WeakSet()


@dataclasses.dataclass(eq=False)
class Engine:
    ring: object
    sched: object
    transfer: object
    slot_tensors: list
    num_workers: int
    decoder_threads: int
    depth: int  # batches the window may hold (ring slots - 1)


def usable_cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def default_workers() -> int:
    """One decoder per core, less the decoders of the loaders already alive in this process."""
    cores = usable_cores()
    taken = sum(e.num_workers for e in list(_LIVE) if not e.sched.closed)
    workers = max(1, cores - taken)
    if taken:
        log.warning(
            "%d decoder processes of other loaders are alive on %d cores: this loader takes %d (pass num_workers to choose)",
            taken, cores, workers,
        )
    return workers


def default_threads(workers: int) -> int:
    """FFmpeg threads per decoder: the cores left to each decoder, never more in total than the cores."""
    return max(1, usable_cores() // max(1, workers))


def window_depth(cfg: LoaderConfig, slot_bytes: int, chunk_window: int, workers: int) -> int:
    """Batches the ring holds beside the one the consumer reads (``prefetch_batches``), from
    the settings and the slot size alone, never from the machine."""
    if cfg.prefetch_batches is not None:
        return cfg.prefetch_batches
    fit = ring_batches(slot_bytes, cfg.ring_bytes)
    if fit < MIN_DEPTH:
        if cfg.ring_bytes is not None:
            raise ConfigError(
                f"ring_bytes={cfg.ring_bytes} holds {max(0, fit + 1)} batches of {slot_bytes / 2**20:.1f} MiB; "
                f"the loader needs at least {MIN_DEPTH + 1}: raise ring_bytes or lower batch_size"
            )
        fit = MIN_DEPTH  # the default budget is too small for such batches: take the minimum
    if cfg.sampling == "strict":
        return min(fit, MAX_STRICT_DEPTH)
    if cfg.sampling == "sequential":
        return min(fit, SEQUENTIAL_DEPTH)
    # A chunk's batches plus 2 per decoder. A lead of WORK_BATCHES (what the rule leaves room
    # for) was tried and not kept: docs/benchmarks.md, "Two scheduler changes tried".
    want = max(SEQUENTIAL_DEPTH, chunk_window + 2 * max(1, workers))
    if fit < want:
        log.warning(
            "bounded sampling reads each chunk once when the window holds its %d batches plus 2 per decoder (%d); "
            "the ring holds %d: raise ring_bytes to %d for full speed",
            chunk_window, want, fit, (want + 1) * slot_bytes,
        )
    return min(fit, want)


def all_local(paths) -> bool:
    return all(p.startswith("/") for p in paths)  # local paths are absolute; URLs and tar members are not


def remote_budget_s(cfg: LoaderConfig, paths) -> float:
    """What a task's reads may take on top of its decoding where videos are not local files
    (a HEAD and a range request, each with every retry and its backoff, and one timeout
    waiting for the fetch made ahead of it), so that a slow store ends in a RemoteReadError
    naming it rather than in a killed decoder."""
    if all_local(paths):
        return 0.0
    from ._rangefile import _MAX_BACKOFF_S

    return 2 * ((cfg.remote_retries + 1) * cfg.remote_timeout_s + cfg.remote_retries * _MAX_BACKOFF_S) + cfg.remote_timeout_s


def start_engine(cfg: LoaderConfig, data, chunk_window: int, storage: tuple = ({}, 256 << 20, 3, 30.0)) -> Engine:
    """Allocate the ring (sized from the settings and, in bounded mode, the plan's
    ``chunk_window``), register it with the transfer and start the scheduler."""
    import torch

    from ._ring import Ring, RingLayout
    from ._scheduler import Scheduler, SchedulerOptions
    from ._transfer import make_transfer

    T = cfg.frames_per_sample
    h, w = data.size
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
    threads = cfg.decoder_threads if cfg.decoder_threads is not None else default_threads(workers)
    slot_bytes = RingLayout(1, (cfg.batch_size, T, h, w, 3)).slot_stride
    depth = window_depth(cfg, slot_bytes, chunk_window, workers)
    layout = RingLayout(depth + 1, (cfg.batch_size, T, h, w, 3))
    what = f"{layout.num_slots} slots of {cfg.batch_size} x {T} frames of {h}x{w}"
    check_ring_fits(layout, what)
    ring = sched = transfer = None
    try:
        try:
            ring = Ring(layout)
        except OSError as exc:
            raise ConfigError(
                f"cannot allocate the ring: {layout.nbytes / 2**20:.0f} MiB of shared memory ({what}): "
                f"{exc.strerror or exc}. Lower prefetch_batches or batch_size, or give /dev/shm more room (docker: --shm-size)"
            ) from None
        transfer = make_transfer(cfg.device)
        slot_tensors = [torch.from_numpy(ring.slots[i]) for i in range(layout.num_slots)]
        transfer.register(slot_tensors)
        local = all_local(data.paths)  # one pass over the paths (10^7 of them take a second)
        sched = Scheduler(
            ring=ring, index=data.index, num_workers=workers, paths=data.paths, infos=data.infos, size=(h, w),
            on_error=cfg.on_error,
            options=SchedulerOptions(task_timeout_s=cfg.task_timeout_s + (0.0 if local else remote_budget_s(cfg, data.paths)),
                                     orientation=cfg.orientation, decoder_threads=threads,
                                     # Without a block cache a GOP split for the first batch would be fetched twice.
                                     split_head=storage[1] > 0 or local, storage=storage),
            quarantined=data.quarantined,
        )
        sched.start()
    except BaseException:
        release(sched, transfer, ring, os.getpid())
        raise
    engine = Engine(ring, sched, transfer, slot_tensors, workers, threads, depth)
    _LIVE.add(engine)
    return engine


def release(sched, transfer, ring, owner_pid: int) -> None:
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


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_ring_fits(layout, what: str) -> None:
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
