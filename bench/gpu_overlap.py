"""Does the loader keep a GPU busy? A small conv net trained on batches from ringload on CUDA.

Measures, on one GPU:

- the model's own rate on a batch already on the GPU, the loader's rate alone, and the
  fraction of step time the training loop loses waiting for data when the two run together
  (``1 - T_model_alone / T_fed`` over the same steps);
- a torch.profiler trace of a few fed steps (Chrome trace JSON) and a PNG timeline made from
  it, with the share of host-to-device copy time that overlaps kernels on other streams, and
  whether those copies read page-locked ("Pinned") or pageable memory;
- bytes copied host-to-device per image (from the transfer and from the trace);
- NVDEC: whether this PyAV can decode H.264 on the GPU (hwaccel "cuda" or h264_cuvid) and how
  fast, next to CPU decoding of the same file.

The model's depth is chosen so that it runs at ``--model-ratio`` of the loader's rate (the
case where the loader is fast enough and waiting should be near zero), unless ``--depth`` is
given. ``--source ring`` replaces the video loader by a synthetic ring (a thread writing
batches into shared-memory slots) to measure the copy path alone.

Run ``python bench/gpu_overlap.py --help``. Without CUDA it exits with status 2 and says so.
Results: ``<out>/gpu_overlap.json``, ``<out>/trace.json``, ``<out>/timeline.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import queue
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="gpu_overlap.py",
        description="Fraction of training-step time spent waiting for ringload batches on a CUDA GPU, "
        "with a profiler trace of the host-to-device copy overlapping compute, and an NVDEC check.",
    )
    p.add_argument("--source", choices=["loader", "ring"], default="loader",
                   help="loader: ringload.VideoLoader on --videos; ring: synthetic ring + CudaTransfer only")
    p.add_argument("--videos", default=None,
                   help="video directory for --source loader (default: ../shared/videos, or --make-videos output)")
    p.add_argument("--make-videos", type=int, default=0, metavar="N",
                   help="first write N synthetic 1080p30 H.264 videos (ringload.synth) into --data-dir and use them")
    p.add_argument("--video-seconds", type=float, default=10.0, help="length of each --make-videos video")
    p.add_argument("--data-dir", default="/tmp/ringload_gpu_videos")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--size", type=int, default=224, help="frames are size x size RGB uint8")
    p.add_argument("--sampling", default="bounded", help="loader sampling: bounded | strict | sequential")
    p.add_argument("--num-workers", type=int, default=None, help="decoder processes (loader default when omitted)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps before each measurement")
    p.add_argument("--depth", type=int, default=8, help="3x3 conv blocks (at 1/8 of the input size)")
    p.add_argument("--width", type=int, default=256, help="channels of the conv blocks")
    p.add_argument("--repeats", type=int, default=0,
                   help="forward+backward passes per batch (gradient accumulation on the same batch); "
                   "0 = choose so the model runs at --model-ratio of the loader's rate, at constant memory")
    p.add_argument("--model-ratio", type=float, default=0.7)
    p.add_argument("--prefetch-depth", type=int, default=2, help="copies in flight (--source ring)")
    p.add_argument("--ring-slots", type=int, default=6, help="slots of the synthetic ring (--source ring)")
    p.add_argument("--profile-steps", type=int, default=6, help="fed steps recorded by torch.profiler")
    p.add_argument("--skip-nvdec", action="store_true", help="skip the NVDEC check")
    p.add_argument("--nvdec-video", default=None, help="H.264 file for the NVDEC check (default: a --make-videos file)")
    p.add_argument("--nvdec-frames", type=int, default=300)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu"), help="output directory")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- batch sources


class RingSource:
    """Synthetic ring: a producer thread memcpys pre-made batches into shared-memory slots
    (what decoders do), the consumer submits each completed slot to a CudaTransfer."""

    def __init__(self, args, torch):
        import mmap

        import numpy as np
        import posix_ipc

        from ringload._cuda import CudaTransfer

        self.torch = torch
        b, s = args.batch_size, args.size
        self.shape = (b, 3, s, s)
        self.slot_bytes = b * 3 * s * s
        n = args.ring_slots
        shm = posix_ipc.SharedMemory(f"/ringload-bench-{os.getpid()}", posix_ipc.O_CREX, mode=0o600,
                                     size=n * self.slot_bytes)
        try:
            self._mm = mmap.mmap(shm.fd, n * self.slot_bytes)
        finally:
            shm.close_fd()
            shm.unlink()
        flat = torch.frombuffer(self._mm, dtype=torch.uint8)
        self.slots = [flat[i * self.slot_bytes:(i + 1) * self.slot_bytes] for i in range(n)]
        rng = np.random.default_rng(0)
        self._pool = [torch.from_numpy(rng.integers(0, 256, self.slot_bytes, dtype=np.uint8)) for _ in range(4)]
        self.transfer = CudaTransfer("cuda", prefetch_depth=args.prefetch_depth)
        self.transfer.register(self.slots)
        self._free: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue()
        for i in range(n):
            self._free.put(i)
        self._stop = threading.Event()
        self._k = 0
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def _produce(self):
        k = 0
        while not self._stop.is_set():
            try:
                slot = self._free.get(timeout=0.1)
            except queue.Empty:
                continue
            self.slots[slot].copy_(self._pool[k % len(self._pool)])
            self._ready.put(slot)
            k += 1

    def __iter__(self):
        import numpy as np

        while True:
            deadline = time.monotonic() + 60
            while True:
                for slot in self.transfer.reclaim(0.0):
                    self._free.put(slot)
                try:
                    slot = self._ready.get(timeout=0.002)
                    break
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise TimeoutError("synthetic ring produced nothing for 60 s") from None
            frames = self.transfer.submit(slot, self.slots[slot].view(self.shape))
            keys = np.arange(self._k * self.shape[0], (self._k + 1) * self.shape[0], dtype=np.uint64)
            self._k += 1
            yield frames, keys

    @property
    def bytes_copied(self):
        return self.transfer.bytes_copied

    def close(self):
        self._stop.set()
        self._thread.join(timeout=10)
        self.transfer.close()


class LoaderSource:
    """ringload.VideoLoader on device='cuda', epoch after epoch."""

    def __init__(self, args, torch):
        import ringload
        from ringload import augment

        if not hasattr(ringload, "VideoLoader"):
            sys.exit("gpu_overlap: this ringload has no VideoLoader yet; use --source ring to measure the copy path")
        kw = dict(batch_size=args.batch_size, size=(args.size, args.size), sampling=args.sampling, device="cuda")
        if args.num_workers:
            kw["num_workers"] = args.num_workers
        self.loader = ringload.VideoLoader(args.videos, **kw)
        self._keys = augment.keys_for_batch
        self.images = 0
        self.frame_bytes = 0

    def __iter__(self):
        epoch = 0
        while True:
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            for batch in self.loader:
                self.images += batch.frames.shape[0]
                self.frame_bytes += batch.frames.numel() * batch.frames.element_size()
                yield batch.frames, self._keys(batch)
            epoch += 1

    @property
    def bytes_copied(self):
        transfer = getattr(self.loader, "_transfer", None)
        return getattr(transfer, "bytes_copied", self.frame_bytes)

    def close(self):
        self.loader.close()


# ----------------------------------------------------------------------------- model


def make_model(torch, depth: int, width: int, classes: int = 1000):
    nn = torch.nn
    # Patchify stem to 1/8 of the input size: compute per block grows with width squared,
    # activation memory only with width.
    layers = [nn.Conv2d(3, width, 8, stride=8, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)]
    return nn.Sequential(*layers).cuda().to(memory_format=torch.channels_last)


class Trainer:
    def __init__(self, torch, depth, width, batch_size, repeats=1):
        from ringload import augment

        self.torch = torch
        self.repeats = repeats
        self.model = make_model(torch, depth, width)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.aug = augment.BatchAugment(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, hflip_p=0.5,
                                        mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD)
        self.labels = torch.randint(0, 1000, (batch_size,), device="cuda")
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def step(self, frames, keys, epoch=0):
        torch = self.torch
        x = self.aug(frames, keys, seed=0, epoch=epoch).contiguous(memory_format=torch.channels_last)
        for _ in range(self.repeats):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = self.loss_fn(self.model(x), self.labels[: x.shape[0]])
            loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


def time_model_alone(torch, trainer, frames, keys, steps, warmup) -> float:
    for _ in range(warmup):
        trainer.step(frames, keys)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step(frames, keys)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_fed(torch, trainer, it, steps, warmup):
    """Wall time of `steps` fed steps (no per-step sync: the host runs ahead as in training),
    and the host time spent inside next(loader)."""
    for _ in range(warmup):
        frames, keys = next(it)
        trainer.step(frames, keys)
    torch.cuda.synchronize()
    waited = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        a = time.perf_counter()
        frames, keys = next(it)
        waited += time.perf_counter() - a
        trainer.step(frames, keys)
    torch.cuda.synchronize()
    return time.perf_counter() - t0, waited


def time_loader_alone(torch, it, steps, warmup, batch_size) -> float:
    for _ in range(warmup):
        frames, _ = next(it)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    acc = torch.zeros((), device="cuda")
    for _ in range(steps):
        frames, _ = next(it)
        acc += frames[:, :, 0, 0].float().mean()
    acc.item()
    return steps * batch_size / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- profiler trace


def gpu_events(trace: dict):
    """(category, name, stream, start_us, end_us, bytes) of every GPU activity in a Kineto trace."""
    out = []
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X" or ev.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        args = ev.get("args", {})
        stream = args.get("stream", ev.get("tid"))
        start = float(ev["ts"])
        out.append((ev["cat"], ev.get("name", ""), stream, start, start + float(ev.get("dur", 0.0)), args.get("bytes")))
    return out


def _union(intervals):
    merged = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def overlap_stats(events) -> dict:
    h2d = [e for e in events if e[0] == "gpu_memcpy" and "HtoD" in e[1]]
    copy_streams = {e[2] for e in h2d}
    kernels = _union([(e[3], e[4]) for e in events if e[0] == "kernel" and e[2] not in copy_streams])
    total = sum(e[4] - e[3] for e in h2d)
    covered = 0.0
    for _, _, _, a, b, _ in h2d:
        for ka, kb in kernels:
            if kb <= a:
                continue
            if ka >= b:
                break
            covered += min(b, kb) - max(a, ka)
    kernel_streams = sorted({str(e[2]) for e in events if e[0] == "kernel"})
    return {
        "h2d_copies": len(h2d),
        "h2d_pinned": sum("Pinned" in e[1] for e in h2d),
        "h2d_pageable": sum("Pageable" in e[1] for e in h2d),
        "h2d_streams": sorted(str(s) for s in copy_streams),
        "kernel_streams": kernel_streams,
        "h2d_time_ms": total / 1e3,
        "h2d_overlapped_ms": covered / 1e3,
        "h2d_overlap_fraction": covered / total if total else None,
        "h2d_bytes": sum(int(e[5]) for e in h2d if isinstance(e[5], (int, float))),
    }


def plot_timeline(events, stats, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not events:
        return False
    t0 = min(e[3] for e in events)
    streams = sorted({e[2] for e in events}, key=str)
    fig, ax = plt.subplots(figsize=(14, 1.2 + 0.6 * len(streams)))
    colours = {"kernel": "tab:blue", "h2d": "tab:orange", "other": "tab:gray"}
    for row, s in enumerate(streams):
        for kind in ("kernel", "h2d", "other"):
            bars = [((e[3] - t0) / 1e3, max((e[4] - e[3]) / 1e3, 1e-3)) for e in events if e[2] == s and (
                (kind == "kernel" and e[0] == "kernel")
                or (kind == "h2d" and e[0] == "gpu_memcpy" and "HtoD" in e[1])
                or (kind == "other" and e[0] != "kernel" and "HtoD" not in e[1]))]
            if bars:
                ax.broken_barh(bars, (row - 0.4, 0.8), color=colours[kind])
    ax.set_yticks(range(len(streams)), [f"stream {s}" for s in streams])
    ax.set_xlabel("ms")
    frac = stats.get("h2d_overlap_fraction")
    ax.set_title("GPU timeline: kernels (blue), host-to-device copies (orange)"
                 + (f"; {100 * frac:.0f}% of copy time overlaps kernels" if frac is not None else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def profile_fed(torch, trainer, it, steps, out_dir: pathlib.Path, bytes_copied=lambda: 0) -> dict:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        frames, keys = next(it)
        trainer.step(frames, keys)
    torch.cuda.synchronize()
    images = 0
    copied0 = bytes_copied()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            frames, keys = next(it)
            images += frames.shape[0]
            trainer.step(frames, keys)
        torch.cuda.synchronize()
    trace_path = out_dir / "trace.json"
    prof.export_chrome_trace(str(trace_path))
    events = gpu_events(json.loads(trace_path.read_text()))
    stats = overlap_stats(events)
    stats["images"] = images
    stats["transfer_bytes_per_image"] = (bytes_copied() - copied0) / images if images else None
    stats["h2d_bytes_per_image"] = stats["h2d_bytes"] / images if images and stats["h2d_bytes"] else None
    stats["timeline_png"] = plot_timeline(events, stats, out_dir / "timeline.png") and "timeline.png"
    return stats


# ----------------------------------------------------------------------------- NVDEC


def nvdec_check(path: str, frames: int, size: int) -> dict:
    """Decode the first `frames` frames of an H.264 file on the CPU, with hwaccel='cuda' and with
    the h264_cuvid decoder, converting each to size x size RGB as the loader does."""
    import av

    res = {"av": av.__version__, "file": path, "frames": frames}
    try:
        from av.codec.hwaccel import HWAccel, hwdevices_available

        res["hwdevices_available"] = list(hwdevices_available())
    except ImportError:
        HWAccel = None
        res["hwdevices_available"] = []
    res["h264_cuvid_in_build"] = "h264_cuvid" in av.codecs_available

    def run(label, open_kwargs=None, decoder=None, decoder_options=None):
        try:
            t0 = time.perf_counter()
            n = 0
            hw_frames = None
            with av.open(path, **(open_kwargs or {})) as c:
                s = c.streams.video[0]
                if decoder is None:
                    s.thread_type = "AUTO"
                    src = c.decode(s)
                    ctx = s.codec_context
                else:
                    ctx = av.CodecContext.create(decoder, "r")
                    ctx.extradata = s.codec_context.extradata
                    if decoder_options:
                        ctx.options = dict(decoder_options)
                    src = (f for p in c.demux(s) for f in ctx.decode(p))
                for f in src:
                    if hw_frames is None:
                        hw_frames = getattr(ctx, "is_hwaccel", None)
                        res[f"{label}_first_frame_format"] = f.format.name
                    f.to_ndarray(format="rgb24", width=size, height=size)
                    n += 1
                    if n >= frames:
                        break
            dt = time.perf_counter() - t0
            res[label] = {"frames": n, "fps": n / dt if dt else None, "is_hwaccel": hw_frames}
        except Exception as e:  # report what this build can and cannot do
            res[label] = {"error": f"{type(e).__name__}: {e}"}

    run("cpu")
    if HWAccel is not None and "cuda" in res["hwdevices_available"]:
        run("hwaccel_cuda", {"hwaccel": HWAccel("cuda", allow_software_fallback=False)})
    if res["h264_cuvid_in_build"]:
        run("h264_cuvid", decoder="h264_cuvid")
        # NVDEC can also scale on the GPU before the frame comes down to system memory.
        run("h264_cuvid_resize", decoder="h264_cuvid", decoder_options={"resize": f"{size}x{size}"})
    return res


# ----------------------------------------------------------------------------- main


def system_info(torch) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit,
    }


def make_videos(args) -> str:
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    d = pathlib.Path(args.data_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / f"synth_{i:03d}.mp4" for i in range(args.make_videos)]
    todo = [p for p in paths if not p.exists()]
    kw = dict(width=1920, height=1080, fps=30, seconds=args.video_seconds, gop=30, bframes=2)
    with ProcessPoolExecutor(max_workers=min(len(todo) or 1, os.cpu_count() or 1),
                             mp_context=multiprocessing.get_context("spawn")) as ex:
        list(ex.map(_make_one, [(str(p), i, kw) for i, p in enumerate(todo)], timeout=1800))
    return str(d)


def _make_one(job):
    from ringload import synth

    path, seed, kw = job
    synth.make_video(path, seed=seed, **kw)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        sys.stderr.write("gpu_overlap: no CUDA device here (torch.cuda.is_available() is False); "
                         "run it on a machine with an NVIDIA GPU and a CUDA build of torch\n")
        return 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "system": system_info(torch)}
    if args.make_videos:
        args.videos = make_videos(args)
    if args.videos is None:
        args.videos = str(REPO.parent / "shared" / "videos")
    source = RingSource(args, torch) if args.source == "ring" else LoaderSource(args, torch)
    try:
        it = iter(source)
        # 3x the steps: the batches already waiting in the ring would otherwise inflate the rate.
        loader_rate = time_loader_alone(torch, it, 3 * args.steps, args.warmup, args.batch_size)
        result["loader_images_per_s"] = loader_rate
        frames, keys = next(it)
        frames = frames.clone()
        repeats = args.repeats
        if repeats <= 0:  # step time is linear in the passes per batch
            t1 = time_model_alone(torch, Trainer(torch, args.depth, args.width, args.batch_size), frames, keys, 10, 3) / 10
            target = args.batch_size / (args.model_ratio * loader_rate)
            repeats = int(min(1000, max(1, round(target / t1))))
        trainer = Trainer(torch, args.depth, args.width, args.batch_size, repeats)
        t_alone = time_model_alone(torch, trainer, frames, keys, args.steps, args.warmup)
        t_fed, waited = time_fed(torch, trainer, it, args.steps, args.warmup)
        images = args.steps * args.batch_size
        result.update({
            "depth": args.depth,
            "repeats": repeats,
            "model_images_per_s": images / t_alone,
            "fed_images_per_s": images / t_fed,
            "model_time_s": t_alone,
            "fed_time_s": t_fed,
            "data_wait_fraction": max(0.0, 1.0 - t_alone / t_fed),
            "host_time_in_next_fraction": waited / t_fed,
            "loader_faster_than_model": loader_rate > images / t_alone,
        })
        result["profile"] = profile_fed(torch, trainer, it, args.profile_steps, out, lambda: source.bytes_copied)
        result["bytes_per_image"] = {
            "expected_uint8": 3 * args.size * args.size,
            "transfer": result["profile"]["transfer_bytes_per_image"],
            "trace": result["profile"].get("h2d_bytes_per_image"),
        }
    finally:
        source.close()
    if not args.skip_nvdec:
        video = args.nvdec_video
        if video is None and args.make_videos:
            video = str(pathlib.Path(args.data_dir) / "synth_000.mp4")
        result["nvdec"] = nvdec_check(video, args.nvdec_frames, args.size) if video else {"skipped": "no H.264 file"}
    (out / "gpu_overlap.json").write_text(json.dumps(result, indent=2, default=str))
    sys.stdout.write(json.dumps({k: result[k] for k in ("loader_images_per_s", "model_images_per_s",
                                                        "fed_images_per_s", "data_wait_fraction", "repeats")},
                                indent=2) + "\n")
    sys.stdout.write(f"overlap: {json.dumps(result['profile'], default=str)}\n")
    sys.stdout.write(f"bytes per image: {result['bytes_per_image']}\n")
    if "nvdec" in result:
        sys.stdout.write(f"nvdec: {json.dumps(result['nvdec'], default=str)}\n")
    sys.stdout.write(f"wrote {out / 'gpu_overlap.json'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
