"""Turn what the user passes as a dataset (directory, glob, list, CSV/JSONL manifest) into paths and labels."""

from __future__ import annotations

import csv
import dataclasses
import glob
import heapq
import io
import json
import logging
import math
import os
import posixpath
from collections.abc import Sequence

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

#: File name endings treated as videos when a directory is scanned.
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".ts", ".mts", ".m2ts",
        ".3gp", ".3g2", ".mpg", ".mpeg", ".wmv", ".ogv", ".mxf", ".vob", ".y4m",
    }
)  # fmt: skip

MANIFEST_EXTENSIONS = frozenset({".csv", ".jsonl", ".ndjson"})

#: File name endings read as tar shards of videos (uncompressed: members are byte ranges).
SHARD_EXTENSIONS = frozenset({".tar"})

# Separators accepted inside a CSV `labels` cell ("cat;dog" or "cat|dog").
_LABEL_SEPARATORS = (";", "|")


# Manifest columns that are not passed through as per-sample metadata (``Source.meta``).
_RESERVED = frozenset({"path", "label", "labels", "start", "end", "weight"})


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """Resolved dataset: ``paths`` (absolute where the source gave a folder or manifest),
    ``labels`` (None, int64 (N,) class ids, or float32 (N, C) multi-hot), ``class_names``
    (class id -> name, or None when the labels were given as ints); ``weights`` (None or
    float64 (N,): a manifest's ``weight`` column); ``index`` the mapped index file
    (``_indexfile.IndexFile``) when the source is one. A manifest adds
    ``segments`` (float64 (N, 2): each row's [start, end) in seconds, 0 and inf where not
    given; None when no row has ``start``/``end``), ``meta`` (its other columns: name ->
    one value per row, None where a row lacks it), ``manifest`` and ``lines`` (each row's
    line in it, for errors). ``members`` (int64 (N, 2): a tar member's offset and size in
    its shard, -1 for rows that are not members; None when none is) comes from shards."""

    paths: list[str]
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    index: object | None = None
    weights: np.ndarray | None = None
    segments: np.ndarray | None = None
    meta: dict[str, list] | None = None
    manifest: str | None = None
    lines: np.ndarray | None = None
    members: np.ndarray | None = None

    def __post_init__(self):
        for name in ("labels", "weights", "segments", "lines", "members"):
            if getattr(self, name) is not None and len(getattr(self, name)) != len(self.paths):
                raise ValueError(f"Source: {name} and paths differ in length")

    def where(self, row: int) -> str:
        """Where row ``row`` comes from, for messages: "manifest.csv: line 7" or its path."""
        if self.manifest is not None and self.lines is not None:
            return f"{self.manifest}: line {int(self.lines[row])}"
        return self.paths[row]

    def __len__(self) -> int:
        return len(self.paths)

    def member_ranges(self, rows=None) -> list | None:
        """(offset, size) in its shard of each row (of ``rows``, default all) that is a tar
        member, None for the others; None when no row is one."""
        if self.members is None:
            return None
        m = self.members if rows is None else self.members[rows]
        return [(int(a), int(b)) if a >= 0 else None for a, b in m.tolist()]


