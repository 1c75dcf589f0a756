"""The decode floor of one random clip: what any loader must spend to deliver it, with
plain PyAV in one process and one thread, no ring, no IPC, no batching.

Per clip: open the file, seek to the keyframe at or before a uniformly drawn start, walk to
the start (non-reference frames skipped, as ringload's decoders do), decode the clip's
frames; with ``--convert``, also convert each to RGB at the output size (swscale AREA, as
ringload does). Prints CPU ms per clip and decoded frames per delivered frame.

    python bench/clip_floor.py /tmp/ringload-bench/h264-340p-g30-*/videos [--convert]

The Kinetics workload (``ringload bench --kinetics``) generates such a folder.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import time


def main(argv=None) -> None:
    import av

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=pathlib.Path)
    ap.add_argument("--clips", type=int, default=300)
    ap.add_argument("--clip-len", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--convert", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    paths = sorted(p for p in args.folder.iterdir() if p.suffix in (".mp4", ".mkv", ".mov", ".webm"))
    if not paths:
        raise SystemExit(f"{args.folder}: no videos")
    rng = random.Random(args.seed)
    decoded = 0
    t0 = time.process_time()
    for _ in range(args.clips):
        path = rng.choice(paths)
        with av.open(str(path)) as c:
            st = c.streams.video[0]
            cc = st.codec_context
            cc.thread_type, cc.thread_count = "SLICE", 1
            n = st.frames
            step = round(1 / (st.average_rate * st.time_base))
            t0_pts = st.start_time or 0
            start = rng.randrange(0, n - args.clip_len + 1)
            want = set(range(start, start + args.clip_len))
            walk = t0_pts + start * step
            c.seek(walk, stream=st, backward=True, any_frame=False)
            got = 0
            for pkt in c.demux(st):
                cc.skip_frame = "NONREF" if pkt.pts is not None and pkt.pts < walk else "DEFAULT"
                for f in cc.decode(pkt):
                    decoded += 1
                    if round((f.pts - t0_pts) / step) in want:
                        got += 1
                        if args.convert:
                            f.to_ndarray(format="rgb24", width=args.size, height=args.size, interpolation="AREA")
                if got >= args.clip_len:
                    break
    cpu = time.process_time() - t0
    print(f"{'with' if args.convert else 'without'} conversion: {1e3 * cpu / args.clips:.1f} CPU ms per clip, "
          f"{decoded / (args.clip_len * args.clips):.2f} decoded per delivered frame "
          f"({args.clips} clips of {args.clip_len} over {len(paths)} files; PyAV {av.__version__})")


if __name__ == "__main__":
    main()
