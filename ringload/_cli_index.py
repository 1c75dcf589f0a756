"""Index every video of a source (directory, glob or CSV/JSONL manifest) into the on-disk cache,
and with ``--out data.ringindex`` into one index file that ``VideoLoader("data.ringindex")``
maps in seconds at any size.

``--shard i/N`` indexes rows i, i+N, ... only (one job of an array across machines);
``ringload index merge PARTS... --out data.ringindex`` joins the parts. Builds resume: every
finished file is in the per-file cache, so a rerun after an interruption probes only the rest.
Later ``probe()`` calls and loaders then cost a file stat and a small read per video.
Exits non-zero when any file failed; the summary lists each failure with its reason.
Files that decode fewer frames than their container claims (a damaged or cut tail) are
indexed with the frames that decode and do not change the exit status: every summary,
from a cold or a warm cache, lists them with both counts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

HELP = "build the frame index (cache, or one --out file) for a directory, glob or manifest; or merge shards"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="a directory (searched recursively), a glob pattern, a CSV/JSONL manifest, tar shards or a URL "
        "of any of them (s3://...); or `merge`",
    )
    parser.add_argument("parts", nargs="*", help="with `merge`: the part files to join")
    parser.add_argument("--out", default=None, help="write one index file (e.g. data.ringindex) for the loader")
    parser.add_argument("--shard", default=None, help="i/N: index only rows i, i+N, ... of the source (with --out)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: the usable cores)")
    parser.add_argument("--stream", type=int, default=None, help="stream index to index (default: best video stream)")
    parser.add_argument(
        "--cache-dir", default=None,
        help="cache directory (default: $RINGLOAD_CACHE_DIR, else $XDG_CACHE_HOME/ringload or ~/.cache/ringload)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--storage-options", default=None, metavar="JSON",
        help='fsspec options for URL sources, as JSON (e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\')',
    )


def run(args: argparse.Namespace) -> int:
    import json

    from . import _remote
    from .errors import ConfigError

    opts = None
    if getattr(args, "storage_options", None):
        try:
            opts = json.loads(args.storage_options)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--storage-options: not valid JSON ({exc.msg})") from None
    with _remote.using(_remote.Storage(opts) if opts is not None else None):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ._source import resolve_source
    from .errors import ConfigError
    from .probe import default_cache_dir, index_paths, short_files_warning

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: pass 1 or more")
    if args.source == "merge" and not os.path.exists("merge"):
        return _merge(args)
    if args.parts:
        raise ConfigError(f"unexpected arguments {args.parts}: only `ringload index merge` takes several files")
    from ._indexfile_build import parse_shard

    shard = parse_shard(args.shard)
    if shard is not None and args.out is None:
        raise ConfigError("--shard needs --out: each shard writes its part file")
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

    if bar is not None and shard is not None:
        bar.total = len(range(shard[0], len(src.paths), shard[1]))
    try:
        if args.out is None:
            # Rows that are segments of one file (start/end) index it once.
            paths = list(dict.fromkeys(src.paths)) if src.segments is not None else src.paths
            if bar is not None:
                bar.total = len(paths)
            members = src.member_ranges() if src.segments is None else None
            results = index_paths(paths, stream=args.stream, cache=cache, workers=args.workers, on_result=on_result,
                                  members=members)  # fmt: skip
        else:
            from ._indexfile_build import build_index

            results = build_index(
                src, args.out, shard=shard, stream=args.stream, cache=cache, workers=args.workers, on_result=on_result
            )
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
        f"in {elapsed:.1f} s ({len(results) / max(elapsed, 1e-9):.1f} files/s); cache: {cache}\n"
    )
    if args.out is not None:
        what = f"shard {shard[0]}/{shard[1]} " if shard is not None else ""
        out.write(f"wrote {what}{args.out}: {len(results)} videos ({len(failed)} unusable, recorded), "
                  f"{os.path.getsize(args.out) / 2**20:.1f} MiB\n")  # fmt: skip
    short = short_files_warning([r.info for r in ok], limit=None)
    if short:
        out.write(short + "\n")
    if failed:
        out.write(f"{len(failed)} failed:\n")
        for r in failed:
            out.write(f"  {r.error_type}: {r.error}\n")
    return 1 if failed else 0


def _merge(args: argparse.Namespace) -> int:
    from ._indexfile_build import merge_indexes
    from .errors import ConfigError

    if args.out is None:
        raise ConfigError("ringload index merge PARTS... needs --out FILE")
    n = merge_indexes(args.parts, args.out)
    sys.stdout.write(f"merged {len(args.parts)} parts into {args.out}: {n} videos, "
                     f"{os.path.getsize(args.out) / 2**20:.1f} MiB\n")  # fmt: skip
    return 0
