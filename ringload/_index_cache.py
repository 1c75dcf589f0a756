"""The per-file index cache: one JSON entry per (path, size, mtime, stream, format).

Entries follow the umask; a cache folder other users may write is not used; every entry
is validated field by field and rebuilt when anything is off (docs/indexing.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import secrets
import stat

import numpy as np

from .errors import ConfigError
from ._videoinfo import CACHE_FORMAT, TS_COUNT, TS_DTS, TS_PTS, VideoInfo, display_orientation

log = logging.getLogger(__name__)


def default_cache_dir() -> str:
    env = os.environ.get("RINGLOAD_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ringload")


def _cache_dir(cache) -> str | None:
    if cache is False or cache is None:
        return None
    if cache is True:
        return default_cache_dir()
    if isinstance(cache, (str, os.PathLike)):
        return os.fspath(cache)
    raise ConfigError(f"probe(cache={cache!r}): pass True, False or a directory")


def _cache_key(path: str, st: os.stat_result, stream: int | None) -> str:
    # ``st`` may also be a remote object's identity (size, etag; a member's byte range).
    extra = [getattr(st, "etag", ""), getattr(st, "offset", 0), getattr(st, "length", -1)]
    ident = json.dumps([path, st.st_size, st.st_mtime_ns, stream, CACHE_FORMAT, *extra])
    return hashlib.sha256(ident.encode()).hexdigest()


def _cache_file(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, key[:2], key + ".json")


# Directories already reported as unsafe: one warning each, not one per file.
_warned_dirs: set[str] = set()


def _dir_trusted(folder: str) -> bool:
    """False (and one warning) when another user could have written ``folder``'s entries."""
    try:
        st = os.stat(folder)
    except OSError:
        return True  # missing: nothing to read, and we create it ourselves
    why = None
    if st.st_uid != os.geteuid():
        why = f"it is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        why = f"other users can write to it (mode {stat.S_IMODE(st.st_mode):o}, no sticky bit)"
    if why is None:
        return True
    if folder not in _warned_dirs:
        _warned_dirs.add(folder)
        log.warning(
            "not using the index cache directory %s: %s, so its entries cannot be trusted; indexing without "
            "the cache. Point RINGLOAD_CACHE_DIR (or probe(cache=...)) at a directory only you can write, "
            "or fix its owner and mode (chmod go-w)", folder, why,
        )
    return False


def _cache_trusted(cache_dir: str, key: str) -> bool:
    return _dir_trusted(cache_dir) and _dir_trusted(os.path.dirname(_cache_file(cache_dir, key)))


_ENTRY_KEYS = frozenset(
    {
        "format", "path", "stream", "num_frames", "pts", "keyframes", "fps", "width", "height", "rotation",
        "codec", "pix_fmt", "time_base", "timestamps", "file_size", "file_mtime_ns",
        "display_matrix", "display_rotation", "display_hflip", "container_frames", "decoder", "keyframe_pos",
        "file_etag", "data_offset", "data_size",
    }
)  # fmt: skip
_I64 = 1 << 63


def _is_int(v, lo: int = -_I64, hi: int = _I64 - 1) -> bool:
    return type(v) is int and lo <= v <= hi


def _int_list(d: dict, name: str) -> list[int]:
    v = d[name]
    if type(v) is not list or not all(_is_int(x) for x in v):
        raise ValueError(f"{name} is not a list of int64")
    return v


