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
from helpers import REPO as _REPO

REPO = str(_REPO)


def _env() -> dict:
    """Environment for a child interpreter: this checkout first, the caller's PYTHONPATH kept
    (on a GPU machine PyAV and posix_ipc may come from a --target directory on it)."""
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": REPO + (os.pathsep + old if old else "")}


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
                         env=_env())
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
@pytest.mark.parametrize("register_memory", [True, False])
@pytest.mark.parametrize("clip", [False, True])
def test_gpu_copy_of_the_loaders_hwc_view_equals_cpu(shm_slots, register_memory, clip):
    b, tt, h, w = 6, (3 if clip else 1), 17, 19
    slots = shm_slots(3, b * tt * h * w * 3)
    gpu = _cuda.CudaTransfer("cuda", register_memory=register_memory)
    cpu = CpuTransfer()
    try:
        gpu.register(slots)
        for k in range(6):
            s = k % 3
            _fill(slots[s], 50 + k)
            hwc = slots[s].view(b, tt, h, w, 3)[: b - k % 2]
            view = hwc.permute(0, 1, 4, 2, 3) if clip else hwc[:, 0].permute(0, 3, 1, 2)
            got = gpu.submit(s, view)
            want = cpu.submit(s, view)
            assert got.shape == want.shape and got.stride() == want.stride()
            assert torch.equal(got.cpu(), want)
            gpu.reclaim(timeout_s=10.0)
    finally:
        gpu.close()


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


@pytest.mark.cuda
@pytest.mark.parametrize("register_memory", [True, False])
def test_submit_and_reclaim_never_make_the_host_wait(shm_slots, register_memory):
    shape = (8, 3, 32, 32)
    slots = shm_slots(3, int(np.prod(shape)))
    with _cuda.CudaTransfer("cuda", prefetch_depth=3, register_memory=register_memory) as t:
        t.register(slots)
        t.submit(0, slots[0].view(shape))  # warm the allocators
        torch.cuda.synchronize()
        t.reclaim(timeout_s=5.0)
        torch.cuda.set_sync_debug_mode("error")
        try:
            outs = [t.submit(s, slots[s].view(shape)) for s in (1, 2)]
            t.reclaim(0.0)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert all(torch.equal(o.cpu(), slots[s].view(shape)) for o, s in zip(outs, (1, 2)))


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


class _EarlyReleaseTransfer(_cuda.CudaTransfer):
    """A broken transfer for control tests: hands slots back before their copy ran."""

    def reclaim(self, timeout_s=0.0):
        released = [c.slot for c in self._ledger.pending if c.slot is not None]
        for c in self._ledger.pending:
            c.slot = None
        return self._ledger.take_done() + released


@pytest.mark.cuda
def test_stress_detects_early_reuse_in_a_broken_transfer(shm_slots):
    """Control: a transfer that hands slots back before the copy ran is caught by the stress test."""

    shape = (8, 3, 96, 96)
    slots = shm_slots(3, int(np.prod(shape)))
    with _EarlyReleaseTransfer("cuda", prefetch_depth=2) as t:
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
                         env=_env())
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
    shape = (4, 3, 8, 8)
    slots = _anon_slots(3, int(np.prod(shape)))
    with _EarlyReleaseTransfer("cuda", prefetch_depth=2) as t:
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


def test_sim_non_dense_frames_are_staged(sim):
    shape = (2, 3, 4, 4)
    slots = _anon_slots(2, int(np.prod(shape)))
    with _cuda.CudaTransfer("cuda") as t:
        t.register(slots)
        _fill(slots[0], 4)
        gappy = slots[0].view(shape)[:, :, ::2]  # not a permutation of a dense block
        assert _cuda.dense_order(gappy) is None and not gappy.is_contiguous()
        out = t.submit(0, gappy)
        assert t.reclaim() == [0]  # staged: slot free at once
        sim.run_all()
        assert torch.equal(out.as_subclass(torch.Tensor), gappy)


@pytest.mark.parametrize("clip", [False, True])
def test_sim_permuted_hwc_view_is_copied_from_the_registered_slot(sim, clip):
    """The loader's view: slots hold (B, T, H, W, 3); frames are (B, C, H, W) or (B, T, C, H, W)."""
    b, tt, h, w = 3, (2 if clip else 1), 5, 6  # frames samples have T = 1 in the ring
    slots = _anon_slots(2, b * tt * h * w * 3)
    cpu = CpuTransfer()
    with _cuda.CudaTransfer("cuda", timeout_s=2.0) as t:
        t.register(slots)
        _fill(slots[1], 8)
        hwc = slots[1].view(b, tt, h, w, 3)
        view = hwc.permute(0, 1, 4, 2, 3) if clip else hwc[:, 0].permute(0, 3, 1, 2)
        sim.stalled = True
        out = t.submit(1, view)
        assert t.reclaim() == []  # registered path: the slot waits for the copy
        sim.stalled = False
        assert t.reclaim(timeout_s=1.0) == [1]
        want = cpu.submit(1, view)
        got = out.as_subclass(torch.Tensor)
        assert got.shape == view.shape and got.stride() == want.stride()
        assert torch.equal(got, want)