def _is_video(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _scan_dir(folder: str, on_error: str = "raise", exts=VIDEO_EXTENSIONS) -> list[str]:
    """Video files under ``folder``, following links, sorted by their path relative to it.

    Each real file is listed once, under the first of its names in that order, and a folder
    reached again through a link (a loop) is not walked again.
    """
    # Folders are walked in the order of their relative paths, so the first name met for a
    # folder is also the first in the sorted listing.
    heap: list[tuple[list[str], str]] = [([], folder)]
    walked: set[str] = set()
    found: list[tuple[list[str], str, str]] = []  # (relative parts, path, real path)
    unreadable: list[tuple[str, str]] = []
    while heap:
        parts, d = heapq.heappop(heap)
        real_dir = os.path.realpath(d)
        if real_dir in walked:
            continue
        walked.add(real_dir)
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            unreadable.append((d, exc.strerror or str(exc)))
            continue
        for e in entries:
            try:
                is_dir = e.is_dir()  # follows links, like the walk did
            except OSError:
                is_dir = False
            if is_dir:
                heapq.heappush(heap, ([*parts, e.name], e.path))
            elif os.path.splitext(e.name)[1].lower() in exts and not e.name.startswith("."):
                try:
                    linked = e.is_symlink()
                except OSError:
                    linked = True
                real = os.path.realpath(e.path) if linked else os.path.join(real_dir, e.name)
                found.append(([*parts, e.name], e.path, real))
    if unreadable:
        listed = "; ".join(f"{d} ({why})" for d, why in unreadable)
        if on_error == "raise":
            raise ConfigError(
                f"source={folder!r}: cannot read {len(unreadable)} folder(s): {listed}. Fix their permissions, "
                'or pass on_error="skip" to leave them out'
            )
        log.warning("source=%r: skipped %d unreadable folder(s): %s", folder, len(unreadable), listed)
    # Sorted by the path relative to the folder: the order (and so sample ids) does not
    # depend on the file system's listing order.
    found.sort(key=lambda f: f[0])
    seen: set[str] = set()
    paths = []
    for _parts, path, real in found:
        if real not in seen:
            seen.add(real)
            paths.append(path)
    return paths


_ON_ERROR = ("raise", "skip")


def resolve_source(
    source: str | os.PathLike | Sequence[str | os.PathLike] | Source, *, on_error: str = "raise"
) -> Source:
    """Resolve a directory (recursive, video extensions, sorted, each real file once), a glob
    pattern, a list of paths, an index file (``ringload index --out``), or a CSV/JSONL manifest (``path`` relative to the manifest's
    folder, optional ``label`` int or class name, or ``labels`` list for multi-label, optional
    ``weight`` >= 0 per row, optional ``start``/``end`` seconds making the row a segment of
    its file, any other columns kept as per-row ``meta``) into a :class:`Source`. ``on_error``: an unreadable folder inside a directory source raises a
    ConfigError ("raise") or is left out with one warning ("skip")."""
    if on_error not in _ON_ERROR:
        raise ConfigError(f"on_error={on_error!r}: pass 'raise' or 'skip'")
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if not text:
            raise ConfigError("source='' is empty: pass a directory, glob, list of paths or manifest")
        from . import _remote

        if text.startswith("file://"):
            text = text[len("file://") :]
        if _remote.split_member(text):
            return Source(paths=[_remote.normalize(text)])
        if _remote.is_url(text):
            return _resolve_url(text, on_error)
        if os.path.isdir(text):
            folder = os.path.abspath(text)
            paths = _scan_dir(folder, on_error)
            if not paths:
                shards = _scan_dir(folder, on_error, exts=SHARD_EXTENSIONS)
                if shards:
                    return _with_shards(shards, on_error)
                exts = ", ".join(sorted(VIDEO_EXTENSIONS))
                raise ConfigError(f"source={text!r}: the directory holds no video files (looked for {exts})")
            return Source(paths=paths)
        if os.path.isfile(text):
            from ._indexfile import is_index_file, source_from_index

            if is_index_file(text):
                return source_from_index(text)
            if os.path.splitext(text)[1].lower() in MANIFEST_EXTENSIONS:
                return _read_manifest(text)
            return _with_shards([os.path.abspath(text)], on_error)
        if glob.has_magic(text):
            paths = sorted(os.path.abspath(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p))
            if not paths:
                raise ConfigError(f"source={text!r}: the glob pattern matches no files")
            return _with_shards(paths, on_error)
        raise ConfigError(f"source={text!r}: no such file or directory (and not a glob pattern)")
    if isinstance(source, (bytes, bytearray)):
        raise ConfigError("source: pass paths as str, not bytes")
    try:
        items = list(source)
    except TypeError:
        raise ConfigError(
            f"source={source!r}: pass a directory, a glob pattern, a list of paths or a CSV/JSONL manifest"
        ) from None
    paths = []
    for i, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike)) or not os.fspath(item):
            raise ConfigError(f"source[{i}]={item!r}: each entry must be a non-empty path")
        paths.append(os.fspath(item))
    if not paths:
        raise ConfigError("source=[]: the list of paths is empty")
    return _with_shards(paths, on_error)


