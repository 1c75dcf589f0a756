"""The CUDA transfer: ring slot -> GPU tensor on a dedicated stream, slot reused after the copy.

Data path for one batch (uint8 at its final size, the only bytes that cross PCIe):

1. ``register``: every ring slot is page-locked once with ``cudaHostRegister`` (through
   ``torch.cuda.cudart()``), so the DMA engine reads shared memory directly. Where the
   driver refuses (a container without the right limits, an unsupported mapping), the
   transfer falls back to a few pinned staging buffers and a CPU memcpy, and says so once
   in the log.
2. ``submit``: the copy is queued on a side stream with ``non_blocking=True`` into a tensor
   allocated on that stream; an event is recorded after it; the consumer's stream waits on
   the event (GPU-side, the host does not block) and ``record_stream`` tells the caching
   allocator that the consumer stream uses the tensor.
3. ``reclaim``: a slot goes back to the ring only once its copy event has completed
   (``Event.query()``), so decoders never overwrite bytes the DMA engine has not read yet.
   In the staging fallback the slot is free as soon as the memcpy returned; the staging
   buffer waits for the event instead.

At most ``prefetch_depth`` copies are in flight; ``submit`` waits (bounded) for the oldest
before queueing another. Nothing here runs in decoder processes: only the consumer process
imports this module, and only when a CUDA device was asked for.
"""

from __future__ import annotations

import collections
import logging
import mmap
import time
import weakref
from dataclasses import dataclass

import torch

from .errors import ConfigError, LoaderTimeoutError, RingloadError

log = logging.getLogger(__name__)

PAGE_BYTES = mmap.PAGESIZE
# cudaHostRegisterPortable: pinned for every CUDA context in the process, not only the current one.
_HOST_REGISTER_PORTABLE = 1
_fallback_logged = False


def page_ranges(spans, page_bytes: int = PAGE_BYTES) -> list[tuple[int, int]]:
    """Merge ``(address, nbytes)`` spans into page-aligned ``(address, nbytes)`` ranges.

    cudaHostRegister works on whole pages and refuses a page registered twice, so slots
    that share a page (or touch each other) are registered as one range. Rounding out to
    page boundaries stays inside the mapping: a mapping always covers whole pages.
    """
    out: list[list[int]] = []
    for addr, nbytes in sorted((int(a), int(n)) for a, n in spans if int(n) > 0):
        lo = addr - addr % page_bytes
        hi = -(-(addr + nbytes) // page_bytes) * page_bytes
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi - lo) for lo, hi in out]


def wait_event(event, timeout_s: float) -> bool:
    """Wait until ``event.query()`` is true or ``timeout_s`` passed; True when it completed.

    Polls instead of ``Event.synchronize()`` because a blocking synchronize has no timeout.
    An H2D copy of one slot takes about a millisecond, so the poll starts fine and backs off.
    """
    if event.query():
        return True
    deadline = time.monotonic() + max(0.0, timeout_s)
    delay = 20e-6
    while True:
        now = time.monotonic()
        if now >= deadline:
            return event.query()
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 1e-3)
        if event.query():
            return True


def dense_order(t: torch.Tensor) -> list[int] | None:
    """None when ``t`` is contiguous; else the dim order that makes it contiguous when ``t`` is a
    permuted view of a dense block (``t.permute(order)`` is contiguous); else None as well
    (such a tensor is staged, which copes with any layout)."""
    if t.is_contiguous():
        return None
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    return order if t.permute(order).is_contiguous() else None


def _inverse(order: list[int]) -> list[int]:
    inv = [0] * len(order)
    for i, d in enumerate(order):
        inv[d] = i
    return inv


@dataclass
class _Copy:
    event: object
    slot: int | None  # slot to hand back when the event completes (None: already handed back)
    stage: int | None  # staging buffer to free when the event completes


class _Ledger:
    """Copies in flight, oldest first. Events on one stream complete in order, so the scan
    stops at the first one still running. Works with any object that has ``query()``."""

    def __init__(self) -> None:
        self.pending: collections.deque[_Copy] = collections.deque()
        self.done_slots: list[int] = []
        self.free_stages: list[int] = []

    def add(self, event, *, slot: int | None, stage: int | None) -> None:
        self.pending.append(_Copy(event, slot, stage))

    def release_slot_now(self, slot: int) -> None:
        self.done_slots.append(slot)

    def _retire(self, c: _Copy) -> None:
        if c.slot is not None:
            self.done_slots.append(c.slot)
        if c.stage is not None:
            self.free_stages.append(c.stage)

    def collect(self) -> None:
        while self.pending and self.pending[0].event.query():
            self._retire(self.pending.popleft())

    def wait_oldest(self, timeout_s: float) -> bool:
        if not self.pending:
            return True
        if not wait_event(self.pending[0].event, timeout_s):
            return False
        self.collect()
        return True

    def take_done(self) -> list[int]:
        done, self.done_slots = self.done_slots, []
        return done


