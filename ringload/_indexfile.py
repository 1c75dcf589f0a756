"""The dataset index file (``.ringindex``): every video's index in one columnar, memory-mapped file.

Layout (docs/indexing.md, "The index file"): a 24-byte prefix (magic ``RINGIDX\\0``, the
format version, the header's length and CRC-32), a JSON header naming every column (dtype,
shape, offset, CRC-32), then the columns as raw little-endian arrays, each aligned to 64
bytes. No pickle: reading it builds nothing but numpy views of the mapped bytes.

Per video (one row each): path, the size and mtime the entry was built from, stream, frame
count, time base, fps, coded size, rotation and the whole display matrix, codec, decoder,
pixel format, timestamp rule, the container's frame count, labels and weights, and for
files that could not be indexed the error. Concatenated with offsets: keyframe indices and
the byte position of each keyframe's packet; timestamps of variable-rate videos (a
constant-rate video is stored as first pts and a rational step: ``pts[i] = first + (i * p +
r) // q``, checked against every timestamp when written). Unknown columns are ignored by readers (room for tar-member offsets and object
versions); a column a reader must understand is listed in the header's ``required``.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import struct
import zlib
from fractions import Fraction

import numpy as np

from ._videoinfo import TS_COUNT, TS_DTS, TS_PTS, VideoInfo, _seconds
from .errors import ConfigError

MAGIC = b"RINGIDX\0"
#: Version of the file layout; a reader refuses any other (``ringload index --out`` rebuilds).
FORMAT_VERSION = 1
#: Columns this reader understands; a file whose ``required`` lists another is refused.
KNOWN_FEATURES = frozenset({"base", "members"})  # members: rows that are byte ranges of tar shards
SUFFIX = ".ringindex"
_PREFIX = struct.Struct("<8sIII")  # magic, format version, header length, header CRC-32
_ALIGN = 64
_MAX_HEADER = 1 << 26
_CHUNK = 1 << 24  # bytes per read when checking CRCs (read, not mapped: no RSS growth)

# Small vocabularies stored as uint16 codes, their names in the header.
_CATEGORIES = ("codec", "decoder", "pix_fmt", "timestamps", "error_type")
# Per-video columns: name -> dtype, plus (name, width) for 2-D ones.
_ROW = {
    "ok": "u1", "file_size": "<i8", "file_mtime_ns": "<i8", "stream": "<i4", "num_frames": "<i8",
    "fps": "<f8", "width": "<i4", "height": "<i4", "rotation": "<i4", "has_display_matrix": "u1",
    "display_rotation": "<i2", "display_hflip": "u1", "container_frames": "<i8",
    "pts_first": "<i8", "pts_step": "<i8", "pts_step_den": "<i8", "pts_round": "<i8",
}  # fmt: skip
_ROW2 = {"time_base": ("<i8", 2), "display_matrix": ("<i4", 9)}


class IndexFileError(ConfigError):
    """An index file that cannot be used: truncated, corrupted, or written by another format
    version. The message names the file and says to rebuild it."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}; rebuild it with `ringload index SOURCE --out {path}`")


