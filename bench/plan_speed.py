"""Benchmark: building a sampling plan and computing one batch, at 10^10 samples.

    PYTHONPATH=. python bench/plan_speed.py [--videos 1000000] [--frames 10000] [--json out.json]

For each mode (and a DDP rank), reports plan construction time (min and median of
--repeat builds, epochs 0, 1, ...), the peak memory the construction allocates
(tracemalloc, in a separate build so tracing does not skew the time), and the time of
``plan[k]`` plus ``plan.chunks(k)`` over random k (median and max of --batches calls).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np

import ringload
from ringload import plan_epoch

CASES = [
    ("strict", dict(mode="strict")),
    ("bounded (defaults)", dict(mode="bounded")),
    ("bounded chunk_len=32", dict(mode="bounded", chunk_len=32)),
    ("bounded rank 7/8", dict(mode="bounded", rank=7, world_size=8)),
    ("sequential", dict(mode="sequential")),
]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(lengths, batch_size, kwargs, batches, rng, repeat):
    builds = []
    for epoch in range(repeat):
        t0 = time.perf_counter()
        plan = plan_epoch(lengths, batch_size=batch_size, seed=1, epoch=epoch, **kwargs)
        builds.append(time.perf_counter() - t0)

    tracemalloc.start()
    plan_epoch(lengths, batch_size=batch_size, seed=1, epoch=0, **kwargs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    ks = rng.integers(0, len(plan), batches)
    times = []
    for k in ks:
        t0 = time.perf_counter()
        plan[int(k)]
        plan.chunks(int(k))
        times.append(time.perf_counter() - t0)
    return dict(
        batches=len(plan),
        samples=plan.num_samples,
        chunks=getattr(plan, "num_chunks", None),
        build_min_s=min(builds),
        build_median_s=statistics.median(builds),
        build_peak_mib=peak / 2**20,
        getitem_median_ms=statistics.median(times) * 1e3,
        getitem_max_ms=max(times) * 1e3,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=10**6)
    ap.add_argument("--frames", type=int, default=10**4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=200, help="plan[k] calls per case")
    ap.add_argument("--repeat", type=int, default=3, help="plan builds per case (epochs 0..repeat-1)")
    ap.add_argument("--json", help="write results and system metadata here")
    args = ap.parse_args(argv)

    lengths = np.full(args.videos, args.frames, dtype=np.int64)
    rng = np.random.default_rng(0)
    rows = []
    for name, kwargs in CASES:
        r = measure(lengths, args.batch_size, kwargs, args.batches, rng, args.repeat)
        r["case"] = name
        rows.append(r)

    total = int(lengths.sum())
    print(f"{args.videos} videos x {args.frames} frames = {total:.3g} samples, batch_size {args.batch_size}")
    print(f"{'case':24s} {'batches':>12s} {'chunks':>12s} {'build min s':>11s} {'median s':>9s} {'peak MiB':>9s} "
          f"{'plan[k] ms':>11s} {'max ms':>7s}")
    for r in rows:
        chunks = f"{r['chunks']:.3g}"
        print(
            f"{r['case']:24s} {r['batches']:12d} {chunks:>12s} {r['build_min_s']:11.3f} {r['build_median_s']:9.3f} "
            f"{r['build_peak_mib']:9.1f} "
            f"{r['getitem_median_ms']:11.3f} {r['getitem_max_ms']:7.3f}"
        )
    if args.json:
        meta = dict(
            cpu=_cpu(),
            cores=os.cpu_count(),
            python=sys.version.split()[0],
            numpy=np.__version__,
            ringload=ringload.__version__,
            git_commit=_git_commit(),
            command=" ".join([os.path.basename(sys.executable), *sys.argv]),
            videos=args.videos,
            frames=args.frames,
            batch_size=args.batch_size,
        )
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
