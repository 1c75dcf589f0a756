"""The ring: a fixed number of batch-shaped slots in one POSIX shared-memory segment.

The segment is created with mode 0600 under a random name and unlinked by ``Ring.unlink``
as soon as the consumer holds its file descriptor. Decoders never learn the name: they
receive the open descriptor over their Unix control socket (``socket.send_fds``) and map it
with :func:`attach`. So no ``/dev/shm`` entry outlives the moment of creation, whatever
happens to any process afterwards; the memory itself is freed by the kernel when the last
mapping and descriptor are gone.

Each slot holds one batch as uint8 ``(B, T, H, W, 3)`` (RGB, HWC per frame, the layout the
converter writes). Slots start on page boundaries so a device transfer can page-lock them.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
from dataclasses import dataclass

import numpy as np
import posix_ipc

log = logging.getLogger(__name__)

_PAGE = mmap.PAGESIZE
NAME_PREFIX = "/ringload-"


@dataclass(frozen=True)
class RingLayout:
    """Shape of the ring: ``num_slots`` slots of uint8 ``slot_shape`` = (B, T, H, W, 3)."""

    num_slots: int
    slot_shape: tuple[int, ...]

    def __post_init__(self):
        if self.num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {self.num_slots}")
        if len(self.slot_shape) != 5 or min(self.slot_shape) < 1:
            raise ValueError(f"slot_shape must be 5 positive ints (B, T, H, W, C), got {self.slot_shape}")

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.slot_shape))

    @property
    def slot_stride(self) -> int:
        """Bytes from one slot's start to the next: the slot rounded up to whole pages."""
        return -(-self.frame_bytes // _PAGE) * _PAGE

    @property
    def nbytes(self) -> int:
        return self.slot_stride * self.num_slots


def _views(buf, layout: RingLayout) -> np.ndarray:
    """numpy view (num_slots, B, T, H, W, 3) over a buffer laid out as ``layout``."""
    flat = np.frombuffer(buf, dtype=np.uint8, count=layout.nbytes)
    b, t, h, w, c = layout.slot_shape
    strides = (layout.slot_stride, t * h * w * c, h * w * c, w * c, c, 1)
    return np.lib.stride_tricks.as_strided(flat, shape=(layout.num_slots, b, t, h, w, c), strides=strides)


class Ring:
    """The consumer's side: creates, maps and (at once) unlinks the segment."""

    def __init__(self, layout: RingLayout, *, unlink: bool = True):
        self.layout = layout
        self.name = NAME_PREFIX + secrets.token_hex(12)
        shm = posix_ipc.SharedMemory(self.name, flags=posix_ipc.O_CREX, mode=0o600, size=layout.nbytes)
        self._unlinked = False
        self.fd = shm.fd
        try:
            # Reserve the pages now: a full /dev/shm then fails here, not as SIGBUS in a decoder.
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self.fd, 0, layout.nbytes)
            self._mmap = mmap.mmap(self.fd, layout.nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            self.unlink()
            os.close(self.fd)
            raise
        if unlink:
            self.unlink()
        self.slots = _views(self._mmap, layout)
        log.debug("ring %s: %d slots x %d bytes", self.name, layout.num_slots, layout.slot_stride)

    def unlink(self) -> None:
        """Remove the name from /dev/shm (idempotent); mappings and descriptors stay valid."""
        if self._unlinked:
            return
        self._unlinked = True
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    def close(self) -> None:
        """Unlink, unmap and close the descriptor (idempotent)."""
        self.unlink()
        self.slots = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                # Someone still holds a view (e.g. a tensor made from a slot): the kernel
                # frees the pages when that view dies; the name is already gone.
                log.debug("ring %s: views still alive at close, leaving the mapping to GC", self.name)
            self._mmap = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class AttachedRing:
    """A decoder's mapping of the ring, made from a descriptor it received."""

    def __init__(self, fd: int, layout: RingLayout):
        self.layout = layout
        try:
            self._mmap = mmap.mmap(fd, layout.nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps the memory; the descriptor is no longer needed
        self.slots = _views(self._mmap, layout)

    def close(self) -> None:
        self.slots = None
        try:
            self._mmap.close()
        except BufferError:
            pass