def _with_shards(paths: list[str], on_error: str) -> Source:
    """``paths``, with every tar shard among them replaced by its video members."""
    if not any(is_shard(p) for p in paths):
        return Source(paths=paths)
    from ._shards import shards_source

    return shards_source(paths, on_error)


def is_shard(path: str) -> bool:
    """A tar shard (by its name), not a member of one."""
    from . import _remote

    return not _remote.split_member(path) and os.path.splitext(path)[1].lower() in SHARD_EXTENSIONS


def _resolve_url(url: str, on_error: str = "raise") -> Source:
    """A URL: an object (video, shard, manifest or index file), a folder, or a glob."""
    from . import _remote
    from ._indexfile import SUFFIX

    storage = _remote.current()
    fs, path = storage.filesystem(url)

    def listed(found) -> list[str]:
        # Hidden names (".x.mp4", macOS "._x.mp4") are skipped, as in a local folder.
        keep = [p for p in found if not posixpath.basename(p.rstrip("/")).startswith(".")]
        return sorted(p if _remote.is_url(p) else fs.unstrip_protocol(p) for p in keep)

    if glob.has_magic(path):
        hits = storage.call(url, lambda: fs.glob(path, detail=True), what="listing the glob")
        found = listed(p for p, d in hits.items() if d.get("type") != "directory")
        if not found:
            raise ConfigError(f"source={url!r}: the glob pattern matches no objects")
        return _with_shards(found, on_error)
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTENSIONS or ext in SHARD_EXTENSIONS:
        return _with_shards([url], on_error)
    if ext in MANIFEST_EXTENSIONS:
        return _read_manifest(url)
    if ext == SUFFIX:
        from ._indexfile import source_from_index

        return source_from_index(_remote.local_copy(url))
    if storage.call(url, lambda: fs.isdir(path), what="checking whether it is a folder"):
        every = listed(storage.call(url, lambda: fs.find(path), what="listing the folder"))
        found = [p for p in every if os.path.splitext(p)[1].lower() in VIDEO_EXTENSIONS]
        shards = [p for p in every if os.path.splitext(p)[1].lower() in SHARD_EXTENSIONS]
        if found and shards:
            log.warning("source=%r: the folder holds videos and tar shards; read the %d videos, not the %d shards "
                        "(pass the shards' glob to read them)", url, len(found), len(shards))  # fmt: skip
        if not found and not shards:
            exts = ", ".join(sorted(VIDEO_EXTENSIONS | SHARD_EXTENSIONS))
            raise ConfigError(f"source={url!r}: the folder holds no video files or tar shards (looked for {exts})")
        return _with_shards(found or shards, on_error)
    return Source(paths=[url])


def _read_manifest(manifest: str) -> Source:
    from . import _remote

    remote = _remote.is_url(manifest)
    folder = posixpath.dirname(manifest) if remote else os.path.dirname(os.path.abspath(manifest))
    ext = os.path.splitext(manifest)[1].lower()
    rows: list[tuple[int, dict]] = []  # (line number, record)
    try:
        with _manifest_text(manifest) as fh:
            if ext == ".csv":
                reader = csv.DictReader(fh)
                if not reader.fieldnames or "path" not in [f.strip() for f in reader.fieldnames]:
                    raise ConfigError(f"{manifest}: line 1: the CSV header needs a 'path' column (has {reader.fieldnames})")
                for rec in reader:
                    rec = {(k or "").strip(): v for k, v in rec.items()}
                    rows.append((reader.line_num, rec))
            else:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{manifest}: line {lineno}: not valid JSON ({exc.msg})") from None
                    if not isinstance(rec, dict):
                        raise ConfigError(f"{manifest}: line {lineno}: expected a JSON object with a 'path' key")
                    rows.append((lineno, rec))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{manifest}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{manifest}: cannot read the manifest ({exc.strerror or exc})") from None
    if not rows:
        raise ConfigError(f"{manifest}: the manifest lists no videos")
    return rows_source(manifest, rows, folder)


def _manifest_text(manifest: str):
    from . import _remote

    if not _remote.is_url(manifest):
        return open(manifest, encoding="utf-8", newline="")
    data = _remote.current().read_all(manifest)
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline="")


