"""Show what ringload knows about videos: frames, timing, size, codec, GOP structure,
and the ``chunk_len`` that suits them.

The suggested ``chunk_len`` is a whole number of median GOPs close to the sampling plan's
default chunk length. A bounded chunk then starts on a keyframe when the file has a fixed
GOP, so the decoder never decodes frames before the chunk only to throw them away. Files
whose GOP is longer than the default get one GOP per chunk; all-intra files (GOP 1) get the
default itself. Exit status: 0 when every file was read, 1 when any file failed (the other
files are still shown), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass

import numpy as np

from .errors import RingloadError

log = logging.getLogger(__name__)

HELP = "show frames, fps, size, codec, GOP statistics and a suggested chunk_len"

# Used when the sampling plan does not publish its default chunk length.
_FALLBACK_CHUNK_LEN = 64


def _default_chunk_len() -> int:
    try:
        from . import plan
    except ImportError:
        return _FALLBACK_CHUNK_LEN
    value = getattr(plan, "DEFAULT_CHUNK_LEN", None)
    return int(value) if isinstance(value, (int, np.integer)) and value > 0 else _FALLBACK_CHUNK_LEN


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


def suggest_chunk_len(median_gop: float, *, default: int | None = None) -> int:
    """A multiple of the median GOP near the plan's default chunk length (at least one GOP)."""
    target = _default_chunk_len() if default is None else int(default)
    gop = max(1, int(round(median_gop)))
    if gop == 1:
        return target
    return gop * max(1, int(round(target / gop)))


def _describe(path: str, stream: int | None) -> dict:
    from .probe import probe

    info = probe(path, stream=stream)
    n = int(info.num_frames)
    pts = np.asarray(info.pts_seconds, dtype=np.float64)
    fps = float(info.fps) if info.fps else float("nan")
    # Presentation span plus one frame: the time the frames cover when played.
    duration = float(pts[-1] - pts[0] + (1.0 / fps if fps and math.isfinite(fps) and fps > 0 else 0.0)) if n else 0.0
    gops = gop_stats(info.keyframes, n)
    return {
        "path": path,
        "ok": True,
        "stream": getattr(info, "stream", None),
        "num_frames": n,
        "fps": fps,
        "duration_seconds": duration,
        "width": int(info.width),
        "height": int(info.height),
        "rotation": int(info.rotation or 0),
        "codec": str(info.codec),
        "pix_fmt": str(info.pix_fmt),
        "time_base": str(getattr(info, "time_base", "")),
        "gop": gops.as_dict(),
        "suggested_chunk_len": suggest_chunk_len(gops.median),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="video files to inspect")
    parser.add_argument("--stream", type=int, default=None, help="video stream index (default: the best video stream)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def _text(rec: dict) -> str:
    g = rec["gop"]
    size = f"{rec['width']}x{rec['height']}"
    lines = [
        rec["path"],
        f"  frames {rec['num_frames']}  fps {rec['fps']:.3f}  duration {rec['duration_seconds']:.3f} s  "
        f"size {size}  rotation {rec['rotation']}  codec {rec['codec']}  pix_fmt {rec['pix_fmt']}",
        f"  keyframes {g['keyframes']}  GOP min/median/max {g['min']}/{g['median']:g}/{g['max']}"
        + ("" if g["regular"] else "  (irregular: keyframe alignment of chunks is approximate)"),
        f"  suggested chunk_len {rec['suggested_chunk_len']}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace, *, out=None) -> int:
    out = sys.stdout if out is None else out
    records = []
    for path in args.paths:
        try:
            rec = _describe(path, args.stream)
        except RingloadError as exc:
            # The error names the file; keep going so one bad file does not hide the rest.
            log.error("%s", exc)
            rec = {"path": path, "ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
        records.append(rec)
        if not args.json:
            if rec["ok"]:
                out.write(_text(rec) + "\n")
            else:
                out.write(f"{path}\n  error {rec['error']['type']}: {rec['error']['message']}\n")
            out.flush()
    good = [r for r in records if r["ok"]]
    overall = None
    if good:
        overall = suggest_chunk_len(float(np.median([r["gop"]["median"] for r in good])))
    if args.json:
        json.dump({"files": records, "suggested_chunk_len": overall, "default_chunk_len": _default_chunk_len()}, out, indent=2)
        out.write("\n")
    elif len(records) > 1:
        failed = len(records) - len(good)
        out.write(
            f"\n{len(good)} of {len(records)} files read"
            + (f", {failed} failed" if failed else "")
            + (f"; suggested chunk_len for all of them: {overall}" if overall is not None else "")
            + "\n"
        )
    return 0 if len(good) == len(records) else 1
