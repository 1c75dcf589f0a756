"""Show what ringload knows about videos: frames, timing, size, codec, GOP structure,
and the ``chunk_len`` that suits them.

Each PATH is a source as ``ringload index`` takes it: a video file, a directory (searched
recursively), a glob pattern, or a CSV/JSONL manifest. ``fps`` is the average over the
decoded timestamps, shown rounded with its exact fraction (``fps_rational`` in JSON).

The suggested ``chunk_len`` is the one ``VideoLoader`` picks for bounded sampling when
``chunk_len`` is left unset at the default ``batch_size=128``
(``ringload.plan.chunk_len_for_gop``): four median GOPs, at least 64, at most 256, a whole
number of GOPs where one fits. It follows the throughput model of docs/sampling.md: in a
video of regular GOP G the loader cuts chunks on keyframes (multiples of G) and a chunk
reads at sequential speed; elsewhere chunks start at random points, so a decoder walks on
average (G - 1) / 2 frames from the keyframe before each chunk and reads at about
C / (C + (G - 1) / 2) of sequential speed with chunks of C (four GOPs: near 89 %). The
output shows the expected share. Longer chunks also raise the statistical cost over many steps (the same
document), hence the cap.

For all the files together it takes, as the loader does, the median over every complete
keyframe interval of every file (``_bounded.median_gop``), and prints the bounded
defaults for them at ``--batch-size``,
and ``--size`` (the loader's defaults unless given): ``chunk_len``, the
``max_per_chunk`` the loader would choose (``ringload._bounded``), the design-effect bound
``1 + (max_per_chunk - 1) * rho`` and the effective batch size it implies, at ``--rho``
(1, the worst case, unless given). Exit status: 0 when every
file was read, 1 when any file or source failed (the others are still shown), 2 for bad
arguments, 141 when stdout closes before everything was written (``| head``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass

import numpy as np

from .errors import RingloadError

log = logging.getLogger(__name__)

HELP = "show frames, fps, size, codec, GOP statistics and a suggested chunk_len"

def _plan_defaults() -> tuple[int, int]:
    from .plan import DEFAULT_CHUNK_LEN, MAX_CHUNK_LEN

    return int(DEFAULT_CHUNK_LEN), int(MAX_CHUNK_LEN)


@dataclass(frozen=True)
class GopStats:
    """Keyframe intervals of one video, in frames."""

    count: int  # keyframes
    min: int
    median: float
    max: int
    regular: bool  # every complete interval has the same length

    def as_dict(self) -> dict:
        return {"keyframes": self.count, "min": self.min, "median": self.median, "max": self.max, "regular": self.regular}


def gop_stats(keyframes, num_frames: int) -> GopStats:
    """Interval statistics from keyframe positions (presentation order).

    Only complete intervals (keyframe to next keyframe) count; the tail after the last
    keyframe is cut by the end of the file, not by the encoder. A file with one keyframe
    is one GOP of ``num_frames``.
    """
    k = np.unique(np.asarray(keyframes, dtype=np.int64))
    if num_frames <= 0:
        return GopStats(count=int(k.size), min=0, median=0.0, max=0, regular=True)
    if k.size < 2:
        return GopStats(count=int(k.size), min=num_frames, median=float(num_frames), max=num_frames, regular=True)
    d = np.diff(k)
    return GopStats(
        count=int(k.size), min=int(d.min()), median=float(np.median(d)), max=int(d.max()), regular=bool(d.min() == d.max())
    )


def suggest_chunk_len(median_gop: float) -> int:
    """The bounded ``chunk_len`` the loader uses by default (batch 128) for this median GOP."""
    from .plan import chunk_len_for_gop

    return chunk_len_for_gop(median_gop)


def sequential_speed_share(chunk_len: int, median_gop: float, *, regular: bool = True) -> float:
    """Expected decode speed with chunks of ``chunk_len`` as a share of sequential reading.

    docs/sampling.md, "Throughput model": a chunk starts at a uniformly random position
    within a GOP of G frames, so the walk from the keyframe costs (G - 1) / 2 frames on
    average besides the chunk's own ``chunk_len``; none in a ``regular`` video (every GOP
    G) where the loader cuts chunks on multiples of a whole G (``_bounded.cut_grid``).
    """
    from ._bounded import cut_grid

    aligned = regular and cut_grid(median_gop, chunk_len) > 1
    walk = 0.0 if aligned else max(0.0, (median_gop - 1) / 2)
    return chunk_len / (chunk_len + walk) if chunk_len > 0 else 0.0


def _describe(path: str, stream: int | None, cache: bool) -> tuple[dict, np.ndarray]:
    """The file's record and its keyframes (sorted, unique)."""
    from .probe import fps_fraction, probe

    info = probe(path, stream=stream, cache=cache)
    fps = fps_fraction(info)
    n = int(info.num_frames)
    gops = gop_stats(info.keyframes, n)
    if gops.count > 1:
        # A chunk never extends past its video: in a short file it is the whole file.
        chunk = max(1, min(suggest_chunk_len(gops.median), n))
        speed = round(sequential_speed_share(chunk, gops.median, regular=gops.regular), 4)
    else:
        # One keyframe: every read decodes from the first frame whatever the chunk length.
        chunk, speed = max(1, min(_plan_defaults()[0], n)), None
    return {
        "path": path,
        "ok": True,
        "stream": int(info.stream),
        "num_frames": n,
        # What the container says it presents (the index records it; None: it does not say).
        "container_frames": int(info.container_frames) if info.container_frames > 0 else None,
        "fps": round(float(fps), 3),
        "fps_rational": f"{fps.numerator}/{fps.denominator}",
        "duration_seconds": float(info.duration_seconds),
        "width": int(info.width),
        "height": int(info.height),
        "rotation": int(info.rotation or 0),
        "codec": str(info.codec),
        "decoder": str(info.decoder),
        "pix_fmt": str(info.pix_fmt),
        "time_base": str(info.time_base),
        "timestamps": str(getattr(info, "timestamps", "pts")),
        "gop": gops.as_dict(),
        "suggested_chunk_len": chunk,
        "speed_vs_sequential": speed,
    }, np.unique(np.asarray(info.keyframes, dtype=np.int64))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH",
        help="a video file, a directory (searched recursively), a glob pattern, or a CSV/JSONL manifest",
    )
    parser.add_argument("--stream", type=int, default=None, help="video stream index (default: the best video stream)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--no-cache", action="store_true", help="index the files afresh, ignoring the index cache")
    b = parser.add_argument_group("bounded defaults (what VideoLoader would choose)")
    b.add_argument("--batch-size", type=_positive, default=128, help="default 128, the loader's")
    b.add_argument("--size", type=_positive, default=224, help="output side in pixels (default 224)")
    b.add_argument("--clip-len", type=_positive, default=1, help="frames per sample (default 1)")
    b.add_argument("--rho", type=_correlation, default=1.0,
                   help="correlation of two samples of one chunk for the effective batch size (default 1: worst case)")