def _unregister(ptrs: list[int]) -> None:
    """Finalizer and close(): undo cudaHostRegister. Must not hold a reference to the transfer."""
    while ptrs:
        ptr = ptrs.pop()
        try:
            err = int(torch.cuda.cudart().cudaHostUnregister(ptr))
        except Exception:  # interpreter shutdown: CUDA may already be torn down
            log.debug("cudaHostUnregister(%#x) raised during shutdown", ptr, exc_info=True)
            continue
        if err != 0:
            log.warning("cudaHostUnregister(%#x) returned CUDA error %d", ptr, err)


def _consume_pending_error(device: torch.device) -> None:
    """A refused cudaHostRegister leaves its error as the thread's 'last CUDA error', which the
    next kernel launch check would report as its own. Launch a tiny kernel to take it off."""
    for _ in range(2):
        try:
            torch.ones(1, device=device).add_(1)
            return
        except RuntimeError:
            continue


class CudaTransfer:
    """Copy completed ring slots to ``device`` on a side stream (see the module docstring).

    ``prefetch_depth``: copies in flight before ``submit`` waits for the oldest.
    ``register_memory=False`` skips cudaHostRegister and uses pinned staging buffers.
    ``timeout_s`` bounds every wait for a copy (a copy taking that long means a hung GPU).
    """

    def __init__(
        self,
        device="cuda",
        *,
        prefetch_depth: int = 2,
        register_memory: bool = True,
        timeout_s: float = 60.0,
    ) -> None:
        dev = torch.device(device)
        if dev.type != "cuda":
            raise ConfigError(f"device={str(device)!r}: CudaTransfer needs a CUDA device; use device='cpu' for the CPU path")
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={str(device)!r}: torch.cuda.is_available() is False (no GPU, or a CPU-only torch build); "
                "use device='cpu'"
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if int(prefetch_depth) < 1:
            raise ConfigError(f"prefetch_depth={prefetch_depth!r}: must be at least 1")
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s={timeout_s!r}: must be > 0")
        self.device = dev
        self.prefetch_depth = int(prefetch_depth)
        self.timeout_s = float(timeout_s)
        self._want_register = bool(register_memory)
        self._stream = torch.cuda.Stream(device=dev)
        self._ledger = _Ledger()
        self._spans: dict[int, tuple[int, int]] = {}
        self._registered: list[int] = []
        self._staging: list[torch.Tensor] = []
        self.mode: str | None = None  # "registered" or "staging" once register() ran
        self.bytes_copied = 0
        self.batches_copied = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, _unregister, self._registered)

    @property
    def stream(self) -> torch.cuda.Stream:
        """The side stream the copies run on (for profiling and tests)."""
        return self._stream

    def register(self, slots: list[torch.Tensor]) -> None:
        """Called once with a uint8 tensor view of each whole slot: page-lock them."""
        self._check_open()
        self._drain("register")
        _unregister(self._registered)
        self._staging.clear()
        self._ledger.free_stages = []
        self._spans = {i: (t.data_ptr(), t.numel() * t.element_size()) for i, t in enumerate(slots)}
        self.mode = "staging"
        if self._want_register and self._spans:
            if self._register_ranges(page_ranges(self._spans.values())):
                self.mode = "registered"
        if self.mode == "staging":
            size = max((n for _, n in self._spans.values()), default=0)
            self._staging = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for _ in range(self.prefetch_depth)]
            self._ledger.free_stages = list(range(self.prefetch_depth))
        log.debug("CudaTransfer on %s: %d slots, mode %s", self.device, len(self._spans), self.mode)

    def _register_ranges(self, ranges: list[tuple[int, int]]) -> bool:
        global _fallback_logged
        cudart = torch.cuda.cudart()
        for addr, nbytes in ranges:
            res = cudart.cudaHostRegister(addr, nbytes, _HOST_REGISTER_PORTABLE)
            err = int(res)
            if err == 0:
                self._registered.append(addr)
                continue
            _consume_pending_error(self.device)
            _unregister(self._registered)
            msg = (
                "cudaHostRegister of the shared-memory ring (%d bytes at %#x) was refused (CUDA error %d: %s); "
                "copying through pinned staging buffers instead (one extra CPU memcpy per batch)"
            )
            args = (nbytes, addr, err, _error_string(cudart, res))
            if _fallback_logged:
                log.debug(msg, *args)
            else:
                log.warning(msg, *args)
                _fallback_logged = True
            return False
        return True

    def submit(self, slot: int, frames: torch.Tensor, *, stream: torch.cuda.Stream | None = None) -> torch.Tensor:
        """Queue the copy of ``frames`` (a uint8 view into ``slot``) and return the GPU tensor.

        Work the caller queues on ``stream`` (default: the calling thread's current stream on
        this device) after this call sees the data; the host does not wait for the copy.
        """
        self._check_open()
        if self.mode is None:
            raise RingloadError("CudaTransfer.submit before register(): the loader must register its slots first")
        self._ledger.collect()
        while len(self._ledger.pending) >= self.prefetch_depth:
            if not self._ledger.wait_oldest(self.timeout_s):
                raise LoaderTimeoutError(
                    f"a host-to-device copy on {self.device} did not finish within timeout_s={self.timeout_s}; "
                    "the GPU may be hung"
                )
        consumer = stream if stream is not None else torch.cuda.current_stream(self.device)
        stage = None
        # The ring stores frames HWC; the loader hands a permuted (B, C, H, W) view of that
        # dense block. Copy the block as it lies in memory and permute on the GPU (a view),
        # so the DMA reads the registered slot directly and the result has the CPU path's strides.
        perm = dense_order(frames)
        src = frames if perm is None else frames.permute(perm)
        if self.mode == "registered" and src.is_contiguous() and self._inside(slot, src):
            release = slot
        else:
            # Staging: the memcpy below is the last read of shared memory, so the slot is free
            # at once; the staging buffer is what must wait for the DMA.
            nbytes = src.numel() * src.element_size()
            stage = self._take_stage()
            buf = self._staging_buffer(stage, nbytes)
            staged = buf[:nbytes].view(src.dtype).view(src.shape)
            staged.copy_(src)
            src = staged
            self._ledger.release_slot_now(slot)
            release = None
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            out = torch.empty(src.shape, dtype=src.dtype, device=self.device)
            out.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        if perm is not None:
            out = out.permute(_inverse(perm))
        consumer.wait_event(event)
        # `out` was allocated on the side stream but is used on the consumer's: without this the
        # allocator could hand its memory to the next copy while the model still reads it.
        out.record_stream(consumer)
        self._ledger.add(event, slot=release, stage=stage)
        self.bytes_copied += frames.numel() * frames.element_size()
        self.batches_copied += 1
        return out

    def reclaim(self, timeout_s: float = 0.0) -> list[int]:
        """Slots whose copy has completed and may be rewritten; waits up to ``timeout_s``
        for the oldest copy when none is ready yet (returns [] if it is still running)."""
        if self._closed:
            return self._ledger.take_done()
        self._ledger.collect()
        if not self._ledger.done_slots and self._ledger.pending and timeout_s > 0:
            self._ledger.wait_oldest(timeout_s)
        return self._ledger.take_done()

    @property
    def in_flight(self) -> int:
        """Copies queued whose completion reclaim() has not seen yet."""
        return len(self._ledger.pending)

    def close(self) -> None:
        """Wait for copies in flight (bounded), unregister the ring, free staging. Idempotent."""
        if self._closed:
            return
        self._closed = True
        drained = self._drain("close")
        if drained:
            _unregister(self._registered)
            self._finalizer.detach()
        else:
            # Unregistering memory a DMA may still read is worse than leaving it page-locked.
            log.error("copies on %s still running after %.1f s; leaving the ring registered", self.device, self.timeout_s)
        self._staging.clear()
        self._ledger.pending.clear()
        self._ledger.free_stages.clear()

    def __enter__(self) -> CudaTransfer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers --

    def _drain(self, why: str) -> bool:
        deadline = time.monotonic() + self.timeout_s
        while self._ledger.pending:
            if not self._ledger.wait_oldest(max(0.0, deadline - time.monotonic())):
                log.warning("%s: copies still in flight after %.1f s", why, self.timeout_s)
                return False
        return True

    def _inside(self, slot: int, frames: torch.Tensor) -> bool:
        span = self._spans.get(slot)
        if span is None:
            return False
        lo, n = span
        ptr = frames.data_ptr()
        return lo <= ptr and ptr + frames.numel() * frames.element_size() <= lo + n

    def _take_stage(self) -> int:
        if self._ledger.free_stages:
            return self._ledger.free_stages.pop()
        # Registered mode keeps no staging buffers; one is made for the odd batch that needs it
        # (frames not contiguous or not inside a registered slot). At most prefetch_depth exist.
        self._staging.append(torch.empty(0, dtype=torch.uint8, pin_memory=True))
        return len(self._staging) - 1

    def _staging_buffer(self, stage: int, nbytes: int) -> torch.Tensor:
        buf = self._staging[stage]
        if buf.numel() < nbytes:
            buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            self._staging[stage] = buf
        return buf

    def _check_open(self) -> None:
        if self._closed:
            raise RingloadError("CudaTransfer is closed")


def _error_string(cudart, res) -> str:
    try:
        return str(cudart.cudaGetErrorString(res))
    except Exception:  # the binding's enum type lists only 'success' on some builds
        return "see the CUDA error code"
