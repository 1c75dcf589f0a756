"""Two versions of ringload side by side: the same loader runs, from two source trees, in
interleaved rounds (A B A B ...), each run in a fresh process; images/s per mode and the
B/A ratio per round, with its spread. Used to check that a refactor did not cost speed.

    PYTHONPATH=. python bench/engine_ab.py --a /path/to/old/checkout --b . --out ab.json

Data: generated camera-like H.264 videos (ringload.synth), cached in --data-dir.
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

_RUN = r"""
import json, sys, time
import ringload
paths, mode, batches, batch_size, workers = json.loads(sys.argv[1])
if __name__ == "__main__":
    kw = dict(batch_size=batch_size, sampling=mode, num_workers=workers, seed=0, drop_last=True, size=(224, 224))
    t_start = time.perf_counter()
    with ringload.VideoLoader(paths, **kw) as loader:
        def endless():
            e = 0
            while True:
                loader.set_epoch(e)
                yield from loader
                e += 1
        it = endless()
        next(it)
        first_batch_s = time.perf_counter() - t_start
        for _ in range(loader.stats()["num_slots"]):  # drain what the ring filled during start-up
            next(it)
        t0 = time.perf_counter()
        n = 0
        for _ in range(batches):
            n += len(next(it))
        dt = time.perf_counter() - t0
        st = loader.stats()
    print(json.dumps({"images_per_s": n / dt, "decoded_per_delivered": st["decoded_frames"] / max(1, st["frames"]),
                      "first_batch_s": first_batch_s}))
"""


def _videos(folder: str, count: int, seconds: float, width: int, height: int) -> list[str]:
    from ringload.synth import make_video

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        p = os.path.join(folder, f"v{i}_{width}x{height}_{seconds:g}s.mp4")
        if not os.path.exists(p):
            make_video(p, width=width, height=height, fps=30, seconds=seconds, gop=30, bframes=2, seed=i)
        paths.append(p)
    return paths


def _one(tree: str, paths, mode: str, batches: int, batch_size: int, workers: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    out = subprocess.run(
        [sys.executable, "-c", _RUN, json.dumps([paths, mode, batches, batch_size, workers])],
        capture_output=True, text=True, env=env, timeout=900, cwd=os.path.abspath(tree),
    )
    if out.returncode != 0:
        raise RuntimeError(f"{tree} {mode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="source tree A (the reference)")
    ap.add_argument("--b", required=True, help="source tree B")
    ap.add_argument("--modes", default="sequential,bounded,strict")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", default="854x480")
    ap.add_argument("--data-dir", default="/tmp/ringload-ab")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.size.split("x"))
    paths = _videos(args.data_dir, args.videos, args.seconds, w, h)
    modes = args.modes.split(",")
    runs = {m: {"a": [], "b": []} for m in modes}
    for r in range(args.rounds):
        for m in modes:
            for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
                tree = args.a if side == "a" else args.b
                runs[m][side].append(_one(tree, paths, m, args.batches, args.batch_size, args.workers))
    report = {"argv": sys.argv, "machine": platform.platform(), "cpus": os.cpu_count(), "time": time.time(), "modes": {}}
    print(f"{'mode':<11} {'A img/s (median)':>17} {'B img/s (median)':>17} {'B/A median':>10} {'B/A min-max':>14}"
          f" {'A 1st s':>8} {'B 1st s':>8}")
    for m in modes:
        a = [x["images_per_s"] for x in runs[m]["a"]]
        b = [x["images_per_s"] for x in runs[m]["b"]]
        ratios = [y / x for x, y in zip(a, b)]
        report["modes"][m] = {"a": runs[m]["a"], "b": runs[m]["b"], "ratio_per_round": ratios}
        print(f"{m:<11} {statistics.median(a):>17.1f} {statistics.median(b):>17.1f} {statistics.median(ratios):>10.3f} "
              f"{min(ratios):>6.3f}-{max(ratios):<6.3f}"
              f" {statistics.median(x['first_batch_s'] for x in runs[m]['a']):>8.2f}"
              f" {statistics.median(x['first_batch_s'] for x in runs[m]['b']):>8.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
