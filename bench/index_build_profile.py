"""Cold index build per file, and where its time goes (cProfile), for generated H.264 videos.

    PYTHONPATH=. python bench/index_build_profile.py --size 604x340 --seconds 10
    PYTHONPATH=. python bench/index_build_profile.py --size 1920x1080 --seconds 60

Prints wall and CPU seconds per file (median of --repeat cold probes) and the profile's top
functions by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="604x340")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--gop", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ringload-index-profile"))
    args = ap.parse_args(argv)
    from ringload import probe
    from ringload.synth import make_video

    w, h = (int(x) for x in args.size.split("x"))
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, f"v_{w}x{h}_{args.seconds:g}s_gop{args.gop}.mp4")
    if not os.path.exists(path):
        make_video(path, width=w, height=h, fps=30, seconds=args.seconds, gop=args.gop, bframes=2, seed=1)
    walls, cpus = [], []
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        probe(path, cache=False)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    print(f"{path}: wall {statistics.median(walls):.3f} s, CPU {statistics.median(cpus):.3f} s per file (median of {args.repeat})")
    prof = cProfile.Profile()
    prof.enable()
    probe(path, cache=False)
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
