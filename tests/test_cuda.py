"""The CUDA transfer. The bookkeeping (page ranges, copy ledger, bounded waits, errors without a
GPU) runs everywhere; the copy path itself is marked ``cuda``."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ringload import _cuda
from ringload._transfer import CpuTransfer, make_transfer
from ringload.errors import ConfigError

PAGE = 4096


# ---------------------------------------------------------------- CPU: pure parts


@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 3 * PAGE)), max_size=12))
def test_page_ranges_cover_every_span_once(spans):
    ranges = _cuda.page_ranges(spans, PAGE)
    for lo, n in ranges:
        assert lo % PAGE == 0 and n % PAGE == 0 and n > 0
    # Sorted, disjoint and not touching (touching ranges must be merged: one registration).
    for (a, n), (b, _) in zip(ranges, ranges[1:]):
        assert a + n < b
    for addr, n in spans:
        if n == 0:
            continue
        assert any(lo <= addr and addr + n <= lo + m for lo, m in ranges), (addr, n)
    # Nothing registered beyond the pages the spans touch.
    touched = {p for addr, n in spans if n for p in range(addr // PAGE, (addr + n - 1) // PAGE + 1)}
    assert sum(n // PAGE for _, n in ranges) == len(touched)


def test_page_ranges_merge_slots_sharing_a_page():
    slot = 4845  # slots of a ring are rarely page multiples
    spans = [(0x10000 + i * slot, slot) for i in range(4)]
    assert _cuda.page_ranges(spans, PAGE) == [(0x10000, 5 * PAGE)]


class FakeEvent:
    def __init__(self):
        self.done = False
        self.queries = 0

    def query(self):
        self.queries += 1
        return self.done


def test_ledger_releases_slots_only_after_their_event_and_in_order():
    led = _cuda._Ledger()
    ev = [FakeEvent() for _ in range(3)]
    led.add(ev[0], slot=0, stage=None)
    led.add(ev[1], slot=1, stage=None)
    led.add(ev[2], slot=None, stage=2)  # a staged copy: its slot went back at once
    led.release_slot_now(5)
    led.collect()
    assert led.take_done() == [5] and len(led.pending) == 3
    ev[1].done = True  # completion is in stream order; a later event alone frees nothing
    led.collect()
    assert led.take_done() == [] and len(led.pending) == 3
    ev[0].done = True
    led.collect()
    assert led.take_done() == [0, 1] and len(led.pending) == 1
    assert led.free_stages == []
    ev[2].done = True
    assert led.wait_oldest(0.0)
    assert led.take_done() == [] and led.free_stages == [2] and not led.pending


def test_wait_event_is_bounded_and_polls():
    ev = FakeEvent()
    t0 = time.monotonic()
    assert _cuda.wait_event(ev, 0.05) is False
    elapsed = time.monotonic() - t0
    assert 0.05 <= elapsed < 2.0
    assert ev.queries > 3

    class DoneAfter:
        def __init__(self, n):
            self.n = n

        def query(self):
            self.n -= 1
            return self.n <= 0

    assert _cuda.wait_event(DoneAfter(5), 5.0) is True


def test_cuda_transfer_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device='cpu'"):
        _cuda.CudaTransfer("cuda")
    with pytest.raises(ConfigError, match="device="):
        make_transfer("cuda:0")
    with pytest.raises(ConfigError, match="CUDA device"):
        _cuda.CudaTransfer("cpu")


def test_cpu_transfer_unchanged():
    t = make_transfer("cpu")
    assert isinstance(t, CpuTransfer)
    src = torch.arange(24, dtype=torch.uint8).view(2, 3, 2, 2)
    out = t.submit(4, src)
    src.zero_()
    assert out.sum().item() == sum(range(24)) and t.reclaim() == [4] and t.reclaim() == []


def test_importing_the_gpu_modules_does_not_initialise_cuda():
    code = (
        "import torch, ringload, ringload._cuda, ringload.augment, ringload._transfer\n"
        "ringload._transfer.make_transfer('cpu')\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised by an import'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------- GPU


@pytest.fixture
def shm_slots():
    """A ring like the loader's: one POSIX shared-memory mapping cut into slots (unlinked at once)."""
    posix_ipc = pytest.importorskip("posix_ipc")
    maps = []

    def make(n_slots: int, slot_bytes: int) -> list[torch.Tensor]:
        shm = posix_ipc.SharedMemory(f"/ringload-test-{uuid.uuid4().hex[:12]}", posix_ipc.O_CREX, mode=0o600,
                                     size=n_slots * slot_bytes)
        try:
            mm = mmap.mmap(shm.fd, n_slots * slot_bytes)
        finally:
            shm.close_fd()
            shm.unlink()
        maps.append(mm)
        flat = torch.frombuffer(mm, dtype=torch.uint8)
        return [flat[i * slot_bytes:(i + 1) * slot_bytes] for i in range(n_slots)]

    yield make
    for mm in maps:
        try:
            mm.close()
        except BufferError:  # tensors still view it; the mapping goes with them
            pass


