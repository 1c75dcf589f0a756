"""How a completed ring slot becomes a tensor the user owns.

The loader hands every completed slot to a Transfer and rewrites the slot only after the
Transfer returned it through ``reclaim``. The CPU transfer copies out at once; a device
transfer (see the GPU path) copies asynchronously and returns slots when their copy event
has completed.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Transfer(Protocol):
    """What the loader needs from a transfer (CPU copy or CUDA stream)."""

    device: torch.device

    def register(self, slots: list[torch.Tensor]) -> None:
        """Called once with a uint8 tensor view of each whole slot."""

    def submit(self, slot: int, frames: torch.Tensor) -> torch.Tensor:
        """The user's tensor for a completed slot; the slot comes back through reclaim()."""

    def reclaim(self, timeout_s: float = 0.0) -> list[int]:
        """Slots whose data has left shared memory and may be rewritten."""

    def in_flight(self) -> int:
        """Slots submitted and not yet reclaimable."""

    def close(self) -> None: ...


class CpuTransfer:
    """Copy each batch out of shared memory into a tensor the caller owns."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self._done: list[int] = []

    def register(self, slots: list[torch.Tensor]) -> None:
        """Called once with a uint8 tensor view of each whole slot."""

    def submit(self, slot: int, frames: torch.Tensor) -> torch.Tensor:
        out = frames.clone()
        self._done.append(slot)
        return out

    def reclaim(self, timeout_s: float = 0.0) -> list[int]:
        """Slots whose data has left shared memory and may be rewritten."""
        done, self._done = self._done, []
        return done

    def in_flight(self) -> int:
        return 0  # the copy is done when submit() returns

    def close(self) -> None:
        self._done.clear()


def make_transfer(device) -> Transfer:
    dev = torch.device(device)
    if dev.type == "cpu":
        return CpuTransfer()
    from ._cuda import CudaTransfer  # imported only when asked: CPU users never load CUDA

    return CudaTransfer(dev)