def _text(rec: dict) -> str:
    g = rec["gop"]
    size = f"{rec['width']}x{rec['height']}"
    claimed = rec.get("container_frames")
    note = f" (its container claims {claimed})" if claimed is not None and claimed != rec["num_frames"] else ""
    decoder = f" (decoder {rec['decoder']})" if rec["decoder"] and rec["decoder"] != rec["codec"] else ""
    lines = [
        f"{rec['path']}  [stream {rec['stream']}]",
        f"  frames {rec['num_frames']}{note}  fps {rec['fps']:.3f} ({rec['fps_rational']})  "
        f"duration {rec['duration_seconds']:.3f} s  size {size}  rotation {rec['rotation']}  "
        f"codec {rec['codec']}{decoder}  pix_fmt {rec['pix_fmt']}",
        (
            f"  keyframes {g['keyframes']}  GOP min/median/max {g['min']}/{g['median']:g}/{g['max']}"
            + ("" if g["regular"] else "  (irregular)")
            if g["keyframes"] > 1
            else f"  keyframes {g['keyframes']}  GOP: the whole file ({rec['num_frames']} frames)"
        ),
        f"  suggested chunk_len {rec['suggested_chunk_len']}"
        + (
            f"  (about {100 * rec['speed_vs_sequential']:.0f}% of sequential decode speed)"
            if rec["speed_vs_sequential"] is not None
            else "  (one keyframe: every read decodes from the first frame)"
        ),
    ]
    return "\n".join(lines)


