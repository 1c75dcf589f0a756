"""How fast is indexing (``probe`` / ``ringload index``) per hour of 1080p video, and how
much do the conversion choices in ``convert_into`` cost?

    python bench/index_speed.py                     # index speed, writes bench/results/index_speed.json
    python bench/index_speed.py --convert           # also time the conversion paths

Generates a 1080p30 H.264 video (GOP 30, 2 B-frames) with ``ringload.synth.make_video``,
remuxes ``--repeat`` copies back to back into one longer file (so the fixed cost per file
is not mistaken for a per-hour cost), then times:
  * ``probe(cache=False)`` on the long file (one process): wall and CPU seconds;
  * ``ringload index`` over ``--files`` links to it (``--workers`` processes, cold cache);
  * the same command again (every file a cache hit).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time

log = logging.getLogger("bench.index_speed")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _system() -> dict:
    import av
    import numpy

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg_at_start": load,
        "python": platform.python_version(),
        "av": av.__version__,
        "ffmpeg": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
        "numpy": numpy.__version__,
        "git_commit": commit,
        "platform": platform.platform(),
    }


def make_long_video(workdir: str, seconds: float, repeat: int) -> str:
    """A 1080p30 H.264 file of ``seconds * repeat`` seconds (made once, then reused)."""
    import av

    from ringload.synth import make_video

    base = os.path.join(workdir, f"base_1080p30_{seconds:g}s.mp4")
    if not os.path.exists(base):
        t = time.perf_counter()
        make_video(base, width=1920, height=1080, fps=30, seconds=seconds, gop=30, bframes=2, codec="h264", seed=1)
        log.info("generated %s in %.1f s", base, time.perf_counter() - t)
    if repeat == 1:
        return base
    out = os.path.join(workdir, f"long_1080p30_{seconds * repeat:g}s.mp4")
    if os.path.exists(out):
        return out
    tmp = out + ".tmp.mp4"
    with av.open(base) as src, av.open(tmp, "w") as dst:
        ist = src.streams.video[0]
        ost = dst.add_stream_from_template(ist)
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe, p.duration) for p in src.demux(ist) if p.dts is not None]
        step = ist.time_base
        span = max(p[1] for p in packets) - min(p[1] for p in packets) + (packets[0][4] or 1)
        for k in range(repeat):
            for data, pts, dts, key, dur in packets:
                pkt = av.Packet(data)
                pkt.pts, pkt.dts = pts + k * span, dts + k * span
                pkt.time_base = step
                pkt.is_keyframe = key
                if dur:
                    pkt.duration = dur
                pkt.stream = ost
                dst.mux(pkt)
    os.replace(tmp, out)
    return out


def time_probe(path: str) -> dict:
    from ringload.probe import probe

    w0, c0 = time.perf_counter(), time.process_time()
    info = probe(path, cache=False)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    hours = info.duration_seconds / 3600
    return {
        "frames": info.num_frames,
        "keyframes": len(info.keyframes),
        "video_hours": hours,
        "wall_s": wall,
        "cpu_s": cpu,
        "wall_s_per_video_hour": wall / hours,
        "cpu_s_per_video_hour": cpu / hours,
    }


def time_cli(link_dir: str, cache_dir: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "ringload.cli", "index", link_dir, "--workers", str(workers),
           "--cache-dir", cache_dir, "--no-progress"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"ringload index failed: {out.stdout}\n{out.stderr}")
    return {"command": " ".join(cmd), "wall_s": wall, "summary": out.stdout.strip().splitlines()[0]}


def time_convert(path: str, frames: int = 20) -> dict:
    """ms per 1080p frame for the conversion paths of convert_into and the alternatives."""
    import av
    import numpy as np
    from av.video.reformatter import Interpolation

    from ringload._decode import convert_into

    with av.open(path) as c:
        st = c.streams.video[0]
        src = [f for _, f in zip(range(frames), c.decode(st))]

    def per_frame(fn, reps=3):
        t = time.process_time()
        for _ in range(reps):
            for f in src:
                fn(f)
        return (time.process_time() - t) / (reps * len(src)) * 1e3

    out = np.empty((224, 224, 3), np.uint8)
    res = {"full_rgb24_1080p": per_frame(lambda f: f.to_ndarray(format="rgb24"))}
    for name in ("FAST_BILINEAR", "BILINEAR", "AREA", "BICUBIC", "POINT"):
        interp = getattr(Interpolation, name)
        res[f"resize_224_{name}"] = per_frame(lambda f, i=interp: f.to_ndarray(format="rgb24", width=224, height=224, interpolation=i))
    crop = (600, 180, 720, 720)

    def rgb_crop_then_resize(f):
        rgb = np.ascontiguousarray(f.to_ndarray(format="rgb24")[180:900, 600:1320])
        g = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        out[...] = g.to_ndarray(format="rgb24", width=224, height=224, interpolation=Interpolation.AREA)

    res["crop720_resize224_via_full_rgb"] = per_frame(rgb_crop_then_resize)
    res["crop720_resize224_convert_into_plane_crop"] = per_frame(lambda f: convert_into(f, out, crop=crop, size=(224, 224)))
    res["resize224_convert_into"] = per_frame(lambda f: convert_into(f, out, size=(224, 224)))
    return {"unit": "CPU ms per 1080p frame", **{k: round(v, 3) for k, v in res.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ringload-bench-index"))
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the generated base video")
    ap.add_argument("--repeat", type=int, default=10, help="copies of it in the long file")
    ap.add_argument("--files", type=int, default=4, help="links to the long file that `ringload index` indexes")
    ap.add_argument("--workers", type=int, default=None, help="processes for `ringload index` (default: cores)")
    ap.add_argument("--convert", action="store_true", help="also time the conversion paths")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "index_speed.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, REPO)
    os.makedirs(args.workdir, exist_ok=True)
    workers = args.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())

    result = {"system": _system(), "args": vars(args)}
    path = make_long_video(args.workdir, args.seconds, args.repeat)
    result["video"] = {"path": path, "bytes": os.path.getsize(path), "spec": "1920x1080 30 fps H.264 GOP 30, 2 B-frames"}
    result["probe_one_process"] = time_probe(path)
    log.info("probe: %s", result["probe_one_process"])

    links = tempfile.mkdtemp(prefix="links-", dir=args.workdir)
    for i in range(args.files):
        os.symlink(path, os.path.join(links, f"v{i:03d}.mp4"))
    cache = tempfile.mkdtemp(prefix="cache-", dir=args.workdir)
    hours = result["probe_one_process"]["video_hours"] * args.files
    cold = time_cli(links, cache, workers)
    cold["video_hours"] = hours
    cold["wall_s_per_video_hour"] = cold["wall_s"] / hours
    warm = time_cli(links, cache, workers)
    warm["wall_s_per_video"] = warm["wall_s"] / args.files
    result["ringload_index_cold"] = cold
    result["ringload_index_cached"] = warm
    log.info("ringload index, cold: %s", cold)
    log.info("ringload index, cached: %s", warm)
    if args.convert:
        result["convert"] = time_convert(path)
        log.info("convert: %s", result["convert"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