def _check_entry(d, path: str, st: os.stat_result, stream: int | None) -> None:
    """Raise ValueError unless ``d`` is exactly what _cache_store writes for this file."""
    if type(d) is not dict or set(d) != _ENTRY_KEYS:
        raise ValueError("not an index entry (wrong type or keys)")
    if d["format"] != CACHE_FORMAT or type(d["format"]) is not int:
        raise ValueError("cache format mismatch")
    if d["path"] != path or d["file_size"] != st.st_size or d["file_mtime_ns"] != st.st_mtime_ns:
        raise ValueError("entry is for another file (path, size or mtime differ)")
    if not _is_int(d["file_size"]) or not _is_int(d["file_mtime_ns"]):
        raise ValueError("file_size or file_mtime_ns is not an int")
    if (d["file_etag"], d["data_offset"], d["data_size"]) != (
        getattr(st, "etag", ""), getattr(st, "offset", 0), getattr(st, "length", -1)
    ):
        raise ValueError("entry is for another object version or member (etag, offset or size differ)")
    if not _is_int(d["stream"], 0, 1 << 20) or (stream is not None and d["stream"] != stream):
        raise ValueError("stream is wrong")
    n = d["num_frames"]
    if not _is_int(n, 1):
        raise ValueError("num_frames is not a positive int")
    pts = _int_list(d, "pts")
    if len(pts) != n:
        raise ValueError(f"{len(pts)} timestamps for num_frames={n}")
    diffs = np.diff(np.asarray(pts, dtype=np.int64))
    # "count" timestamps are computed from the frame rate and may repeat on a coarse time base.
    if not bool(np.all(diffs >= 0 if d["timestamps"] == TS_COUNT else diffs > 0)):
        raise ValueError("timestamps are not increasing")
    kf = _int_list(d, "keyframes")
    if kf and not (kf[0] >= 0 and kf[-1] < n and all(a < b for a, b in zip(kf, kf[1:]))):
        raise ValueError("keyframes are not sorted frame indices")
    kp = _int_list(d, "keyframe_pos")
    if len(kp) != len(kf) or any(v < -1 for v in kp):
        raise ValueError("keyframe_pos is not one byte position (or -1) per keyframe")
    fps = d["fps"]
    if type(fps) not in (int, float) or not (0 <= fps < 1e9):  # also rejects NaN
        raise ValueError("fps is not a finite number >= 0")
    if not _is_int(d["width"], 1, 1 << 20) or not _is_int(d["height"], 1, 1 << 20):
        raise ValueError("width or height is not a positive int")
    if not _is_int(d["rotation"], -360, 360):
        raise ValueError("rotation is not an angle in degrees")
    m = d["display_matrix"]
    if m is not None and (type(m) is not list or len(m) != 9 or not all(_is_int(v, -(1 << 31), (1 << 31) - 1) for v in m)):
        raise ValueError("display_matrix is not null or 9 int32")
    if type(d["display_hflip"]) is not bool or not _is_int(d["display_rotation"]):
        raise ValueError("display_rotation or display_hflip has the wrong type")
    # The orientation is derived from the matrix: an entry where they disagree is forged or stale.
    if (d["display_rotation"], d["display_hflip"]) != display_orientation(m):
        raise ValueError("display_rotation/display_hflip disagree with display_matrix")
    if m is None and d["rotation"] != 0:
        raise ValueError("rotation without a display matrix")
    if not _is_int(d["container_frames"], -1) or d["container_frames"] == 0:
        raise ValueError("container_frames is not a frame count (> 0) or -1 (unknown)")
    for name in ("codec", "pix_fmt", "decoder"):
        if type(d[name]) is not str or not d[name]:
            raise ValueError(f"{name} is not a name")
    tb = d["time_base"]
    if type(tb) is not list or len(tb) != 2 or not all(_is_int(x, 1) for x in tb):
        raise ValueError("time_base is not [num, den] with both > 0")
    if d["timestamps"] not in (TS_PTS, TS_DTS, TS_COUNT):
        raise ValueError("unknown timestamps rule")


def _cache_load(cache_dir: str, key: str, path: str, st: os.stat_result, stream: int | None) -> VideoInfo | None:
    fname = _cache_file(cache_dir, key)
    try:
        with open(fname, "rb") as fh:
            data = json.loads(fh.read())
        _check_entry(data, path, st, stream)
        return VideoInfo.from_json(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, IndexError, OverflowError, ZeroDivisionError, RecursionError) as exc:
        # A torn, foreign or forged entry is rebuilt, never trusted. RecursionError: deeply
        # nested JSON.
        log.warning("ignoring unreadable index cache entry %s for %s: %s", fname, path, exc or type(exc).__name__)
        return None


def _make_private_dir(folder: str) -> None:
    # 0o755, not the umask's 0o777: under umask 002 our own folders would otherwise be
    # group-writable, and so refused by _dir_trusted.
    try:
        os.mkdir(folder, 0o755)
    except FileExistsError:
        pass


def _cache_store(cache_dir: str, key: str, info: VideoInfo) -> None:
    fname = _cache_file(cache_dir, key)
    folder = os.path.dirname(fname)
    try:
        parent = os.path.dirname(os.path.abspath(cache_dir))
        os.makedirs(parent, exist_ok=True)
        _make_private_dir(cache_dir)
        _make_private_dir(folder)
        if not _cache_trusted(cache_dir, key):
            return  # someone else created or changed it meanwhile
        # Write a new temporary file, then rename: readers in other processes see either no
        # entry or a complete one. os.open applies the umask, as for any ordinary file.
        for _ in range(100):
            tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}.json")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"no free temporary name in {folder}")
        try:
            with io.open(fd, "w", encoding="utf-8") as fh:
                json.dump(info.to_json(), fh, separators=(",", ":"))
            os.replace(tmp, fname)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        log.warning("cannot write index cache %s (set RINGLOAD_CACHE_DIR or probe(cache=...)): %s", fname, exc)