def _fill(view: torch.Tensor, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    view.copy_(torch.randint(0, 256, view.shape, generator=g, dtype=torch.uint8))


def _delay_stream(stream, ms: float) -> None:
    """Queue a busy-wait kernel on ``stream`` (about ``ms`` milliseconds)."""
    with torch.cuda.stream(stream):
        torch.cuda._sleep(int(ms * 1.5e6))


@pytest.mark.cuda
@pytest.mark.parametrize("register_memory", [True, False])
@pytest.mark.parametrize("shape", [(5, 3, 17, 19), (2, 4, 3, 17, 19)])
def test_gpu_copy_equals_cpu_copy_bit_for_bit(shm_slots, register_memory, shape):
    slot_bytes = int(np.prod(shape))
    slots = shm_slots(4, slot_bytes)
    gpu = _cuda.CudaTransfer("cuda", register_memory=register_memory, prefetch_depth=2)
    cpu = CpuTransfer()
    try:
        gpu.register(slots)
        cpu.register(slots)
        assert gpu.mode == ("registered" if register_memory else "staging")
        if register_memory:
            assert all(s.is_pinned() for s in slots)
        for k in range(12):
            s = k % 4
            _fill(slots[s], k)
            full = slots[s].view(shape)
            frames = full[: 1 + k % shape[0]]  # partial batches too (the epoch's last batch)
            got = gpu.submit(s, frames)
            want = cpu.submit(s, frames)
            assert got.device.type == "cuda" and got.dtype == torch.uint8 and got.shape == frames.shape
            assert torch.equal(got.cpu(), want)
            assert s in gpu.reclaim(timeout_s=10.0) + gpu.reclaim(timeout_s=10.0)
        assert gpu.bytes_copied == sum((1 + k % shape[0]) * slot_bytes // shape[0] for k in range(12))
    finally:
        gpu.close()
    assert not any(s.is_pinned() for s in slots)


@pytest.mark.cuda
def test_consumer_stream_waits_and_slot_held_until_copy_done(shm_slots):
    shape = (8, 3, 64, 64)
    slots = shm_slots(2, int(np.prod(shape)))
    with _cuda.CudaTransfer("cuda") as t:
        t.register(slots)
        _fill(slots[0], 1)
        want = slots[0].to(torch.int64).sum().item()
        _delay_stream(t.stream, 200)  # the copy now sits behind ~200 ms of work on the side stream
        out = t.submit(0, slots[0].view(shape))
        total = out.to(torch.int64).sum()  # queued on the consumer stream right away
        assert t.reclaim(timeout_s=0.0) == []  # the DMA has not read the slot yet
        assert t.in_flight == 1
        assert total.item() == want  # .item() syncs the consumer stream, which waited on the copy
        assert t.reclaim(timeout_s=10.0) == [0]
        # A user stream instead of the default one.
        user = torch.cuda.Stream()
        _fill(slots[1], 2)
        want = slots[1].to(torch.int64).sum().item()
        _delay_stream(t.stream, 100)
        with torch.cuda.stream(user):
            out = t.submit(1, slots[1].view(shape))
            total = out.to(torch.int64).sum()
        user.synchronize()
        assert total.item() == want


def _run_ring(t, slots, shape, n_batches, *, side_delay_ms, consumer_delay_ms):
    """A fast ring and a slow consumer: a slot is overwritten the moment reclaim returns it."""
    free = list(range(len(slots)))
    outs, truth = [], []
    for k in range(n_batches):
        while not free:
            back = t.reclaim(timeout_s=10.0)
            for s in back:
                slots[s].fill_(0xAB)  # the decoder writes the next batch at once
            free += back
        s = free.pop(0)
        _fill(slots[s], 1000 + k)
        truth.append(slots[s].clone())
        if k % 2 == 0:
            _delay_stream(t.stream, side_delay_ms)
        if k % 3 == 0:
            _delay_stream(torch.cuda.current_stream(), consumer_delay_ms)
        out = t.submit(s, slots[s].view(shape))
        outs.append(out)
        outs[-1].float().mean()  # the model touches it on the consumer stream
    torch.cuda.synchronize()
    return sum(not torch.equal(o.cpu().flatten(), w) for o, w in zip(outs, truth))


@pytest.mark.cuda
@pytest.mark.parametrize("register_memory", [True, False])
def test_stress_slots_never_reused_before_their_copy_finished(shm_slots, register_memory):
    shape = (8, 3, 96, 96)
    slots = shm_slots(3, int(np.prod(shape)))
    with _cuda.CudaTransfer("cuda", prefetch_depth=2, register_memory=register_memory) as t:
        t.register(slots)
        bad = _run_ring(t, slots, shape, 150, side_delay_ms=2, consumer_delay_ms=5)
    assert bad == 0


@pytest.mark.cuda
def test_stress_detects_early_reuse_in_a_broken_transfer(shm_slots):
    """Control: a transfer that hands slots back before the copy ran is caught by the stress test."""

    class Broken(_cuda.CudaTransfer):
        def reclaim(self, timeout_s=0.0):
            released = [c.slot for c in self._ledger.pending if c.slot is not None]
            for c in self._ledger.pending:
                c.slot = None
            return self._ledger.take_done() + released

    shape = (8, 3, 96, 96)
    slots = shm_slots(3, int(np.prod(shape)))
    with Broken("cuda", prefetch_depth=2) as t:
        t.register(slots)
        assert t.mode == "registered"
        bad = _run_ring(t, slots, shape, 30, side_delay_ms=20, consumer_delay_ms=0)
    assert bad > 0


def _host_allocated_bytes() -> int:
    stats = torch.cuda.host_memory_stats()
    assert "allocated_bytes.current" in stats, sorted(stats)
    return int(stats["allocated_bytes.current"])


@pytest.mark.cuda
@pytest.mark.parametrize("register_memory", [True, False])
def test_no_leak_of_pinned_or_gpu_memory_over_many_epochs(shm_slots, register_memory):
    shape = (16, 3, 32, 32)
    slots = shm_slots(4, int(np.prod(shape)))

    def epoch(seed):
        with _cuda.CudaTransfer("cuda", prefetch_depth=3, register_memory=register_memory) as t:
            t.register(slots)
            free, acc = list(range(4)), torch.zeros((), device="cuda")
            for k in range(40):
                while not free:
                    free += t.reclaim(timeout_s=10.0)
                s = free.pop()
                _fill(slots[s], seed * 100 + k)
                acc += t.submit(s, slots[s].view(shape)).float().mean()
            acc.item()
        assert not any(s.is_pinned() for s in slots)

    epoch(0)  # warm the caching allocators
    torch.cuda.synchronize()
    gpu0, host0 = torch.cuda.memory_allocated(), _host_allocated_bytes()
    for e in range(1, 21):
        epoch(e)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == gpu0
    assert _host_allocated_bytes() == host0


@pytest.mark.cuda
@pytest.mark.parametrize("cuda_first", [True, False])
def test_cuda_initialised_before_or_after_the_ring_exists(cuda_first):
    """In a fresh process: CUDA up before the ring is mapped, or first touched by register()."""
    code = f"""
import mmap, torch
from ringload._cuda import CudaTransfer
if {cuda_first}:
    torch.zeros(1, device='cuda')
mm = mmap.mmap(-1, 4 * 3000)
flat = torch.frombuffer(mm, dtype=torch.uint8)
slots = [flat[i * 3000:(i + 1) * 3000] for i in range(4)]
assert torch.cuda.is_initialized() == {cuda_first}
t = CudaTransfer('cuda')
t.register(slots)
slots[2].copy_(torch.arange(3000) % 251)
out = t.submit(2, slots[2].view(1, 3, 10, 100))
assert torch.equal(out.cpu().flatten(), (torch.arange(3000) % 251).to(torch.uint8))
t.close()
print(t.mode)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "registered"


@pytest.mark.cuda
def test_refused_registration_falls_back_to_staging_and_leaves_no_cuda_error(shm_slots, caplog):
    shape = (2, 3, 8, 8)
    slots = shm_slots(2, int(np.prod(shape)))
    first = _cuda.CudaTransfer("cuda")
    first.register(slots)  # the pages are now registered: a second registration is refused
    _cuda._fallback_logged = False
    try:
        with caplog.at_level("WARNING", logger="ringload._cuda"):
            second = _cuda.CudaTransfer("cuda")
            second.register(slots)
        assert second.mode == "staging"
        assert any("staging" in r.getMessage() for r in caplog.records)
        # The refused call's error must not surface in the next kernel launch.
        assert torch.ones(4, device="cuda").add(1).sum().item() == 8
        _fill(slots[0], 3)
        assert torch.equal(second.submit(0, slots[0].view(shape)).cpu(), slots[0].view(shape))
        second.close()
    finally:
        first.close()


# ---------------------------------------------------------------- CPU: the transfer on a simulated GPU
#
# The copy path's logic (which slot goes back when, staging, depth, registration and its undoing)
# runs here against a small model of a GPU: a non_blocking copy is queued, not done, and reads the
# source memory only when the model executes it, as a DMA engine does; each Event.query() lets
# the model execute one queued copy. A transfer that hands a slot back early therefore returns
# corrupted batches here just as on hardware.


class SimGpu:
    def __init__(self):
        self.queue = []  # queued copies, in stream order
        self.executed = 0
        self.stalled = False
        self.registered: dict[int, int] = {}
        self.refuse_register = False
        self.unregister_calls = 0

    def step(self):
        if not self.stalled and self.executed < len(self.queue):
            self.queue[self.executed]()
            self.executed += 1

    def run_all(self):
        while self.executed < len(self.queue):
            self.queue[self.executed]()
            self.executed += 1


class SimTensor(torch.Tensor):
    gpu: SimGpu = None

    def copy_(self, src, non_blocking=False):
        if non_blocking:
            dst = self.as_subclass(torch.Tensor)
            SimTensor.gpu.queue.append(lambda: dst.copy_(src))  # reads `src` later, like DMA
            return self
        return super().copy_(src)

    def record_stream(self, stream):
        stream.recorded.append(self.data_ptr())


class SimStream:
    def __init__(self, device=None):
        self.waited = []
        self.recorded = []

    def wait_event(self, event):
        self.waited.append(event)


class SimEvent:
    def record(self, stream):
        self.mark = len(SimTensor.gpu.queue)

    def query(self):
        SimTensor.gpu.step()
        return SimTensor.gpu.executed >= self.mark


class SimCudart:
    def __init__(self, gpu):
        self.gpu = gpu

    def cudaHostRegister(self, addr, n, flags):
        if self.gpu.refuse_register or addr in self.gpu.registered:
            return 712
        self.gpu.registered[addr] = n
        return 0

    def cudaHostUnregister(self, addr):
        self.gpu.unregister_calls += 1
        return 0 if self.gpu.registered.pop(addr, None) is not None else 713

    def cudaGetErrorString(self, res):
        return "part or all of the requested memory range is already mapped"


@pytest.fixture
def sim(monkeypatch):
    import contextlib
    import types

    gpu = SimGpu()
    SimTensor.gpu = gpu
    default_stream = SimStream()
    fake_cuda = types.SimpleNamespace(
        is_available=lambda: True,
        current_device=lambda: 0,
        Stream=SimStream,
        Event=SimEvent,
        current_stream=lambda device=None: default_stream,
        stream=lambda s: contextlib.nullcontext(),
        device=lambda d: contextlib.nullcontext(),
        cudart=lambda: SimCudart(gpu),
    )

    def empty(*shape, dtype=None, device=None, pin_memory=False):
        t = torch.empty(*shape, dtype=dtype)
        return t.as_subclass(SimTensor) if device is not None and torch.device(device).type == "cuda" else t

    class TorchProxy:
        cuda = fake_cuda

        def __getattr__(self, name):
            return getattr(torch, name)

    proxy = TorchProxy()
    proxy.empty = empty
    monkeypatch.setattr(_cuda, "torch", proxy)
    monkeypatch.setattr(_cuda, "_consume_pending_error", lambda device: None)
    gpu.default_stream = default_stream
    return gpu


def _anon_slots(n_slots, slot_bytes):
    mm = mmap.mmap(-1, n_slots * slot_bytes)
    flat = torch.frombuffer(mm, dtype=torch.uint8)
    return [flat[i * slot_bytes:(i + 1) * slot_bytes] for i in range(n_slots)]


def _sim_ring(t, slots, shape, n_batches, gpu):
    free = list(range(len(slots)))
    outs, truth = [], []
    for k in range(n_batches):
        while not free:
            back = t.reclaim(timeout_s=5.0)
            for s in back:
                slots[s].fill_(0xAB)
            free += back
        s = free.pop(0)
        _fill(slots[s], 1000 + k)
        truth.append(slots[s].clone())
        outs.append(t.submit(s, slots[s].view(shape)))
    gpu.run_all()
    return sum(not torch.equal(o.as_subclass(torch.Tensor).flatten(), w) for o, w in zip(outs, truth))


def test_sim_registered_path_streams_events_and_registration(sim):
    shape = (3, 3, 7, 9)
    slot_bytes = int(np.prod(shape))
    slots = _anon_slots(4, slot_bytes)
    t = _cuda.CudaTransfer("cuda", prefetch_depth=2)
    assert t.device == torch.device("cuda", 0)
    t.register(slots)
    assert t.mode == "registered"
    # Four slots sharing pages: one page-aligned range registered once.
    assert len(sim.registered) == 1
    (addr, n), = sim.registered.items()
    assert addr <= slots[0].data_ptr() and slots[-1].data_ptr() + slot_bytes <= addr + n
    _fill(slots[1], 5)
    sim.stalled = True
    out = t.submit(1, slots[1].view(shape))
    assert sim.default_stream.waited and sim.default_stream.waited[-1].mark == len(sim.queue)
    assert sim.default_stream.recorded == [out.data_ptr()]
    assert t.reclaim(timeout_s=0.01) == []  # copy not executed: slot held
    sim.stalled = False
    assert t.reclaim(timeout_s=1.0) == [1]
    assert torch.equal(out.as_subclass(torch.Tensor), slots[1].view(shape))
    # A user's stream is the one made to wait.
    user = SimStream()
    t.submit(2, slots[2].view(shape), stream=user)
    assert len(user.waited) == 1 and len(user.recorded) == 1
    t.close()
    assert sim.registered == {}
    calls = sim.unregister_calls
    t.close()  # idempotent
    assert sim.unregister_calls == calls
    with pytest.raises(Exception, match="closed"):
        t.submit(0, slots[0].view(shape))


@pytest.mark.parametrize("refuse", [False, True])
def test_sim_fast_ring_never_sees_an_unfinished_copy(sim, refuse):
    sim.refuse_register = refuse
    shape = (4, 3, 8, 8)
    slots = _anon_slots(3, int(np.prod(shape)))
    with _cuda.CudaTransfer("cuda", prefetch_depth=2) as t:
        t.register(slots)
        assert t.mode == ("staging" if refuse else "registered")
        assert _sim_ring(t, slots, shape, 60, sim) == 0
        assert t.batches_copied == 60 and t.bytes_copied == 60 * slots[0].numel()


def test_sim_broken_reclaim_is_caught(sim):
    class Broken(_cuda.CudaTransfer):
        def reclaim(self, timeout_s=0.0):
            released = [c.slot for c in self._ledger.pending if c.slot is not None]
            for c in self._ledger.pending:
                c.slot = None
            return self._ledger.take_done() + released

    shape = (4, 3, 8, 8)
    slots = _anon_slots(3, int(np.prod(shape)))
    with Broken("cuda", prefetch_depth=2) as t:
        t.register(slots)
        assert _sim_ring(t, slots, shape, 30, sim) > 0


def test_sim_staging_fallback_logs_once_and_frees_the_slot_at_once(sim, caplog):
    sim.refuse_register = True
    _cuda._fallback_logged = False
    shape = (2, 3, 4, 4)
    slots = _anon_slots(2, int(np.prod(shape)))
    with caplog.at_level("DEBUG", logger="ringload._cuda"):
        for _ in range(2):
            with _cuda.CudaTransfer("cuda", prefetch_depth=2) as t:
                t.register(slots)
                assert t.mode == "staging" and len(t._staging) == 2
                sim.stalled = True
                _fill(slots[0], 1)
                want = slots[0].view(shape).clone()
                out = t.submit(0, slots[0].view(shape))
                assert t.reclaim() == [0]  # the memcpy to staging was the last read of the slot
                slots[0].fill_(0)
                sim.stalled = False
                sim.run_all()
                assert torch.equal(out.as_subclass(torch.Tensor), want)
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "staging" in r.getMessage()]
    assert len(warnings) == 1
    assert "already mapped" in warnings[0].getMessage()


def test_sim_depth_bounds_copies_in_flight_with_a_timeout(sim):
    from ringload.errors import LoaderTimeoutError

    shape = (1, 3, 4, 4)
    slots = _anon_slots(4, int(np.prod(shape)))
    with _cuda.CudaTransfer("cuda", prefetch_depth=2, timeout_s=0.05) as t:
        t.register(slots)
        sim.stalled = True
        t.submit(0, slots[0].view(shape))
        t.submit(1, slots[1].view(shape))
        assert t.in_flight == 2
        with pytest.raises(LoaderTimeoutError, match="timeout_s"):
            t.submit(2, slots[2].view(shape))
        sim.stalled = False
        t.submit(2, slots[2].view(shape))  # room after the oldest finished
        assert t.in_flight <= 2


def test_sim_frames_outside_the_ring_or_strided_are_staged(sim):
    shape = (2, 3, 4, 4)
    slots = _anon_slots(2, int(np.prod(shape)))
    with _cuda.CudaTransfer("cuda") as t:
        t.register(slots)
        strided = slots[0].view(shape).transpose(-1, -2)
        out = t.submit(0, strided)
        assert t.reclaim() == [0]  # staged: slot free at once
        sim.run_all()
        assert torch.equal(out.as_subclass(torch.Tensor), strided)


def test_sim_finalizer_unregisters_a_dropped_transfer(sim):
    import gc

    slots = _anon_slots(2, 5000)
    t = _cuda.CudaTransfer("cuda")
    t.register(slots)
    assert sim.registered
    del t
    gc.collect()
    assert sim.registered == {}