def rows_source(manifest: str, rows: list[tuple[int, dict]], folder: str | None, *, members=None,
                lines: bool = True) -> Source:
    """A Source of manifest-like records (line number, {"path", "label"/"labels", "weight",
    "start", "end", other columns}); relative paths are resolved against ``folder``."""
    from . import _remote

    paths = []
    single: list = []
    multi: list = []
    weights = _manifest_weights(manifest, rows)
    for lineno, rec in rows:
        p = rec.get("path")
        if not isinstance(p, str) or not p.strip():
            raise ConfigError(f"{manifest}: line {lineno}: missing or empty 'path'")
        p = p.strip()
        member = _remote.split_member(p)
        if member is not None and folder is not None:
            p = _remote.member_path(_join_row(folder, member[0]), member[1])
        elif is_shard(p):
            raise ConfigError(
                f"{manifest}: line {lineno}: {p!r} is a tar shard; a manifest row is one video: name a member "
                "(tar://KEY.mp4::SHARD), or pass the shards themselves as the source"
            )
        paths.append(p if folder is None else _join_row(folder, p))
        has_label = rec.get("label") not in (None, "")
        # A present but empty 'labels' cell is a video with none of the classes (all zeros).
        has_labels = rec.get("labels") is not None
        if has_label and rec.get("labels") not in (None, "", []):
            raise ConfigError(f"{manifest}: line {lineno}: give either 'label' or 'labels', not both")
        single.append((lineno, rec.get("label")) if has_label else (lineno, None))
        if has_labels:
            val = rec["labels"]
            if isinstance(val, str):
                for sep in _LABEL_SEPARATORS:
                    if sep in val:
                        val = val.split(sep)
                        break
                else:
                    val = [val]
                val = [v.strip() for v in val if v.strip()]
            if not isinstance(val, list):
                raise ConfigError(f"{manifest}: line {lineno}: 'labels' must be a list (or 'a;b' in CSV)")
            multi.append((lineno, val))
        else:
            multi.append((lineno, None))

    extra = dict(
        segments=_segments(manifest, rows), meta=_meta(rows), manifest=manifest if lines else None,
        lines=np.asarray([lineno for lineno, _ in rows], dtype=np.int64) if lines else None, members=members,
    )
    n_single = sum(v is not None for _, v in single)
    n_multi = sum(v is not None for _, v in multi)
    if not any(v for _, v in multi):
        n_multi = 0  # an empty 'labels' column: beside single labels, or no labels at all
    if n_single and n_multi:
        raise ConfigError(f"{manifest}: mixes 'label' and 'labels' rows; use one of them for every row")
    if n_single == 0 and n_multi == 0:
        return Source(paths=paths, weights=weights, **extra)
    entries = single if n_single else multi
    for lineno, v in entries:
        if v is None:
            key = "label" if n_single else "labels"
            raise ConfigError(f"{manifest}: line {lineno}: no '{key}' while other rows have one")
    values = [v for _, v in entries] if n_single else [x for _, v in entries for x in v]
    to_id, names = _label_mapping(manifest, values, entries, multi=not n_single)
    if n_single:
        labels = np.asarray([to_id(v) for _, v in entries], dtype=np.int64)
        return Source(paths=paths, labels=labels, class_names=names, weights=weights, **extra)
    ids = [[to_id(x) for x in v] for _, v in entries]
    num_classes = len(names) if names is not None else (max((max(r) for r in ids if r), default=-1) + 1)
    hot = np.zeros((len(paths), max(num_classes, 0)), dtype=np.float32)
    for r, row in enumerate(ids):
        hot[r, row] = 1.0
    return Source(paths=paths, labels=hot, class_names=names, weights=weights, **extra)


def _join_row(folder: str, p: str) -> str:
    """A manifest row's path, relative to the manifest's folder (local or in a bucket)."""
    from . import _remote

    if not _remote.is_local(p) or os.path.isabs(p):
        return p
    if _remote.is_url(folder):
        return posixpath.normpath(posixpath.join(folder, p)).replace(":/", "://", 1)
    return os.path.normpath(os.path.join(folder, p))


