"""Building an index file for a source (whole, or one shard of it) and merging shards.

Every file is probed through the per-file cache (``probe.index_paths``), so an interrupted
build keeps what it finished and a rerun probes only the rest. A shard ``i/N`` takes rows
``i, i + N, i + 2N, ...`` of the source (strided: neighbouring files, often of similar
length, spread over the shards) and records each row's position in the source, so
``merge`` puts the rows back in source order: merging every shard gives the same file,
byte for byte, as one build.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from ._indexfile import FORMAT_VERSION, IndexFile, IndexFileError
from ._indexfile_write import columns_from_rows, write_index
from .errors import ConfigError

log = logging.getLogger(__name__)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: pass i/N, e.g. 0/8 for the first of 8 shards") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def source_digest(paths) -> str:
    """Identifies the list of files a build covers (shards of one source share it)."""
    return hashlib.sha256(json.dumps(list(paths)).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def rows_from_results(results) -> list:
    return [r.info if r.info is not None else (r.path, r.error_type, r.reason) for r in results]


def build_index(src, out, *, shard=None, stream=None, cache=True, workers=None, on_result=None):
    """Probe the files of ``src`` (a resolved Source; with ``shard=(i, N)`` only rows i::N)
    and write the index file ``out``. Returns the per-file results, in row order."""
    from .probe import index_paths

    if getattr(src, "segments", None) is not None:
        raise ConfigError(
            f"{src.manifest}: its rows have start/end, segments of files, and an index file holds whole files: "
            f"run `ringload index {src.manifest}` without --out (it fills the cache) and pass the manifest to VideoLoader"
        )
    if getattr(src, "meta", None):
        log.warning("%s: the columns %s are not kept in the index file; pass the manifest to VideoLoader for Batch.meta",
                    src.manifest, ", ".join(sorted(src.meta)))
    from . import _remote

    paths = [_remote.normalize(p) for p in src.paths]
    rows_at = np.arange(len(paths), dtype=np.int64)
    if shard is not None:
        rows_at = rows_at[shard[0] :: shard[1]]
    mine = [paths[i] for i in rows_at]
    members = src.member_ranges(rows_at) if hasattr(src, "member_ranges") else None
    results = index_paths(mine, stream=stream, cache=cache, workers=workers, on_result=on_result, members=members)
    labels = src.labels[rows_at] if src.labels is not None else None
    weights = getattr(src, "weights", None)
    cols, cats = columns_from_rows(rows_from_results(results), labels=labels,
                                   weights=weights[rows_at] if weights is not None else None)  # fmt: skip
    cols["source_row"] = rows_at
    meta = {
        "source_videos": len(paths), "source_digest": source_digest(paths), "stream": stream,
        "class_names": src.class_names, "shard": list(shard) if shard is not None and shard[1] > 1 else None,
    }  # fmt: skip
    write_index(out, cols, cats, meta)
    return results


def _rows(idx: IndexFile) -> list:
    out = []
    for i in range(len(idx)):
        info = idx.info(i)
        if info is None:
            etype, reason = idx.error(i)
            out.append((idx.path(i), etype, reason))
        else:
            out.append(info)
    return out


def merge_indexes(parts, out) -> int:
    """Join the shard files ``parts`` into ``out``; returns the number of videos.

    Refused (IndexFileError / ConfigError naming the part): a part of another format
    version or damaged, parts of different sources or shard counts, a shard given twice or
    missing, and a video listed twice."""
    if not parts:
        raise ConfigError("ringload index merge: name the part files to merge")
    opened = [IndexFile.open(p) for p in parts]  # format version and damage: named per part
    first = opened[0].meta
    n_shards = (first.get("shard") or [0, 1])[1]
    want = {k: first.get(k) for k in ("source_videos", "source_digest", "stream", "class_names")}
    shards: dict[int, str] = {}
    for p, idx in zip(parts, opened):
        got = {k: idx.meta.get(k) for k in want}
        if got != want:
            diff = [k for k in want if got[k] != want[k]]
            raise ConfigError(f"{p}: built from another source than {parts[0]} (differs in {', '.join(diff)})")
        sh = idx.meta.get("shard") or [0, 1]
        if sh[1] != n_shards:
            raise ConfigError(f"{p}: shard {sh[0]}/{sh[1]}, but {parts[0]} is one of {n_shards} shards")
        if sh[0] in shards:
            raise ConfigError(f"{p}: shard {sh[0]}/{sh[1]} is also in {shards[sh[0]]}")
        shards[sh[0]] = p
        if idx.column("source_row") is None:
            raise IndexFileError(p, "not a part of a sharded build (no source_row column)")
    missing = sorted(set(range(n_shards)) - set(shards))
    if missing:
        raise ConfigError(f"ringload index merge: shard(s) {', '.join(f'{i}/{n_shards}' for i in missing)} missing")
    pos = np.concatenate([idx.column("source_row") for idx in opened])
    paths = [q for idx in opened for q in idx.paths()]
    seen: dict[str, int] = {}
    for q in paths:
        seen[q] = seen.get(q, 0) + 1
    dup = [q for q, c in seen.items() if c > 1]
    if dup or len(np.unique(pos)) != len(pos):
        raise ConfigError(f"ringload index merge: {len(dup) or 'some'} video(s) appear in several parts: {dup[:5]}")
    if len(pos) != want["source_videos"]:
        raise ConfigError(f"ringload index merge: the parts hold {len(pos)} of the source's {want['source_videos']} videos")
    rows = [r for idx in opened for r in _rows(idx)]
    order = np.argsort(pos, kind="stable")
    rows = [rows[i] for i in order]
    extra = {}
    for name in ("label", "labels", "weight"):
        if opened[0].column(name) is not None:
            extra[name] = np.concatenate([idx.column(name) for idx in opened])[order]
    labels = extra.get("label", extra.get("labels"))
    cols, cats = columns_from_rows(rows, labels=labels, weights=extra.get("weight"))
    cols["source_row"] = np.arange(len(rows), dtype=np.int64)
    write_index(out, cols, cats, dict(first, shard=None))
    log.info("merged %d parts (format %d) into %s: %d videos", len(parts), FORMAT_VERSION, out, len(rows))
    return len(rows)
