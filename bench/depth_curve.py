"""Images/s and decoded frames per delivered frame against the look-ahead depth, strict and
bounded, in interleaved rounds (each run a fresh process).

    PYTHONPATH=. python bench/depth_curve.py --depths 8,32,128 --out depth.json

Data: camera-like H.264 videos made by ringload.synth (GOP 30, 2 B-frames), cached in --data-dir.
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
paths, mode, depth, batches, batch_size, workers = json.loads(sys.argv[1])
if __name__ == "__main__":
    kw = dict(batch_size=batch_size, sampling=mode, num_workers=workers, seed=0, prefetch_batches=depth, size=(224, 224))
    with ringload.VideoLoader(paths, **kw) as loader:
        def endless():  # whole passes one after the other (a deep window pays ahead within a pass)
            e = 0
            while True:
                loader.set_epoch(e)
                yield from loader
                e += 1
        t_start = time.perf_counter()
        it = endless()
        next(it)
        first_s = time.perf_counter() - t_start
        s0 = loader.stats()
        t0 = time.perf_counter()
        n = 0
        for _ in range(batches):
            n += len(next(it))
        dt = time.perf_counter() - t0
        s1 = loader.stats()
    dec = s1["decoded_frames"] - s0["decoded_frames"]
    print(json.dumps({"images_per_s": n / dt, "first_batch_s": first_s,
                      "decoded_per_delivered": dec / max(1, s1["frames"] - s0["frames"])}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="8,32,128")
    ap.add_argument("--modes", default="strict,bounded")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=150, help="timed batches: cover whole passes")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", default="854x480")
    ap.add_argument("--data-dir", default="/tmp/ringload-depth")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from ringload.synth import make_video

    w, h = (int(x) for x in args.size.split("x"))
    os.makedirs(args.data_dir, exist_ok=True)
    paths = []
    for i in range(args.videos):
        p = os.path.join(args.data_dir, f"v{i}_{w}x{h}_{args.seconds:g}s.mp4")
        if not os.path.exists(p):
            make_video(p, width=w, height=h, fps=30, seconds=args.seconds, gop=30, bframes=2, seed=i)
        paths.append(p)
    depths = [int(d) for d in args.depths.split(",")]
    modes = args.modes.split(",")
    runs = {f"{m}@{d}": [] for m in modes for d in depths}
    for r in range(args.rounds):
        order = [(m, d) for m in modes for d in depths]
        for m, d in order if r % 2 == 0 else order[::-1]:
            out = subprocess.run(
                [sys.executable, "-c", _RUN, json.dumps([paths, m, d, args.batches, args.batch_size, args.workers])],
                capture_output=True, text=True, timeout=1800,
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            runs[f"{m}@{d}"].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'mode':<9} {'depth':>5} {'img/s median':>12} {'min-max':>13} {'decoded/delivered':>17} {'first batch s':>13}")
    for key, rs in runs.items():
        m, d = key.split("@")
        ips = [x["images_per_s"] for x in rs]
        print(f"{m:<9} {d:>5} {statistics.median(ips):>12.1f} {min(ips):>6.1f}-{max(ips):<6.1f} "
              f"{statistics.median(x['decoded_per_delivered'] for x in rs):>17.2f} {statistics.median(x['first_batch_s'] for x in rs):>13.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"argv": sys.argv, "machine": platform.platform(), "cpus": os.cpu_count(), "time": time.time(),
                       "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
