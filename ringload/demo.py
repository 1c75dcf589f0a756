"""``make demo``: generate a small dataset and show what ringload does with it.

Writes a few camera-like 480p H.264 videos (``ringload.synth``) into a cache folder, then
runs the loader over them with bounded, strict and sequential sampling in interleaved
rounds (bounded, strict, sequential, then again), and prints the throughput of each with
its settings, and each mode's speed relative to sequential as measured within each round:
the median and the range over the rounds. On a machine shared with other work the load
can change between two runs more than two modes differ; the range shows when it did.
Everything heavy is imported inside ``main`` so that the decoder processes, which import
this module as their main module, stay light.
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


MODES = ("bounded", "strict", "sequential")


def _range(values) -> str:
    from .bench.rounds import spread

    s = spread(values)
    if len(values) == 1:
        return f"{s['median']:.2f}"
    return f"{s['median']:.2f} ({s['min']:.2f} to {s['max']:.2f} over {len(values)} rounds)"


def compare(rows_by_mode: dict[str, list[dict]]) -> list[str]:
    """The lines that compare each mode with sequential, from the rounds' results (per mode,
    one dict per round with ``images_per_s``); ratios are taken within a round."""
    seq = [r["images_per_s"] for r in rows_by_mode["sequential"]]
    lines = []
    parts = []
    for mode in ("bounded", "strict"):
        ratios = [r["images_per_s"] / s for r, s in zip(rows_by_mode[mode], seq) if s > 0]
        if not ratios:
            continue
        parts.append(f"{mode} / sequential = {_range(ratios)}")
        faster = sum(x > 1.0 for x in ratios)
        wide = (max(ratios) - min(ratios)) / max(1e-9, sorted(ratios)[len(ratios) // 2])
        if wide > 0.25 and not faster:
            lines.append(
                f"{mode} / sequential spread over {wide:.0%} of its median between rounds: the load on this machine "
                "changed during the demo, so take this ratio as rough"
            )
        if faster:
            lines.append(
                f"{mode} read faster than sequential in {faster} of {len(ratios)} rounds although it decodes at least "
                "as many frames per frame delivered: the load on this machine changed within a round by more than "
                "the two differ, so this run cannot tell them apart (try again on a quieter machine or with more "
                "--rounds)"
            )
    return ["; ".join(parts)] + lines + [
        "(sequential decodes every frame once, in file order: the least decoding per frame delivered, "
        "a measured reference rather than a bound)"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ringload.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ringload", "demo"))
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every mode once, in turn (default 3)")
    parser.add_argument("--batches", type=int, default=12,
                        help="timed batches per mode per round, after the ring has drained (default 12)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="decoder processes (default: one per CPU)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batches < 1:
        parser.error("--rounds and --batches must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workers = args.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    log.info("ringload demo: %d synthetic 854x480 H.264 videos (%d s at 30 fps, GOP %d, 2 B-frames) in %s",
             _VIDEOS, _SECONDS, _GOP, args.dir)
    paths = _dataset(args.dir)
    log.info("loader: batches of %dx3x224x224 uint8 (crop='random_resized'), %d decoder processes, "
             "%d rounds of %d timed batches per mode", args.batch_size, workers, args.rounds, args.batches)
    rows: dict[str, list[dict]] = {m: [] for m in MODES}
    for k in range(args.rounds):
        for sampling in MODES:
            rows[sampling].append(
                _run(paths, sampling=sampling, batches=args.batches, batch_size=args.batch_size, workers=workers)
            )
        log.info("  round %d of %d: %s", k + 1, args.rounds,
                 ", ".join(f"{m} {rows[m][-1]['images_per_s']:.1f}" for m in MODES) + " images/s")
    from .bench.rounds import median

    for sampling in MODES:
        rs = rows[sampling]
        ips = [x["images_per_s"] for x in rs]
        spread = f" ({min(ips):.1f} to {max(ips):.1f})" if len(ips) > 1 else ""
        log.info(
            "  %-10s %7.1f images/s%s; start-up %.1f s, %.2f frames decoded per frame delivered, ring %.0f MiB",
            sampling, median(ips), spread, median([x["startup_s"] for x in rs]),
            median([x["decoded_per_delivered"] for x in rs]), rs[0]["ring_mib"],
        )  # fmt: skip
    if all(x["images_per_s"] > 0 for x in rows["sequential"]):
        for line in compare(rows):
            log.info("%s", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