def test_dense_order():
    x = torch.zeros(2, 3, 4, 5)
    assert _cuda.dense_order(x) is None
    p = x.permute(0, 3, 1, 2)
    order = _cuda.dense_order(p)
    assert p.permute(order).is_contiguous()
    assert order == [0, 2, 3, 1] and _cuda._inverse(order) == [0, 3, 1, 2]
    assert p.permute(order).permute(_cuda._inverse(order)).stride() == p.stride()
    assert _cuda.dense_order(x[:, :, ::2]) is None


def test_sim_finalizer_unregisters_a_dropped_transfer(sim):
    import gc

    slots = _anon_slots(2, 5000)
    t = _cuda.CudaTransfer("cuda")
    t.register(slots)
    assert sim.registered
    del t
    gc.collect()
    assert sim.registered == {}


# ---------------------------------------------------------------- CPU: the GPU benchmark script


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_overlap", os.path.join(REPO, "bench", "gpu_overlap.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_help_and_clear_exit_without_cuda(tmp_path):
    script = os.path.join(REPO, "bench", "gpu_overlap.py")
    env = _env()
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "--source" in out.stdout and "--make-videos" in out.stdout
    if torch.cuda.is_available():
        return  # the no-GPU message cannot be seen on a GPU machine; --help was checked above
    out = subprocess.run([sys.executable, script, "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 2 and "no CUDA device" in out.stderr


def test_bench_trace_analysis_measures_copy_overlap(tmp_path):
    g = _bench_module()
    ev = lambda cat, name, stream, ts, dur, **a: {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": stream,
                                                 "ts": ts, "dur": dur, "args": {"stream": stream, **a}}
    trace = {"traceEvents": [
        ev("kernel", "conv", 7, 0, 100),
        ev("kernel", "conv", 7, 150, 100),
        ev("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 13, 80, 40, bytes=1000),  # 20 of 40 us overlap
        ev("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", 13, 160, 20, bytes=1000),  # all 20 overlap
        ev("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", 13, 300, 40, bytes=500),  # none
        ev("cpu_op", "aten::copy_", 1, 0, 500),
        {"ph": "i", "name": "marker", "ts": 0},
    ]}
    events = g.gpu_events(trace)
    assert len(events) == 5
    st = g.overlap_stats(events)
    assert st["h2d_copies"] == 3 and st["h2d_pinned"] == 2 and st["h2d_pageable"] == 1
    assert st["h2d_bytes"] == 2500 and st["h2d_streams"] == ["13"] and st["kernel_streams"] == ["7"]
    assert st["h2d_time_ms"] == pytest.approx(0.1) and st["h2d_overlapped_ms"] == pytest.approx(0.04)
    assert st["h2d_overlap_fraction"] == pytest.approx(0.4)
    png = tmp_path / "t.png"
    assert g.plot_timeline(events, st, png) and png.stat().st_size > 1000


def test_bench_nvdec_check_reports_cpu_decoding_and_what_the_build_has(videos_dir):
    g = _bench_module()
    res = g.nvdec_check(str(videos_dir / "chaplin.mp4"), 20, 64)
    assert res["cpu"]["frames"] == 20 and res["cpu"]["fps"] > 0
    assert isinstance(res["h264_cuvid_in_build"], bool)
    for label in ("hwaccel_cuda", "h264_cuvid", "h264_cuvid_resize"):
        if label in res:  # without a GPU these carry the error, with one a rate
            assert "error" in res[label] or res[label]["frames"] == 20


# ---------------------------------------------------------------- GPU: the VideoLoader on device="cuda"


LOADER_KW = dict(batch_size=8, size=(24, 32), crop="random_resized", hflip=True, sampling="strict", seed=7,
                 num_workers=2)


def _collect_any(loader, limit=None):
    out = []
    for k, b in enumerate(loader):
        out.append({"frames": b.frames.cpu().contiguous().numpy().copy(), "device": b.frames.device.type,
                    "stride": tuple(b.frames.stride()), "video": b.video_index.numpy().copy(),
                    "frame": b.frame_index.numpy().copy(), "pts": b.pts_seconds.numpy().copy()})
        if limit is not None and k + 1 >= limit:
            break
    return out


def test_loader_asked_for_cuda_without_it_says_so_and_leaves_nothing(engine_videos, monkeypatch):
    import ringload

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(ConfigError, match="device='cuda'.*use device='cpu'"):
        with ringload.VideoLoader(engine_videos, device="cuda", **LOADER_KW) as loader:
            next(iter(loader))
    assert set(os.listdir("/dev/shm")) <= before


@pytest.mark.cuda
@pytest.mark.parametrize("sample", ["frames", "clips"])
def test_loader_on_cuda_gives_the_cpu_batches_bit_for_bit(engine_videos, sample):
    import ringload

    kw = dict(LOADER_KW, sample=sample, **({"clip_len": 3, "frame_stride": 2} if sample == "clips" else {}))
    with ringload.VideoLoader(engine_videos, device="cpu", **kw) as loader:
        ref = _collect_any(loader)
    with ringload.VideoLoader(engine_videos, device="cuda", **kw) as loader:
        got = _collect_any(loader)
        transfer = loader._transfer
        assert isinstance(transfer, _cuda.CudaTransfer) and transfer.mode == "registered"
        per_image = transfer.bytes_copied / sum(len(b["video"]) for b in got)
    assert all(b["device"] == "cuda" for b in got) and all(b["device"] == "cpu" for b in ref)
    assert [b["stride"] for b in got] == [b["stride"] for b in ref]
    for k, (a, b) in enumerate(zip(ref, got)):
        for key in ("frames", "video", "frame", "pts"):
            assert np.array_equal(a[key], b[key]), (k, key)
    assert len(ref) == len(got)
    # Only uint8 frames at their final size crossed: C * H * W (* T) bytes per sample.
    assert per_image == 3 * 24 * 32 * (3 if sample == "clips" else 1)


@pytest.mark.cuda
def test_loader_on_cuda_survives_a_decoder_respawned_after_cuda_init(engine_videos):
    import signal

    import ringload

    with ringload.VideoLoader(engine_videos, device="cpu", **LOADER_KW) as loader:
        ref = _collect_any(loader)
    with ringload.VideoLoader(engine_videos, device="cuda", prefetch_batches=1, **LOADER_KW) as loader:
        got = []
        for k, b in enumerate(loader):
            got.append({"frames": b.frames.cpu().numpy().copy(), "video": b.video_index.numpy().copy()})
            if k == 2:
                os.kill(loader.stats()["decoder_pids"][0], signal.SIGKILL)
        stats = loader.stats()
        decs = loader.stats()["decoders"]
    assert stats["decoder_restarts"] >= 1
    assert all(d["torch_loaded"] is False for d in decs)  # the replacement, spawned after CUDA init, too
    assert len(got) == len(ref)
    for a, b in zip(ref, got):
        assert np.array_equal(a["frames"], b["frames"]) and np.array_equal(a["video"], b["video"])


LOADER_ORDER_SCRIPT = """
import json, sys, numpy as np, torch, ringload
paths, mode = json.loads(sys.argv[1]), sys.argv[2]
kw = dict(batch_size=8, size=(24, 32), crop="center", sampling="strict", seed=1, num_workers=2)
with ringload.VideoLoader(paths, device="cpu", **kw) as cpu:
    ref = [b.frames.contiguous().numpy().copy() for b in cpu]
assert not torch.cuda.is_initialized()
got = []
if mode == "cuda_before":
    torch.zeros(1, device="cuda")
    with ringload.VideoLoader(paths, device="cuda", **kw) as loader:
        got = [b.frames.cpu().contiguous().numpy() for b in loader]
elif mode == "cuda_after_start":
    with ringload.VideoLoader(paths, device="cpu", **kw) as loader:
        it = iter(loader)
        got.append(next(it).frames.contiguous().numpy().copy())  # decoders are running
        assert not torch.cuda.is_initialized()
        torch.zeros(1, device="cuda")
        got += [b.frames.cuda(non_blocking=True).cpu().contiguous().numpy() for b in it]
elif mode == "cuda_by_loader":
    with ringload.VideoLoader(paths, device="cuda", **kw) as loader:
        got = [b.frames.cpu().contiguous().numpy() for b in loader]
assert torch.cuda.is_initialized()
assert len(got) == len(ref) and all(np.array_equal(a, b) for a, b in zip(ref, got))
print("ok", len(got))
"""


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["cuda_before", "cuda_after_start", "cuda_by_loader"])
def test_cuda_initialised_before_or_after_the_loader_starts(engine_videos, mode):
    import json

    out = subprocess.run([sys.executable, "-c", LOADER_ORDER_SCRIPT, json.dumps(engine_videos), mode],
                         capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok ")


@pytest.mark.cuda
def test_loader_on_cuda_no_memory_leak_over_many_epochs(engine_videos):
    import ringload

    kw = dict(LOADER_KW, sampling="bounded")

    def run_epochs(loader, first, n):
        for e in range(first, first + n):
            loader.set_epoch(e)
            acc = torch.zeros((), device="cuda")
            for b in loader:
                acc += b.frames.float().mean()
            acc.item()

    with ringload.VideoLoader(engine_videos, device="cuda", **kw) as loader:
        run_epochs(loader, 0, 2)  # warm the caching allocators
        torch.cuda.synchronize()
        gpu0, host0 = torch.cuda.memory_allocated(), _host_allocated_bytes()
        run_epochs(loader, 2, 20)
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == gpu0
        assert _host_allocated_bytes() == host0
        slots = list(loader._slot_tensors)
        assert all(s.is_pinned() for s in slots)
    assert not any(s.is_pinned() for s in slots)  # close() unregistered the ring
    del slots