def is_index_file(path) -> bool:
    """Whether ``path`` names an index file (by its suffix, or by its first bytes)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = os.fspath(path)
    if p.endswith(SUFFIX):
        return True
    try:
        with open(p, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


# --------------------------------------------------------------------------- writing


_MAX_STEP_DEN = 1 << 20


# --------------------------------------------------------------------------- reading


class IndexFile:
    """A mapped index file: columns as read-only numpy views, ``info(i)`` a VideoInfo view.

    ``IndexFile.open(path)`` checks everything (header, sizes, every column's CRC-32, that
    offsets and keyframes are in range): what the consumer does. ``IndexFile.from_fd(fd,
    name, verify=False)`` maps a descriptor another process already checked (decoders:
    only the header is read, so only the rows they use are ever paged in).
    """

    def __init__(self, mm: mmap.mmap, name: str, header: dict, fd: int | None = None):
        self._mm = mm
        self.fd = fd  # kept open to hand to decoders (None: not kept)
        self.name = name
        self.header = header
        self.meta = header.get("meta", {})
        self.categories = header["categories"]
        self.num_videos = int(header["videos"])
        self._cols: dict[str, np.ndarray] = {}
        start = header["data_start"] = _data_start(header["_hlen"])
        for col, spec in header["columns"].items():
            dt = np.dtype(spec["dtype"])
            shape = tuple(spec["shape"])
            count = int(np.prod(shape)) if shape else 1
            self._cols[col] = np.frombuffer(mm, dtype=dt, count=count, offset=start + spec["offset"]).reshape(shape)

    # ---- opening

    @classmethod
    def open(cls, path, *, verify: bool = True) -> IndexFile:
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise IndexFileError(path, f"cannot open the index file ({exc.strerror or exc})") from None
        try:
            return cls.from_fd(fd, path, verify=verify)
        finally:
            os.close(fd)  # the mapping keeps the file

    @classmethod
    def from_fd(cls, fd: int, name: str, *, verify: bool = False, keep_fd: bool = True, random: bool = False) -> IndexFile:
        """``random``: rows are read one at a time (decoders): no read-ahead, so a lookup
        pages in the rows it reads, not the 128 KiB around each."""
        size = os.fstat(fd).st_size
        if size < _PREFIX.size:
            raise IndexFileError(name, f"not an index file (only {size} bytes)")
        head = os.pread(fd, _PREFIX.size, 0)
        magic, version, hlen, hcrc = _PREFIX.unpack(head)
        if magic != MAGIC:
            raise IndexFileError(name, "not a ringload index file (wrong magic bytes)")
        if version != FORMAT_VERSION:
            raise IndexFileError(
                name, f"index format version {version}; this ringload reads version {FORMAT_VERSION} only"
            )
        if hlen > min(_MAX_HEADER, size - _PREFIX.size):
            raise IndexFileError(name, f"truncated or corrupt: a {hlen}-byte header in a {size}-byte file")
        hbytes = os.pread(fd, hlen, _PREFIX.size)
        if zlib.crc32(hbytes) != hcrc:
            raise IndexFileError(name, "corrupt header (CRC-32 mismatch)")
        try:
            header = json.loads(hbytes)
            header["_hlen"] = hlen
            _check_header(header, size)
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFileError(name, f"corrupt header ({exc})") from None
        missing = set(header["required"]) - KNOWN_FEATURES
        if missing:
            raise IndexFileError(name, f"needs features this ringload lacks: {sorted(missing)}; upgrade ringload")
        if verify:
            _check_crcs(fd, name, header)
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        if random and hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            mm.madvise(mmap.MADV_RANDOM)
        idx = cls(mm, name, header, os.dup(fd) if keep_fd else None)
        if verify:
            try:
                idx._check_structure()
            except ValueError as exc:
                raise IndexFileError(name, f"inconsistent contents ({exc})") from None
        return idx

    def _check_structure(self) -> None:
        n, c = self.num_videos, self._cols
        for name in (*_ROW, *_ROW2, *_CATEGORIES):
            if len(c[name]) != n:
                raise ValueError(f"column {name} has {len(c[name])} rows for {n} videos")
        for cat in _CATEGORIES:
            if n and int(c[cat].max()) >= len(self.categories[cat]):
                raise ValueError(f"column {cat} names no category")
        for off, data in (("path_off", "path_data"), ("error_off", "error_data"), ("pts_off", "pts"),
                          ("kf_off", "keyframes")):  # fmt: skip
            o = c[off]
            if len(o) != n + 1 or o[0] != 0 or o[-1] != len(c[data]) or bool(np.any(np.diff(o) < 0)):
                raise ValueError(f"offsets {off} do not cover {data}")
        if len(c["keyframe_pos"]) != len(c["keyframes"]):
            raise ValueError("keyframe_pos and keyframes differ in length")
        for name in ("data_offset", "data_size"):
            if name in c and len(c[name]) != n:
                raise ValueError(f"column {name} has {len(c[name])} rows for {n} videos")
        if "etag_off" in c:
            o = c["etag_off"]
            if len(o) != n + 1 or o[0] != 0 or o[-1] != len(c["etag_data"]) or bool(np.any(np.diff(o) < 0)):
                raise ValueError("offsets etag_off do not cover etag_data")
        ok = c["ok"].astype(bool)
        nf, step = c["num_frames"], c["pts_step"]
        exact = np.diff(c["pts_off"])
        if bool(np.any(ok & (step == 0) & (exact != nf))) or bool(np.any((step != 0) & (exact != 0))):
            raise ValueError("timestamps and frame counts disagree")
        if bool(np.any(ok & (nf < 1))) or bool(np.any(step < 0)) or bool(np.any(c["pts_step_den"] < 1)):
            raise ValueError("a video without frames, or a negative timestamp step")
        kfn = np.diff(c["kf_off"])
        if bool(np.any(ok & (kfn < 1))) or bool(np.any(~ok & (kfn != 0))):
            raise ValueError("a video without keyframes")
        kf = c["keyframes"]
        owner = np.repeat(np.arange(n), kfn)
        if len(kf) and (bool(np.any(kf < 0)) or bool(np.any(kf >= nf[owner]))):
            raise ValueError("a keyframe outside its video")
        if len(kf) > 1:
            same = owner[1:] == owner[:-1]
            if bool(np.any(same & (np.diff(kf) <= 0))):
                raise ValueError("keyframes not increasing")
        if bool(np.any(c["time_base"] < 1)):
            raise ValueError("a time base that is not positive")

    # ---- columns and rows

    def __len__(self) -> int:
        return self.num_videos

    def column(self, name: str) -> np.ndarray | None:
        """The column ``name`` (read-only, mapped), or None when the file has none."""
        return self._cols.get(name)

    def _string(self, col: str, i: int) -> str:
        o = self._cols[col + "_off"]
        return bytes(self._cols[col + "_data"][int(o[i]) : int(o[i + 1])]).decode("utf-8", "surrogateescape")

    def path(self, i: int) -> str:
        return self._string("path", i)

    def paths(self) -> list[str]:
        """Every path, in row order (decoded in one pass)."""
        o, blob = self._cols["path_off"], self._cols["path_data"].tobytes()
        o = o.tolist()
        return [blob[a:b].decode("utf-8", "surrogateescape") for a, b in zip(o, o[1:])]

    def ok(self, i: int) -> bool:
        return bool(self._cols["ok"][i])

    def error(self, i: int) -> tuple[str, str] | None:
        """(error type name, reason) of a file that could not be indexed, else None."""
        if self.ok(i):
            return None
        return self.categories["error_type"][int(self._cols["error_type"][i])], self._string("error", i)

    def _cat(self, cat: str, i: int) -> str:
        return self.categories[cat][int(self._cols[cat][i])]

    def pts(self, i: int) -> np.ndarray:
        c = self._cols
        n, step = int(c["num_frames"][i]), int(c["pts_step"][i])
        if step == 0:
            return c["pts"][int(c["pts_off"][i]) : int(c["pts_off"][i + 1])]
        q, r = int(c["pts_step_den"][i]), int(c["pts_round"][i])
        out = int(c["pts_first"][i]) + (np.arange(n, dtype=np.int64) * step + r) // q
        out.flags.writeable = False
        return out

    def keyframes(self, i: int) -> np.ndarray:
        o = self._cols["kf_off"]
        return self._cols["keyframes"][int(o[i]) : int(o[i + 1])]

    def info(self, i: int) -> VideoInfo | None:
        """Row ``i`` as a VideoInfo (None: the file could not be indexed); built from the
        mapped columns, equal to what ``probe()`` returned when the row was written."""
        if not 0 <= i < self.num_videos:
            raise IndexError(f"video {i} of an index of {self.num_videos}")
        c = self._cols
        if not c["ok"][i]:
            return None
        tb = Fraction(int(c["time_base"][i, 0]), int(c["time_base"][i, 1]))
        pts = self.pts(i)
        o = c["kf_off"]
        secs = _seconds(pts, tb)
        secs.flags.writeable = False
        return VideoInfo(
            path=self.path(i), stream=int(c["stream"][i]), num_frames=int(c["num_frames"][i]), pts=pts,
            pts_seconds=secs, keyframes=c["keyframes"][int(o[i]) : int(o[i + 1])], fps=float(c["fps"][i]),
            width=int(c["width"][i]), height=int(c["height"][i]), rotation=int(c["rotation"][i]),
            codec=self._cat("codec", i), pix_fmt=self._cat("pix_fmt", i), time_base=tb,
            timestamps=self._cat("timestamps", i), file_size=int(c["file_size"][i]),
            file_mtime_ns=int(c["file_mtime_ns"][i]),
            display_matrix=tuple(int(v) for v in c["display_matrix"][i]) if c["has_display_matrix"][i] else None,
            display_rotation=int(c["display_rotation"][i]), display_hflip=bool(c["display_hflip"][i]),
            container_frames=int(c["container_frames"][i]), decoder=self._cat("decoder", i),
            keyframe_pos=c["keyframe_pos"][int(o[i]) : int(o[i + 1])],
            file_etag=self._string("etag", i) if "etag_off" in c else "",
            data_offset=int(c["data_offset"][i]) if "data_offset" in c else 0,
            data_size=int(c["data_size"][i]) if "data_size" in c else -1,
        )  # fmt: skip

    def infos(self, cache: int = 4096) -> IndexInfos:
        return IndexInfos(self, cache)

    def close(self) -> None:
        self._cols = {}
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            self._mm.close()
        except BufferError:
            pass  # views still alive: the mapping goes with the last of them


class IndexInfos:
    """A sequence of a mapped index's rows as VideoInfo (None for a file that could not be
    indexed), built on access and kept in a bounded cache: what loaders hold instead of a
    list, so 10^6 videos cost their mapped columns, not 10^6 objects."""

    def __init__(self, index: IndexFile, cache: int = 4096):
        self.index = index
        self._get = functools.lru_cache(maxsize=cache)(index.info)

    def __len__(self) -> int:
        return self.index.num_videos

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        return self._get(i)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def column(self, name: str) -> np.ndarray | None:
        return self.index.column(name)


def _check_header(h: dict, size: int) -> None:
    if type(h) is not dict or h.get("format") != FORMAT_VERSION:
        raise ValueError("format field missing or wrong")
    start = _data_start(h["_hlen"])
    if type(h["data_size"]) is not int or start + h["data_size"] != size:
        raise ValueError(f"the file has {size} bytes, its header says {start + h['data_size']}: truncated or appended to")
    if type(h["videos"]) is not int or h["videos"] < 0:
        raise ValueError("videos is not a count")
    for name, spec in h["columns"].items():
        dt = np.dtype(spec["dtype"])
        if type(spec["shape"]) is not list or not all(type(d) is int and d >= 0 for d in spec["shape"]):
            raise ValueError(f"column {name} has a bad shape")
        if type(spec["offset"]) is not int or spec["offset"] % _ALIGN:
            raise ValueError(f"column {name} has a bad offset")
        if dt.hasobject:
            raise ValueError(f"column {name} holds objects")
        nbytes = int(np.prod(spec["shape"])) * dt.itemsize if spec["shape"] else dt.itemsize
        if spec["offset"] < 0 or start + spec["offset"] + nbytes > size:
            raise ValueError(f"column {name} lies outside the file")
    for cat in _CATEGORIES:
        if type(h["categories"].get(cat)) is not list:
            raise ValueError(f"categories of {cat} missing")
    for need in ("path_off", "path_data", "error_off", "error_data", "pts", "pts_off", "kf_off", "keyframes",
                 "keyframe_pos", *_ROW, *_ROW2, *_CATEGORIES):  # fmt: skip
        if need not in h["columns"]:
            raise ValueError(f"column {need} missing")
    if set(h["categories"]["timestamps"]) - {TS_PTS, TS_DTS, TS_COUNT, ""}:
        raise ValueError("unknown timestamps rule")


def _data_start(hlen: int) -> int:
    end = _PREFIX.size + hlen
    return end + (-end) % _ALIGN


def _check_crcs(fd: int, name: str, header: dict) -> None:
    start = _data_start(header["_hlen"])
    for col, spec in header["columns"].items():
        dt = np.dtype(spec["dtype"])
        left = int(np.prod(spec["shape"])) * dt.itemsize if spec["shape"] else dt.itemsize
        pos, crc = start + spec["offset"], 0
        while left:
            b = os.pread(fd, min(left, _CHUNK), pos)
            if not b:
                raise IndexFileError(name, f"truncated in column {col}")
            crc = zlib.crc32(b, crc)
            pos += len(b)
            left -= len(b)
        if crc != spec["crc32"]:
            raise IndexFileError(name, f"corrupt column {col} (CRC-32 mismatch)")


def video_dims(infos, orientation: str = "display"):
    """(width, height, turn, mirror) arrays, one entry per video (0 / False for an unusable
    one): from the columns of an :class:`IndexInfos` without building a VideoInfo, else
    from each VideoInfo of a list."""
    column = getattr(infos, "column", None)
    if column is not None:
        ok = column("ok").astype(bool)
        w = np.where(ok, column("width"), 0).astype(np.int64)
        h = np.where(ok, column("height"), 0).astype(np.int64)
        if orientation == "display":
            return w, h, np.where(ok, column("display_rotation"), 0).astype(np.int64), ok & column("display_hflip").astype(bool)
        return w, h, np.zeros(len(ok), dtype=np.int64), np.zeros(len(ok), dtype=bool)
    w = np.array([i.width if i is not None else 0 for i in infos], dtype=np.int64)
    h = np.array([i.height if i is not None else 0 for i in infos], dtype=np.int64)
    orients = [i.orient(orientation) if i is not None else (0, False) for i in infos]
    return w, h, np.array([o[0] for o in orients], dtype=np.int64), np.array([o[1] for o in orients], dtype=bool)


def source_from_index(path: str):
    """The Source of an index file: its paths, labels and class names, and the mapped file."""
    from ._source import Source

    idx = IndexFile.open(path)
    labels = idx.column("label")
    if labels is None:
        labels = idx.column("labels")
    weights = idx.column("weight")
    return Source(paths=idx.paths(), labels=labels, class_names=idx.meta.get("class_names"), index=idx,
                  weights=np.asarray(weights, dtype=np.float64) if weights is not None else None)