def _failed(path: str, exc: RingloadError) -> dict:
    # The error names the file (or the source); the caller goes on so it does not hide the rest.
    log.error("%s", exc)
    return {"path": path, "ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}


def _videos(arg: str) -> list[str]:
    """The videos of one PATH argument, resolved as ``ringload index`` resolves its source."""
    import os

    from ._source import MANIFEST_EXTENSIONS, resolve_source

    if os.path.isfile(arg) and os.path.splitext(arg)[1].lower() not in MANIFEST_EXTENSIONS:
        return [arg]  # a video named on the command line is shown as it was typed
    return list(resolve_source(arg).paths)


def _records(args: argparse.Namespace):
    cache = not getattr(args, "no_cache", False)
    for arg in args.paths:
        try:
            paths = _videos(arg)
        except RingloadError as exc:
            yield _failed(arg, exc), None
            continue
        for path in paths:
            try:
                yield _describe(path, args.stream, cache)
            except RingloadError as exc:
                yield _failed(path, exc), None


def bounded_summary(median_gop: float | None, args: argparse.Namespace) -> dict:
    """What VideoLoader would choose for bounded sampling on these files at these settings."""
    from ._bounded import choose, design_effect_bound, effective_batch_size
    from ._ring import RingLayout

    batch, size = getattr(args, "batch_size", 128), getattr(args, "size", 224)
    clip, rho = getattr(args, "clip_len", 1), getattr(args, "rho", 1.0)
    slot = RingLayout(1, (batch, clip, size, size, 3)).slot_stride
    d = choose(median_gop=median_gop, batch_size=batch, slot_bytes=slot)
    return {
        "batch_size": batch, "size": size, "clip_len": clip, "chunk_len": d.chunk_len, "max_per_chunk": d.max_per_chunk,
        "chunk_window": d.chunk_window, "cut_grid": d.cut_grid, "rule": d.reason, "rho": rho,
        "design_effect_bound": design_effect_bound(d.max_per_chunk, rho),
        "effective_batch_size": round(effective_batch_size(batch, d.max_per_chunk, rho), 2),
    }


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: an integer >= 1")
    return value


def _correlation(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a correlation in [0, 1]")
    return value


def run(args: argparse.Namespace, *, out=None) -> int:
    out = sys.stdout if out is None else out
    records, keyframes = [], []
    for rec, kf in _records(args):
        records.append(rec)
        if kf is not None:
            keyframes.append(kf)
        if not args.json:
            if rec["ok"]:
                out.write(_text(rec) + "\n")
            else:
                out.write(f"{rec['path']}\n  error {rec['error']['type']}: {rec['error']['message']}\n")
            out.flush()
    good = [r for r in records if r["ok"]]
    overall = None
    if good:
        # The loader's median: over every complete interval of every file (files with a single
        # keyframe have none, and say nothing about the encoder's GOP).
        from ._bounded import median_gop

        gop = median_gop(np.concatenate(keyframes), np.cumsum([0] + [len(k) for k in keyframes]))
        overall = suggest_chunk_len(gop) if gop is not None else _plan_defaults()[0]
        bounded = bounded_summary(gop, args)
    if args.json:
        json.dump({"files": records, "suggested_chunk_len": overall, "default_chunk_len": _plan_defaults()[0],
                   "bounded": bounded if good else None}, out, indent=2)
        out.write("\n")
    elif len(records) > 1:
        failed = len(records) - len(good)
        out.write(
            f"\n{len(good)} of {len(records)} files read"
            + (f", {failed} failed" if failed else "")
            + (f"; suggested chunk_len for all of them: {overall}" if overall is not None else "")
            + "\n"
        )
    if good and not args.json:
        b = bounded
        out.write(
            f"bounded defaults at batch_size={b['batch_size']}, {b['size']}x{b['size']}, clip_len={b['clip_len']}: "
            f"chunk_len={b['chunk_len']}, max_per_chunk={b['max_per_chunk']} ({b['rule']}), "
            f"cuts on multiples of {b['cut_grid']} frames; "
            f"design-effect bound {b['design_effect_bound']:g} at rho={b['rho']:g}, "
            f"effective batch size {b['effective_batch_size']:g} of {b['batch_size']}\n"
        )
    return 0 if len(good) == len(records) else 1
