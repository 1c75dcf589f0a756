"""Index every video of a source (directory, glob or CSV/JSONL manifest) into the on-disk cache.

Later ``probe()`` calls and loaders then cost a file stat and a small read per video.
Exits non-zero when any file failed; the summary lists each failure with its reason.
Files that decode fewer frames than their container claims (a damaged or cut tail) are
indexed with the frames that decode and do not change the exit status: every summary,
from a cold or a warm cache, lists them with both counts.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

HELP = "build the frame index cache for a directory, glob or manifest"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a directory (searched recursively), a glob pattern, or a CSV/JSONL manifest")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: the usable cores)")
    parser.add_argument("--stream", type=int, default=None, help="stream index to index (default: best video stream)")
    parser.add_argument(
        "--cache-dir", default=None,
        help="cache directory (default: $RINGLOAD_CACHE_DIR, else $XDG_CACHE_HOME/ringload or ~/.cache/ringload)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ._source import resolve_source
    from .errors import ConfigError
    from .probe import default_cache_dir, index_paths, short_files_warning

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: pass 1 or more")
    src = resolve_source(args.source)
    cache = args.cache_dir or default_cache_dir()
    start = time.perf_counter()
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(src.paths), unit="video", desc="indexing", file=sys.stderr, dynamic_ncols=True)

    failures = 0

    def on_result(res):
        nonlocal failures
        if res.error is not None:
            failures += 1
        if bar is not None:
            if res.error is not None:
                bar.set_postfix_str(f"{failures} failed", refresh=False)
            bar.update(1)

    try:
        results = index_paths(src.paths, stream=args.stream, cache=cache, workers=args.workers, on_result=on_result)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    ok = [r for r in results if r.info is not None]
    failed = [r for r in results if r.info is None]
    frames = sum(r.info.num_frames for r in ok)
    hours = sum(r.info.duration_seconds for r in ok) / 3600.0
    out = sys.stdout
    out.write(
        f"indexed {len(ok)} of {len(results)} videos: {frames} frames, {hours:.3f} hours of video, "
        f"in {elapsed:.1f} s; cache: {cache}\n"
    )
    short = short_files_warning([r.info for r in ok], limit=None)
    if short:
        out.write(short + "\n")
    if failed:
        out.write(f"{len(failed)} failed:\n")
        for r in failed:
            out.write(f"  {r.error_type}: {r.error}\n")
    return 1 if failed else 0