def _manifest_weights(manifest: str, rows) -> np.ndarray | None:
    """The ``weight`` column: a finite number >= 0 on every row, or on none."""
    given = [(lineno, rec.get("weight")) for lineno, rec in rows]
    given = [(lineno, None if v is None or (isinstance(v, str) and not v.strip()) else v) for lineno, v in given]
    if all(v is None for _, v in given):
        return None
    out = np.empty(len(given), dtype=np.float64)
    for i, (lineno, v) in enumerate(given):
        if v is None:
            raise ConfigError(f"{manifest}: line {lineno}: no 'weight' while other rows have one")
        try:
            x = float(v) if not isinstance(v, bool) else float("nan")
        except (TypeError, ValueError):
            x = float("nan")
        if not (np.isfinite(x) and x >= 0):
            raise ConfigError(f"{manifest}: line {lineno}: weight {v!r} must be a finite number >= 0 (0 leaves the video out)")
        out[i] = x
    return out


def _seconds(manifest: str, lineno: int, column: str, v) -> float | None:
    """A ``start``/``end`` cell as seconds (None: empty), or a ConfigError naming the cell."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        if isinstance(v, bool):
            raise ValueError
        x = float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        raise ConfigError(f"{manifest}: line {lineno}: column '{column}' = {v!r} is not a number of seconds") from None
    if not math.isfinite(x) or x < 0:
        raise ConfigError(f"{manifest}: line {lineno}: column '{column}' = {v!r}: pass a finite number of seconds >= 0")
    return x


def _segments(manifest: str, rows) -> np.ndarray | None:
    """Each row's [start, end) in seconds; None when no row has a ``start`` or ``end`` column."""
    if not any("start" in rec or "end" in rec for _, rec in rows):
        return None
    out = np.empty((len(rows), 2), dtype=np.float64)
    for i, (lineno, rec) in enumerate(rows):
        a = _seconds(manifest, lineno, "start", rec.get("start"))
        b = _seconds(manifest, lineno, "end", rec.get("end"))
        a = 0.0 if a is None else a
        b = math.inf if b is None else b
        if b <= a:
            raise ConfigError(f"{manifest}: line {lineno}: column 'end' = {b:g} is not after 'start' = {a:g}: "
                              "a row's range is [start, end) in seconds")
        out[i] = a, b
    return out


def _meta(rows) -> dict[str, list] | None:
    """The other columns, per row, as read (CSV: strings; JSONL: JSON values); None where a row lacks one."""
    names: dict[str, None] = {}
    for _, rec in rows:
        for k in rec:
            if k and k not in _RESERVED:
                names.setdefault(k, None)
    if not names:
        return None
    return {k: [rec.get(k) for _, rec in rows] for k in names}


def _as_int(v) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip()
        if s.lstrip("-").isdigit():
            return int(s)
    return None


def _label_mapping(manifest: str, values: list, entries, *, multi: bool):
    """Ints stay ints (class_names None); otherwise names map to ids in sorted order."""
    for lineno, v in entries:
        for x in v if multi else [v]:
            if not isinstance(x, (str, int, float)) or isinstance(x, bool):
                raise ConfigError(f"{manifest}: line {lineno}: label {x!r} must be an int or a class name")
    ints = [_as_int(v) for v in values]
    if any(i is not None for i in ints) and not all(i is not None for i in ints):
        an_int = next(v for v, i in zip(values, ints) if i is not None)
        a_name = next(v for v, i in zip(values, ints) if i is None)
        raise ConfigError(
            f"{manifest}: the labels mix class ids (e.g. {an_int!r}) and class names (e.g. {a_name!r}); "
            "use one kind for every row (names are mapped to ids in sorted order)"
        )
    if all(i is not None for i in ints):
        for (lineno, v) in entries:
            for x in v if multi else [v]:
                if _as_int(x) < 0:
                    raise ConfigError(f"{manifest}: line {lineno}: label {x!r} is negative; class ids start at 0")
        return _as_int, None
    names = sorted({str(v).strip() for v in values})
    lookup = {n: i for i, n in enumerate(names)}
    return (lambda v: lookup[str(v).strip()]), names
