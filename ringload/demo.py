"""``make demo``: generate a small dataset and show what ringload does with it.

Writes a few camera-like 480p H.264 videos (``ringload.synth``) into a cache folder, then
runs the loader over them with bounded, strict and sequential sampling and prints the
throughput of each with its settings. Everything heavy is imported inside ``main`` so that
the decoder processes, which import this module as their main module, stay light.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

log = logging.getLogger(__name__)

_VIDEOS = 8
_SECONDS = 10
_GOP = 30


def _dataset(folder: str) -> list[str]:
    from .synth import make_video

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(_VIDEOS):
        path = os.path.join(folder, f"demo_{i:02d}.mp4")
        if not os.path.exists(path):
            t = time.perf_counter()
            tmp = path + ".part.mp4"
            make_video(tmp, width=854, height=480, fps=30, seconds=_SECONDS, gop=_GOP, bframes=2, seed=i)
            os.replace(tmp, path)
            log.info("  made %s in %.1f s", path, time.perf_counter() - t)
        paths.append(path)
    return paths


def _run(paths, *, sampling: str, batches: int, batch_size: int, workers: int) -> dict:
    from .loader import VideoLoader

    t0 = time.perf_counter()
    with VideoLoader(paths, batch_size=batch_size, sampling=sampling, num_workers=workers, seed=0) as loader:
        t_ready = time.perf_counter()
        n = 0
        it = iter(loader)
        first = next(it)  # the first batch includes start-up (decoders spawning, first seeks)
        t_first = time.perf_counter()
        # The ring fills while the loader starts; drain it so the timed batches are decoded
        # while they are timed (steady state), not served from that buffer.
        for _ in range(loader.stats()["num_slots"]):
            if next(it, None) is None:
                break
        t_start = time.perf_counter()
        s_start = loader.stats()
        for b in it:
            n += len(b)
            if n >= batches * batch_size:
                break
        t_end = time.perf_counter()
        stats = loader.stats()
    return {
        "sampling": sampling,
        "shape": tuple(first.frames.shape),
        "images": n,
        "images_per_s": n / (t_end - t_start) if t_end > t_start and n else 0.0,
        "startup_s": t_first - t0,
        "build_s": t_ready - t0,
        # Both counts in the steady state: the ring is full of decoded look-ahead at both ends.
        "decoded_per_delivered": (stats["decoded_frames"] - s_start["decoded_frames"]) / max(1, n),
        "ring_mib": stats["ring_bytes"] / 2**20,
        "workers": stats["num_workers"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ringload.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ringload", "demo"))
    parser.add_argument("--batches", type=int, default=12, help="timed batches per run, after the ring has drained (default 12)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="decoder processes (default: one per CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workers = args.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    log.info("ringload demo: %d synthetic 854x480 H.264 videos (%d s at 30 fps, GOP %d, 2 B-frames) in %s",
             _VIDEOS, _SECONDS, _GOP, args.dir)
    paths = _dataset(args.dir)
    log.info("loader: batch_size=%d, size=(224, 224), crop='random_resized', %d decoder processes, %d batches per run",
             args.batch_size, workers, args.batches)
    rows = []
    for sampling in ("bounded", "strict", "sequential"):
        r = _run(paths, sampling=sampling, batches=args.batches, batch_size=args.batch_size, workers=workers)
        rows.append(r)
        log.info(
            "  %-10s %7.1f images/s  (batch %s uint8, start-up %.1f s, %.2f frames decoded per frame delivered, ring %.0f MiB)",
            sampling, r["images_per_s"], "x".join(map(str, r["shape"])), r["startup_s"], r["decoded_per_delivered"], r["ring_mib"],
        )
    seq = rows[2]["images_per_s"]
    if seq > 0:
        log.info("bounded / sequential = %.2f, strict / sequential = %.2f (sequential is the decode ceiling)",
                 rows[0]["images_per_s"] / seq, rows[1]["images_per_s"] / seq)
    return 0


if __name__ == "__main__":
    sys.exit(main())
