"""A loader's running parts: the shared-memory ring, the transfer that turns a slot into
the user's tensor, and the scheduler with its decoders; built together, torn down together."""

from __future__ import annotations

import dataclasses
import logging
import os

from ._config import LoaderConfig
from .errors import ConfigError

log = logging.getLogger(__name__)

# Default ring budget: prefetch as many batches as fit in this many bytes (2..8 batches).
RING_BUDGET_BYTES = 1 << 30


@dataclasses.dataclass
class Engine:
    ring: object
    sched: object
    transfer: object
    slot_tensors: list
    num_workers: int


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def start_engine(cfg: LoaderConfig, data, chunk_window: int) -> Engine:
    """Allocate the ring (sized from the settings and, in bounded mode, the plan's
    ``chunk_window``), register it with the transfer and start the scheduler."""
    import torch

    from ._ring import Ring, RingLayout
    from ._scheduler import Scheduler, SchedulerOptions
    from ._transfer import make_transfer

    T = cfg.frames_per_sample
    h, w = data.size
    batch_bytes = cfg.batch_size * T * h * w * 3
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
    prefetch = cfg.prefetch_batches
    if prefetch is None:
        fit = max(2, RING_BUDGET_BYTES // batch_bytes)
        want = 8
        if cfg.sampling == "bounded":
            # Room for whole chunks plus work for every decoder: each chunk decodes once.
            want = max(want, chunk_window + 2 * max(1, workers))
        prefetch = int(min(want, fit))
    layout = RingLayout(prefetch + 1, (cfg.batch_size, T, h, w, 3))
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
        sched = Scheduler(
            ring=ring, index=data.index, num_workers=workers, paths=data.paths, infos=data.infos, size=(h, w), on_error=cfg.on_error,
            options=SchedulerOptions(task_timeout_s=cfg.task_timeout_s, orientation=cfg.orientation),
            quarantined=data.quarantined,
        )
        sched.start()
    except BaseException:
        release(sched, transfer, ring, os.getpid())
        raise
    return Engine(ring, sched, transfer, slot_tensors, workers)


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
