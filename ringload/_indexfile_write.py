"""Writing the dataset index file: per-video rows to columns, and the columns to a file.

The layout is ``ringload._indexfile``'s (its docstring and docs/indexing.md); this module
only produces it: timestamps of constant-rate videos as a checked rational step, small
vocabularies as codes, every column aligned and checksummed, written atomically.
"""

from __future__ import annotations

import json
import os
import zlib
from fractions import Fraction

import numpy as np

from ._indexfile import (
    _ALIGN,
    _CATEGORIES,
    _MAX_STEP_DEN,
    _PREFIX,
    _ROW,
    _ROW2,
    FORMAT_VERSION,
    MAGIC,
    IndexFile,
    _data_start,
)
from ._videoinfo import VideoInfo


def _rate_rule(pts: np.ndarray) -> tuple[int, int, int]:
    """(p, q, r) with ``pts[i] == pts[0] + (i * p + r) // q`` for every i (verified), p > 0:
    a constant frame rate, also one rounded to a coarse time base (Matroska's milliseconds:
    30 fps as 0, 33, 67, 100, ... is p/q = 100/3); (0, 1, 0) when there is none."""
    n = len(pts)
    if n < 2:
        return (1, 1, 0) if n == 1 else (0, 1, 0)
    first, span = int(pts[0]), int(pts[-1]) - int(pts[0])
    if span <= 0 or abs(first) >= 1 << 40 or span >= 1 << 40:
        return 0, 1, 0
    d = pts.astype(np.int64) - first
    i = np.arange(n, dtype=np.int64)
    exact = Fraction(span, n - 1)
    tried = set()
    # Candidate steps (each verified below): the simplest fractions near the mean step.
    for cand in (*(exact.limit_denominator(k) for k in (1, 3, 10, 30, 100, 1001, 3000, 30000, 1 << 16)), exact):
        p, q = cand.numerator, cand.denominator
        if (p, q) in tried or q > _MAX_STEP_DEN or p <= 0:
            continue
        tried.add((p, q))
        # floor((i p + r) / q) == d_i  <=>  q d_i - i p <= r < q d_i - i p + q, for every i.
        base = q * d - i * p
        lo, hi = int(base.max()), int(base.min()) + q - 1
        if lo <= hi:
            r = lo
            if bool(np.array_equal(first + (i * p + r) // q, pts)):
                return p, q, r
    return 0, 1, 0


def _strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    data = [v.encode("utf-8", "surrogateescape") for v in values]
    off = np.zeros(len(data) + 1, dtype="<i8")
    np.cumsum([len(b) for b in data], out=off[1:])
    return off, np.frombuffer(b"".join(data), dtype="u1")


def columns_from_rows(rows, *, labels=None, weights=None) -> tuple[dict, dict]:
    """(columns, categories) for ``rows``: each a VideoInfo, or (path, error_type, reason)
    for a file that could not be indexed."""
    n = len(rows)
    cols: dict[str, np.ndarray] = {k: np.zeros(n, dtype=dt) for k, dt in _ROW.items()}
    for k, (dt, w) in _ROW2.items():
        cols[k] = np.zeros((n, w), dtype=dt)
    cols["time_base"][:] = 1
    cols["pts_step_den"][:] = 1
    cats: dict[str, list[str]] = {c: [] for c in _CATEGORIES}
    codes = {c: np.zeros(n, dtype="<u2") for c in _CATEGORIES}
    lookup: dict[str, dict[str, int]] = {c: {} for c in _CATEGORIES}

    def code(cat: str, i: int, value: str) -> None:
        table = lookup[cat]
        if value not in table:
            if len(table) >= 1 << 16:
                raise ValueError(f"more than 65536 distinct {cat} values")
            table[value] = len(table)
            cats[cat].append(value)
        codes[cat][i] = table[value]

    paths, errors, etags = [], [], []
    data_offset = np.zeros(n, dtype="<i8")
    data_size = np.full(n, -1, dtype="<i8")
    pts_parts, kf_parts, kp_parts = [], [], []
    pts_len = np.zeros(n, dtype="<i8")
    kf_len = np.zeros(n, dtype="<i8")
    for i, r in enumerate(rows):
        if not isinstance(r, VideoInfo):
            path, etype, reason = r
            paths.append(os.fspath(path))
            errors.append(str(reason))
            etags.append("")
            code("error_type", i, str(etype))
            for cat in ("codec", "decoder", "pix_fmt", "timestamps"):
                code(cat, i, "")
            cols["container_frames"][i] = -1
            cols["file_size"][i] = cols["file_mtime_ns"][i] = -1
            continue
        paths.append(r.path)
        errors.append("")
        etags.append(r.file_etag)
        data_offset[i], data_size[i] = r.data_offset, r.data_size
        code("error_type", i, "")
        c = cols
        c["ok"][i] = 1
        c["file_size"][i], c["file_mtime_ns"][i] = r.file_size, r.file_mtime_ns
        c["stream"][i], c["num_frames"][i], c["fps"][i] = r.stream, r.num_frames, r.fps
        c["width"][i], c["height"][i], c["rotation"][i] = r.width, r.height, r.rotation
        c["time_base"][i] = (r.time_base.numerator, r.time_base.denominator)
        if r.display_matrix is not None:
            c["has_display_matrix"][i] = 1
            c["display_matrix"][i] = r.display_matrix
        c["display_rotation"][i], c["display_hflip"][i] = r.display_rotation, bool(r.display_hflip)
        c["container_frames"][i] = r.container_frames
        for cat in ("codec", "decoder", "pix_fmt", "timestamps"):
            code(cat, i, getattr(r, cat))
        step, den, rnd = _rate_rule(r.pts)
        c["pts_first"][i] = int(r.pts[0]) if r.num_frames else 0
        c["pts_step"][i], c["pts_step_den"][i], c["pts_round"][i] = step, den, rnd
        if step == 0:
            pts_parts.append(np.asarray(r.pts, dtype="<i8"))
            pts_len[i] = r.num_frames
        kf_parts.append(np.asarray(r.keyframes, dtype="<i8"))
        kp_parts.append(np.asarray(r.keyframe_pos, dtype="<i8"))
        kf_len[i] = len(r.keyframes)
    cols["path_off"], cols["path_data"] = _strings(paths)
    cols["error_off"], cols["error_data"] = _strings(errors)
    # Remote objects' versions and tar members' byte ranges: columns only where some row has one.
    if any(etags):
        cols["etag_off"], cols["etag_data"] = _strings(etags)
    if bool(np.any(data_offset != 0)) or bool(np.any(data_size != -1)):
        cols["data_offset"], cols["data_size"] = data_offset, data_size
    for cat in _CATEGORIES:
        cols[cat] = codes[cat]
    cols["pts_off"] = np.concatenate([[0], np.cumsum(pts_len)]).astype("<i8")
    cols["pts"] = np.concatenate(pts_parts).astype("<i8") if pts_parts else np.zeros(0, "<i8")
    cols["kf_off"] = np.concatenate([[0], np.cumsum(kf_len)]).astype("<i8")
    cols["keyframes"] = np.concatenate(kf_parts).astype("<i8") if kf_parts else np.zeros(0, "<i8")
    cols["keyframe_pos"] = np.concatenate(kp_parts).astype("<i8") if kp_parts else np.zeros(0, "<i8")
    if labels is not None:
        labels = np.asarray(labels)
        cols["label" if labels.ndim == 1 else "labels"] = labels.astype("<i8" if labels.ndim == 1 else "<f4")
    if weights is not None:
        cols["weight"] = np.asarray(weights, dtype="<f4")
    return cols, cats


def write_index(dest, cols: dict, cats: dict, meta: dict | None = None) -> int:
    """Write an index file to ``dest`` (a path, written to a temporary name and renamed into
    place, or an open binary file); returns its size in bytes."""
    n = len(cols["ok"])
    for name, arr in cols.items():
        if name.endswith(("_off",)) and len(arr) != n + 1 or name in _ROW and len(arr) != n:
            raise ValueError(f"column {name} has {len(arr)} rows for {n} videos")
    specs, blobs, off = {}, [], 0
    for name in sorted(cols):
        arr = np.ascontiguousarray(cols[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        b = arr.tobytes()
        specs[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": off, "crc32": zlib.crc32(b)}
        blobs.append(b)
        off += len(b) + (-len(b)) % _ALIGN
    header = {
        "format": FORMAT_VERSION, "videos": n,
        # A reader that ignored members' byte ranges would decode whole shards: it must refuse.
        "required": ["base", "members"] if "data_offset" in cols else ["base"], "columns": specs,
        "categories": {k: list(v) for k, v in cats.items()}, "meta": meta or {}, "data_size": off,
    }  # fmt: skip
    # Column offsets count from the data start: the header's end, aligned.
    hbytes = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    data_start = _data_start(len(hbytes))
    total = data_start + off
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(hbytes), zlib.crc32(hbytes))

    def emit(fh) -> None:
        fh.write(prefix + hbytes + b"\0" * (data_start - _PREFIX.size - len(hbytes)))
        for b in blobs:
            fh.write(b)
            fh.write(b"\0" * ((-len(b)) % _ALIGN))

    if hasattr(dest, "write"):
        emit(dest)
        dest.flush()
        return total
    dest = os.fspath(dest)
    tmp = f"{dest}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            emit(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return total


def temporary_index(rows, *, labels=None) -> IndexFile:
    """An index of ``rows`` in an unnamed temporary file (gone with its last descriptor):
    how a loader given a directory or manifest hands its indexes to decoders."""
    import tempfile

    cols, cats = columns_from_rows(rows, labels=labels)
    with tempfile.TemporaryFile(prefix="ringload-index-") as fh:
        write_index(fh, cols, cats, {"temporary": True})
        fd = os.dup(fh.fileno())
    try:
        return IndexFile.from_fd(fd, "<temporary index>", verify=False)
    finally:
        os.close(fd)

