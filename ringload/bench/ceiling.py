"""The ``ceiling`` contender: plain PyAV, no ringload, every frame in file order.

W spawned processes decode their share of the files (one thread each) and convert every
frame to the output size (``reformat``) into shared memory; the consumer copies each batch
out. It is how fast these files decode in order on this machine, the reference that the
sampling modes are compared with; it is measured, not a law, so under changing load
another contender can read faster in a round (the report says so when it happens).
"""

from __future__ import annotations

import queue
import time


class SequentialCeiling:
    """Every frame in file order, decoded + resized by spawned processes into shared memory.

    Plain PyAV, no ringload: how fast these files decode in file order. Files are dealt
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
                target=ceiling_worker, args=(w, mine, slots, self._ready, free, size), daemon=True, name=f"ceiling-{w}"
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


def ceiling_worker(rank, paths, slots, ready, free, size):
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
