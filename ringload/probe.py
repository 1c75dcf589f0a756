"""``probe()``: which frames a video really holds, their timestamps and keyframes, cached on disk.

The index is built from demuxed packets wherever that is exact, and checked against what
the decoder produces at the start and the end of the stream; on any disagreement the
whole stream is decoded and what decodes wins. docs/indexing.md explains the rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import secrets
import signal
import stat
import sys
from fractions import Fraction
from typing import Any

import numpy as np

from .errors import ConfigError, DecodeError, NoVideoStreamError, VideoError, VideoOpenError

log = logging.getLogger(__name__)

# Bump when the meaning or layout of a cache entry changes: old entries are then ignored.
# 3: the display matrix and the orientation derived from it; 4: container_frames and decoder.
CACHE_FORMAT = 4

# How frames are delivered: "display" as a player shows them (the display matrix applied),
# "coded" as the decoder outputs them.
ORIENTATIONS = ("display", "coded")

# Codecs whose demuxed packets map one to one onto shown frames (each packet carries one
# picture, the decoder emits one frame per packet). VP8/VP9 packets are parsed for the
# show_frame bit (hidden alt-ref frames). Every other codec is indexed by a full decode.
_PACKET_EXACT = frozenset(
    {"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4", "h263", "h263p", "mjpeg", "prores", "dnxhd", "vp8", "vp9"}
)

# Timestamp rules, recorded in VideoInfo.timestamps (see docs/indexing.md).
TS_PTS = "pts"  # frame.pts (falling back to frame.dts where pts is missing)
TS_DTS = "dts"  # frame.dts: the decoder's pts are out of order but its dts are not (AVI packed B-frames)
TS_COUNT = "count"  # neither is usable: frames are identified by their position in a decode from the start


@dataclasses.dataclass(frozen=True, eq=False)
class VideoInfo:
    """What one video stream holds. Arrays are read-only numpy arrays.

    ``pts`` (int64, in ``time_base`` units) and ``pts_seconds`` (float64) list every frame
    that decodes, in presentation order; ``keyframes`` lists the indices of frames that
    decode without earlier frames. ``width``/``height`` are the coded size. ``rotation`` is
    FFmpeg's counter-clockwise angle of the display matrix in degrees (``frame.rotation``);
    ``display_matrix`` is the whole matrix (9 int32 as FFmpeg stores them, None: none) and
    ``display_rotation`` (0, 90, 180 or 270, counter-clockwise) then ``display_hflip``
    (mirror left-right) is the transform that shows a coded frame the way a player does.
    ``timestamps`` says how frame times were derived: "pts", "dts" or "count" (see
    docs/indexing.md). ``file_size`` and ``file_mtime_ns`` identify the file the index was
    built from (-1: unknown); decoders refuse a file that no longer matches them. ``codec``
    is the codec ("av1"), ``decoder`` the FFmpeg decoder that indexed it ("libdav1d"; ""
    when unknown). ``container_frames`` is the number of frames the container says the
    stream presents (its header count less the packets its edit list discards; -1: it does
    not say); more than ``num_frames`` means the file decodes fewer frames than it claims
    (``ringload.probe.short_files_warning``).
    """

    path: str
    stream: int
    num_frames: int
    pts: np.ndarray
    pts_seconds: np.ndarray
    keyframes: np.ndarray
    fps: float
    width: int
    height: int
    rotation: int
    codec: str
    pix_fmt: str
    time_base: Fraction
    timestamps: str = TS_PTS
    file_size: int = -1
    file_mtime_ns: int = -1
    display_matrix: tuple[int, ...] | None = None
    display_rotation: int = 0
    display_hflip: bool = False
    container_frames: int = -1
    decoder: str = ""

    def __post_init__(self):
        if self.num_frames != len(self.pts) or len(self.pts) != len(self.pts_seconds):
            raise ValueError("VideoInfo: num_frames, pts and pts_seconds disagree")
        if self.timestamps not in (TS_PTS, TS_DTS, TS_COUNT):
            raise ValueError(f"VideoInfo: unknown timestamps rule {self.timestamps!r}")
        if self.display_rotation not in (0, 90, 180, 270):
            raise ValueError(f"VideoInfo: display_rotation {self.display_rotation!r} is not 0, 90, 180 or 270")
        for name in ("pts", "pts_seconds", "keyframes"):
            arr = getattr(self, name)
            if arr.flags.writeable:
                arr = arr.copy()
                arr.flags.writeable = False
                object.__setattr__(self, name, arr)

    def __setstate__(self, state):
        # Unpickled arrays (e.g. in a decoder process) come back writeable: lock them again.
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
            object.__setattr__(self, key, value)

    def orient(self, orientation: str = "display") -> tuple[int, bool]:
        """(counter-clockwise rotation, mirror) that turns a coded frame into one delivered with ``orientation``."""
        return (self.display_rotation, bool(self.display_hflip)) if orientation == "display" else (0, False)

    def size(self, orientation: str = "display") -> tuple[int, int]:
        """(height, width) of a whole frame delivered with ``orientation``."""
        if self.orient(orientation)[0] in (90, 270):
            return self.width, self.height
        return self.height, self.width

    @property
    def duration_seconds(self) -> float:
        """Span from the first frame to the end of the last one (one average frame period)."""
        if self.num_frames == 0:
            return 0.0
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        return float(self.pts_seconds[-1] - self.pts_seconds[0]) + period

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "path": self.path,
            "stream": self.stream,
            "num_frames": self.num_frames,
            "pts": self.pts.tolist(),
            "keyframes": self.keyframes.tolist(),
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "rotation": self.rotation,
            "codec": self.codec,
            "pix_fmt": self.pix_fmt,
            "time_base": [self.time_base.numerator, self.time_base.denominator],
            "timestamps": self.timestamps,
            "file_size": self.file_size,
            "file_mtime_ns": self.file_mtime_ns,
            "display_matrix": list(self.display_matrix) if self.display_matrix is not None else None,
            "display_rotation": self.display_rotation,
            "display_hflip": bool(self.display_hflip),
            "container_frames": self.container_frames,
            "decoder": self.decoder,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VideoInfo:
        if d.get("format") != CACHE_FORMAT:
            raise ValueError("cache format mismatch")
        tb = Fraction(int(d["time_base"][0]), int(d["time_base"][1]))
        pts = np.asarray(d["pts"], dtype=np.int64)
        return cls(
            path=str(d["path"]),
            stream=int(d["stream"]),
            num_frames=int(d["num_frames"]),
            pts=pts,
            pts_seconds=_seconds(pts, tb),
            keyframes=np.asarray(d["keyframes"], dtype=np.int64),
            fps=float(d["fps"]),
            width=int(d["width"]),
            height=int(d["height"]),
            rotation=int(d["rotation"]),
            codec=str(d["codec"]),
            pix_fmt=str(d["pix_fmt"]),
            time_base=tb,
            timestamps=str(d["timestamps"]),
            file_size=int(d["file_size"]),
            file_mtime_ns=int(d["file_mtime_ns"]),
            display_matrix=tuple(int(v) for v in d["display_matrix"]) if d["display_matrix"] is not None else None,
            display_rotation=int(d["display_rotation"]),
            display_hflip=bool(d["display_hflip"]),
            container_frames=int(d["container_frames"]),
            decoder=str(d["decoder"]),
        )


def probe(path: str | os.PathLike, *, stream: int | None = None, cache: bool | str | os.PathLike = True) -> VideoInfo:
    """Index one video stream: frame count, timestamps, keyframes, size, codec.

    ``stream`` is the container's stream index (default: the best video stream, see
    docs/indexing.md). ``cache`` is True (the default cache directory: ``RINGLOAD_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/ringload`` or ``~/.cache/ringload``), a directory, or False.
    Raises a :class:`ringload.VideoError` subclass naming the file when it cannot be used.
    """
    return _probe(path, stream=stream, cache=cache, threads=None)


def _probe(path, *, stream, cache, threads: int | None) -> VideoInfo:
    path = os.path.abspath(os.fspath(path))
    if stream is not None and (isinstance(stream, bool) or not isinstance(stream, int) or stream < 0):
        raise ConfigError(f"probe(stream={stream!r}): stream must be a stream index (int >= 0) or None")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoOpenError(path, "no such file") from None
    except OSError as exc:
        raise VideoOpenError(path, f"cannot stat: {exc.strerror or exc}") from None
    if not os.path.isfile(path):
        raise VideoOpenError(path, "not a regular file")
    if st.st_size == 0:
        raise VideoOpenError(path, "empty file (0 bytes)")

    cache_dir = _cache_dir(cache)
    key = None
    if cache_dir is not None:
        key = _cache_key(path, st, stream)
        if not _cache_trusted(cache_dir, key):
            cache_dir = None
    if cache_dir is not None and key is not None:
        info = _cache_load(cache_dir, key, path, st, stream)
        if info is not None:
            return info
    info = dataclasses.replace(_build(path, stream, threads), file_size=st.st_size, file_mtime_ns=st.st_mtime_ns)
    if cache_dir is not None and key is not None:
        _cache_store(cache_dir, key, info)
    return info


# --------------------------------------------------------------------------- many files


@dataclasses.dataclass(frozen=True)
class IndexResult:
    """One file of an :func:`index_paths` run: ``info`` or ``error`` (the message) is set."""

    path: str
    info: VideoInfo | None
    error: str | None
    error_type: str | None = None


def _probe_one(path: str, stream: int | None, cache, threads: int | None) -> IndexResult:
    try:
        return IndexResult(path, _probe(path, stream=stream, cache=cache, threads=threads), None)
    except VideoError as exc:
        return IndexResult(path, None, str(exc), type(exc).__name__)
    except Exception as exc:  # a bug or an FFmpeg surprise must not stop the other files
        log.exception("unexpected error indexing %s", path)
        return IndexResult(path, None, f"{os.path.abspath(path)}: {type(exc).__name__}: {exc}", type(exc).__name__)


def index_paths(paths, *, stream: int | None = None, cache=True, workers: int | None = None, on_result=None):
    """Probe many files in parallel spawned processes (``workers``, default: the usable
    cores; 1 runs in this process). Returns one :class:`IndexResult` per path, in order;
    ``on_result(result)`` is called as each finishes (progress bars). Never raises for a
    bad file: its result carries the error."""
    paths = [os.fspath(p) for p in paths]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: pass an int >= 1")
    workers = min(workers, max(1, len(paths)))
    results: list[IndexResult | None] = [None] * len(paths)
    if workers == 1:
        for i, p in enumerate(paths):
            results[i] = _probe_one(p, stream, cache, None)
            if on_result is not None:
                on_result(results[i])
        return results
    _run_index_pool(paths, stream, cache, workers, results, on_result)
    return results


# --------------------------------------------------------------------------- indexing processes
#
# Not a ProcessPoolExecutor: its queues hold semaphores (sem.mp-* in /dev/shm) and its
# workers block on a queue whose write end they hold themselves, so they outlive a killed
# parent. Here each worker owns one socket pair to the parent and nothing else: it exits
# at end-of-file of that socket, and through PR_SET_PDEATHSIG when the parent dies while
# it is busy in a probe.

_PR_SET_PDEATHSIG = 1
_STOP_TIMEOUT = 5.0  # seconds a worker gets to exit before it is terminated, then killed
_POLL_INTERVAL = 5.0  # seconds between liveness checks while every worker is busy


def _die_with_parent(parent_pid: int) -> None:
    """Have Linux SIGKILL this process when its parent exits."""
    # Strictly: when the parent's thread that started it exits; index_paths stops its
    # workers before it returns, so that thread outlives them.
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as exc:  # no usable libc: end-of-file still stops the worker
            log.debug("prctl unavailable: %s", exc)
    # The parent may have died before prctl took effect: then no signal will ever come.
    if os.getppid() != parent_pid:
        os._exit(0)


def _index_worker(conn, parent_pid: int, stream: int | None, cache) -> None:
    """Entry point of an indexing process: (position, path) in, (position, IndexResult) out."""
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            i, path = msg
            conn.send((i, _probe_one(path, stream, cache, 1)))  # the processes already use every core
    except (EOFError, OSError):
        return  # the parent is gone
    finally:
        conn.close()


class _IndexProc:
    """One indexing process, the parent's end of its socket pair, and the file it holds."""

    def __init__(self, ctx, stream, cache):
        self.conn, child = ctx.Pipe(duplex=True)  # a socket pair: no semaphore
        self.proc = ctx.Process(
            target=_index_worker, args=(child, os.getpid(), stream, cache), name="ringload-index", daemon=True
        )
        self.job: int | None = None
        try:
            self.proc.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            child.close()  # only the worker may hold it, or its death would not read as end-of-file

    def stop(self, *, now: bool) -> None:
        """Close the channel (the worker exits at end-of-file), then terminate and kill on timeouts."""
        self.conn.close()
        proc = self.proc
        if now and proc.exitcode is None:
            proc.terminate()
        proc.join(_STOP_TIMEOUT)
        if proc.exitcode is None:
            proc.terminate()
            proc.join(_STOP_TIMEOUT)
        if proc.exitcode is None:
            proc.kill()
            proc.join(_STOP_TIMEOUT)
        if proc.exitcode is None:
            log.warning("indexing process %d did not exit", proc.pid)
        else:
            proc.close()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "its channel closed"
    if code == -signal.SIGKILL:
        return "killed by SIGKILL, e.g. by the out-of-memory killer"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _run_index_pool(paths, stream, cache, workers, results, on_result) -> None:
    import collections
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    pending = collections.deque(range(len(paths)))
    pool: list[_IndexProc] = []
    left = len(paths)
    ok = False

    def feed(w: _IndexProc) -> None:
        if pending:
            w.job = pending.popleft()
            try:
                w.conn.send((w.job, paths[w.job]))
            except OSError:
                pass  # it died already: the wait below reads end-of-file

    try:
        for _ in range(workers):
            w = _IndexProc(ctx, stream, cache)
            pool.append(w)
            feed(w)
        while left:
            busy = {w.conn: w for w in pool if w.job is not None}
            ready = wait(list(busy), timeout=_POLL_INTERVAL)
            if not ready:
                # No reply: a dead worker whose socket end lives on elsewhere still counts.
                ready = [c for c, w in busy.items() if w.proc.exitcode is not None]
            for conn in ready:
                w = busy[conn]
                try:
                    if not conn.poll(0):
                        raise EOFError  # dead (the fallback above) with nothing to read
                    i, res = conn.recv()
                except (EOFError, OSError):
                    i = w.job
                    w.proc.join(_STOP_TIMEOUT)
                    reason = _exit_reason(w.proc.exitcode)
                    log.warning("indexing process %d died while indexing %s (%s)", w.proc.pid, paths[i], reason)
                    res = IndexResult(
                        paths[i], None, f"{os.path.abspath(paths[i])}: the indexing process died on it ({reason})", "WorkerError"
                    )
                    pool.remove(w)
                    w.stop(now=True)
                    w = None
                    if pending:  # the replacement takes the next file
                        w = _IndexProc(ctx, stream, cache)
                        pool.append(w)
                results[i] = res
                left -= 1
                if w is not None:
                    w.job = None
                    feed(w)
                if on_result is not None:
                    on_result(res)
        ok = True
    finally:
        for w in pool:
            w.stop(now=not ok)


# --------------------------------------------------------------------------- cache


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
    ident = json.dumps([path, st.st_size, st.st_mtime_ns, stream, CACHE_FORMAT])
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
        "display_matrix", "display_rotation", "display_hflip", "container_frames", "decoder",
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


# --------------------------------------------------------------------------- building


def _seconds(pts: np.ndarray, tb: Fraction) -> np.ndarray:
    return pts.astype(np.float64) * (tb.numerator / tb.denominator)


def _open(path: str):
    import av

    try:
        return av.open(path, "r")
    except av.FFmpegError as exc:
        raise VideoOpenError(path, f"FFmpeg cannot open it: {exc}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VideoOpenError(path, f"cannot open: {exc}") from None


def _is_attached_pic(st) -> bool:
    import av

    return bool(int(st.disposition) & int(av.stream.Disposition.attached_pic))


def select_stream(container, path: str, stream: int | None):
    """The stream to index: ``stream`` if given (must be video), else the best video stream."""
    streams = list(container.streams)
    if stream is not None:
        if stream >= len(streams):
            raise NoVideoStreamError(path, f"stream {stream} does not exist ({len(streams)} streams)", hint="probe(stream=...)")
        st = streams[stream]
        if st.type != "video":
            raise NoVideoStreamError(path, f"stream {stream} is {st.type}, not video", hint="probe(stream=...)")
        return st
    cands = [s for s in streams if s.type == "video" and not _is_attached_pic(s)]
    if not cands:
        kinds = ", ".join(f"{s.index}:{s.type}" + (" (attached picture)" if _is_attached_pic(s) else "") for s in streams)
        raise NoVideoStreamError(path, f"no video stream (streams: {kinds or 'none'})")

    def score(s):
        frames = int(s.frames or 0)
        if frames <= 0 and s.duration and s.average_rate:
            frames = int(float(s.duration * s.time_base) * float(s.average_rate))
        cc = s.codec_context
        return (frames, int(cc.width or 0) * int(cc.height or 0), -s.index)

    return max(cands, key=score)


def _fill(values: list) -> np.ndarray | None:
    """Missing timestamps (None) become the previous one plus the median step; None if all are missing."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    steps = np.diff(np.asarray(known, dtype=np.int64))
    step = int(np.median(steps)) if len(steps) and np.median(steps) > 0 else 1
    out = np.empty(len(values), dtype=np.int64)
    first_known = next(i for i, v in enumerate(values) if v is not None)
    for i in range(first_known, -1, -1):  # leading gaps count back from the first known one
        out[i] = values[first_known] - (first_known - i) * step
    for i in range(first_known + 1, len(values)):
        out[i] = values[i] if values[i] is not None else out[i - 1] + step
    return out


def _increasing(arr: np.ndarray | None) -> bool:
    return arr is not None and (len(arr) < 2 or bool(np.all(np.diff(arr) > 0)))


def _timestamp_rule(pts: list, dts: list) -> tuple[str, np.ndarray]:
    """Pick how frames are timed from the decoder's (pts, dts) in output order."""
    arr = _fill([p if p is not None else d for p, d in zip(pts, dts)])
    if _increasing(arr):
        return TS_PTS, arr
    arr = _fill(dts)
    if _increasing(arr):
        return TS_DTS, arr
    return TS_COUNT, np.arange(len(pts), dtype=np.int64)


def _orientation_table() -> dict[tuple[int, int, int, int], tuple[int, bool]]:
    """Signs (a, b, c, d) of a display matrix's entries 0, 1, 3, 4 -> (counter-clockwise turn, mirror)."""
    # FFmpeg shows the coded point (x, y), y pointing down, at (a*x + c*y, b*x + d*y): the
    # reading under which its command line picks its autorotation filters (transpose=clock
    # for a = d = 0 and c < 0, cclock_flip for c > 0, hflip for a < 0, ...). Checked against
    # the ffmpeg command line on real files in tests/test_orientation.py.
    ccw = np.array([[0, 1], [-1, 0]])  # a quarter turn counter-clockwise: (x, y) -> (y, -x)
    mirror = np.array([[-1, 0], [0, 1]])  # applied after the turn
    table = {}
    for k in range(4):
        for flip in (False, True):
            m = np.linalg.matrix_power(ccw, k)
            if flip:
                m = mirror @ m
            table[(int(m[0, 0]), int(m[1, 0]), int(m[0, 1]), int(m[1, 1]))] = (90 * k, flip)
    return table


_ORIENTATION_TABLE = _orientation_table()


def _exact_orientation(matrix) -> tuple[int, bool] | None:
    """The quarter-turn transform (and mirror) ``matrix`` describes; None if it is none of the eight."""
    if matrix is None:
        return 0, False
    abcd = [int(matrix[i]) for i in (0, 1, 3, 4)]
    big = max(abs(v) for v in abcd)
    if big == 0:
        return None
    # Fixed-point cos/sin of a quarter turn are not always exactly 0: near zero counts as zero.
    signs = tuple(0 if abs(v) * 1000 < big else (1 if v > 0 else -1) for v in abcd)
    return _ORIENTATION_TABLE.get(signs)


def display_orientation(matrix) -> tuple[int, bool]:
    """(counter-clockwise rotation, mirror after it) that shows a frame as FFmpeg's display
    ``matrix`` (9 int32, or None) says; (0, False) for a matrix that is not a quarter turn."""
    return _exact_orientation(matrix) or (0, False)


def _display_matrix(frame) -> tuple[int, ...] | None:
    """The display matrix FFmpeg attached to a decoded frame (from the container or the stream), or None."""
    from av.sidedata.sidedata import Type

    sd = frame.side_data.get(Type.DISPLAYMATRIX)
    if sd is None:
        return None
    raw = bytes(sd)
    if len(raw) != 36:
        return None
    return tuple(int(v) for v in np.frombuffer(raw, dtype="=i4"))  # FFmpeg stores native-endian int32


def frame_timestamp(frame, rule: str):
    """The timestamp of a decoded frame under ``rule`` (None when it has none)."""
    if rule == TS_DTS:
        return frame.dts
    p = frame.pts
    return p if p is not None else frame.dts


def _configure(st, threads: int | None) -> None:
    cc = st.codec_context
    if threads is not None:
        cc.thread_type = "AUTO" if threads != 1 else "SLICE"
        cc.thread_count = threads


def _decode_all(container, st, path: str, threads: int | None):
    """Decode the whole stream: ([pts], [dts], [key], first frame or None, error or None)."""
    import av

    _configure(st, threads)
    pts, dts, key = [], [], []
    first = None
    error = None
    try:
        for frame in container.decode(st):
            if first is None:
                first = frame
            pts.append(frame.pts)
            dts.append(frame.dts)
            key.append(bool(frame.key_frame))
    except av.FFmpegError as exc:
        error = str(exc)
    return pts, dts, key, first, error


def _vp8_shown(data: bytes) -> int:
    return (data[0] >> 4) & 1 if data else 0


def _vp9_frame_shown(data: bytes) -> int:
    if not data:
        return 0
    b = data[0]
    if (b >> 6) != 2:
        raise ValueError("bad VP9 frame marker")
    profile = ((b >> 5) & 1) | (((b >> 4) & 1) << 1)
    bit = 3
    if profile == 3:
        bit -= 1  # reserved zero bit
    show_existing = (b >> bit) & 1
    if show_existing:
        return 1
    bit -= 2  # frame_type
    if bit < 0:
        if len(data) < 2:
            raise ValueError("short VP9 frame")
        return (data[1] >> (7 + bit)) & 1 if bit == -1 else (data[1] >> 6) & 1
    return (b >> bit) & 1


def _vp9_shown(data: bytes) -> int:
    """Number of shown frames in one VP9 packet (a superframe holds several)."""
    if not data:
        return 0
    last = data[-1]
    if (last & 0xE0) == 0xC0:
        n = (last & 7) + 1
        mag = ((last >> 3) & 3) + 1
        size = 2 + mag * n
        if len(data) >= size and data[-size] == last:
            shown = 0
            off = 0
            idx = len(data) - size + 1
            for _ in range(n):
                fsize = int.from_bytes(data[idx : idx + mag], "little")
                idx += mag
                shown += _vp9_frame_shown(data[off : off + fsize])
                off += fsize
            return shown
    return _vp9_frame_shown(data)


class _NotExact(Exception):
    """The packet-derived index cannot be trusted for this stream."""


def _packet_index(container, st, codec: str):
    """(sorted pts, keyframe pts set, discarded packets) from demuxing only; raises _NotExact when unsure."""
    import av

    shown_fn = _vp8_shown if codec == "vp8" else _vp9_shown if codec == "vp9" else None
    pts_list = []
    key_pts = []
    discarded = 0
    try:
        for pkt in container.demux(st):
            if pkt.size == 0:
                continue  # the end-of-stream flush packet, or an empty AVI chunk (no frame)
            if pkt.is_discard:
                discarded += 1
                continue  # dropped by the decoder too (e.g. before an MP4 edit list start)
            if pkt.is_corrupt or pkt.pts is None:
                raise _NotExact("corrupt packet or packet without pts")
            if shown_fn is not None:
                try:
                    shown = shown_fn(bytes(pkt))
                except (ValueError, IndexError) as exc:
                    raise _NotExact(f"unparsable packet: {exc}") from None
                if shown == 0:
                    continue  # hidden alt-ref frame: decoded, never shown
                if shown != 1:
                    raise _NotExact("packet shows several frames")
            pts_list.append(int(pkt.pts))
            if pkt.is_keyframe:
                key_pts.append(int(pkt.pts))
    except av.FFmpegError as exc:
        raise _NotExact(f"demux error: {exc}") from None
    arr = np.asarray(sorted(pts_list), dtype=np.int64)
    if len(arr) > 1 and not bool(np.all(np.diff(arr) > 0)):
        raise _NotExact("duplicate packet timestamps")
    return arr, key_pts, discarded


def _discarded_packets(path: str, stream_index: int) -> int:
    """Packets of the stream that the container marks to be dropped (before an edit list's start)."""
    import av

    n = 0
    try:
        with _open(path) as c:
            for pkt in c.demux(list(c.streams)[stream_index]):
                if pkt.size and pkt.is_discard:
                    n += 1
    except (av.FFmpegError, VideoOpenError) as exc:  # a damaged file: count what demuxes
        log.debug("%s: demuxing for discarded packets stopped: %s", path, exc)
    return n


def _fps_from(ts: np.ndarray, tb: Fraction, fallback: Fraction | None) -> Fraction:
    """The average frame rate over the timestamps, exactly: (n - 1) / (last - first)."""
    n = len(ts)
    if n > 1 and int(ts[-1]) > int(ts[0]):
        return Fraction(n - 1) / (Fraction(int(ts[-1]) - int(ts[0])) * tb)
    return fallback if fallback else Fraction(0)


def fps_fraction(info: VideoInfo) -> Fraction:
    """``info.fps`` as the exact fraction it was computed from: (n - 1) frame periods over the
    span of the timestamps (``Fraction(25)``, ``Fraction(30000, 1001)``). For a stream with
    one frame, ``fps`` is the container's average rate, recovered from the float."""
    return _fps_from(info.pts, info.time_base, Fraction(info.fps).limit_denominator(1 << 20) if info.fps > 0 else None)


def short_files(infos) -> list[VideoInfo]:
    """The videos of ``infos`` (None entries are skipped) that decode fewer frames than
    their container claims (``container_frames > num_frames``), in order."""
    return [i for i in infos if i is not None and i.container_frames > i.num_frames]


def short_files_warning(infos, *, limit: int | None = 5) -> str | None:
    """One line naming the videos that decode fewer frames than their container claims,
    each with both counts, or None when there are none. ``limit``: how many to name
    (None: all). Made for ``VideoLoader`` to log at construction, whether the index came
    from the cache or not; ``ringload index`` prints it in its summary."""
    short = short_files(infos)
    if not short:
        return None
    n = len(short)
    shown = short if limit is None else short[: max(0, limit)]
    listed = ", ".join(f"{i.path} ({i.num_frames} of {i.container_frames})" for i in shown)
    more = f" and {n - len(shown)} more" if n > len(shown) else ""
    what = "1 video decodes fewer frames than its container claims" if n == 1 else (
        f"{n} videos decode fewer frames than their containers claim"
    )
    return f"{what} (damaged or cut short; only the frames that decode are used): {listed}{more}"


def _verify(path: str, stream_index: int, pts: np.ndarray, keyframes: np.ndarray, tb: Fraction, threads: int | None):
    """Decode the first GOP and the last GOP through the reader; return (ok, first frame or None)."""
    from ._decode import VideoReader

    n = len(pts)
    provisional = VideoInfo(
        path=path, stream=stream_index, num_frames=n, pts=pts, pts_seconds=_seconds(pts, tb), keyframes=keyframes,
        fps=0.0, width=0, height=0, rotation=0, codec="", pix_fmt="", time_base=tb,
    )
    first = []

    def keep_first(pos, frame):
        if pos == 0:
            first.append(frame)

    # First GOP: from the start up to the second keyframe; last GOP: the last keyframe to
    # the end, and nothing may decode after it. With one keyframe that is the whole stream.
    head = int(keyframes[1]) if len(keyframes) > 1 else n
    # Indexing counts what decodes: a concealed (corrupt) frame is still a frame of the stream.
    reader = VideoReader(path, provisional, threads=1 if threads is None else threads, allow_corrupt=True)
    try:
        reader.decode(range(0, head), keep_first)
        if len(keyframes) > 1:
            reader.decode(range(int(keyframes[-1]), n), lambda pos, frame: None)
        extra = reader.drain()
    except DecodeError as exc:
        log.info("%s: packet index disagrees with decoding (%s); decoding fully", path, exc.reason)
        return False, None
    finally:
        reader.close()
    if extra:
        log.info("%s: %d frames decode after the last packet; decoding fully", path, extra)
        return False, None
    return True, (first[0] if first else None)


def _rgb_frames(path: str, info: VideoInfo, indices: range, threads: int | None, *, warm_from: int | None = None):
    from ._decode import VideoReader

    got = {}
    lo = indices.start if warm_from is None else warm_from
    wanted = range(lo, indices.stop)

    def keep(pos, frame):
        if wanted[pos] >= indices.start:
            got[wanted[pos]] = frame.to_ndarray(format="rgb24")

    with VideoReader(path, info, threads=1 if threads is None else threads, skip_nonref=False,
                     allow_corrupt=True) as reader:
        reader.decode(wanted, keep)
    return got


def _seek_is_exact(path: str, info: VideoInfo, threads: int | None) -> bool:
    """Does a seek to the last keyframe give the frames a decode running through it gives?

    Some files flag frames as keyframes that FFmpeg cannot decode on their own (seen: an
    H.264 4:4:4 file whose later IDR frames decode to garbage after a seek). Checked on
    the last keyframe: decoded continuing from the keyframe before it, and after a seek.
    """
    kf = info.keyframes
    if len(kf) < 2 or info.timestamps == TS_COUNT:
        return True
    k, prev = int(kf[-1]), int(kf[-2])
    span = range(k, min(info.num_frames, k + 3))
    try:
        through = _rgb_frames(path, info, span, threads, warm_from=prev)
        seeked = _rgb_frames(path, info, span, threads)
    except DecodeError as exc:
        log.info("%s: seek check failed to decode (%s)", path, exc.reason)
        return False
    return all(np.array_equal(through[i], seeked[i]) for i in span)


def _build(path: str, stream: int | None, threads: int | None = None) -> VideoInfo:
    import av

    with _open(path) as c:
        st = select_stream(c, path, stream)
        idx = st.index
        cc = st.codec_context
        decoder = cc.name or "unknown"
        codec = cc.codec.canonical_name or decoder
        header_frames = int(st.frames or 0)
        tb = st.time_base or Fraction(1, 1)
        tb = Fraction(tb.numerator, tb.denominator)
        avg_rate = st.average_rate or st.guessed_rate
        packet_pts = None
        key_pts = None
        discarded = None
        # The decoder's behaviour decides whether packets map onto frames: keyed by its name.
        if decoder in _PACKET_EXACT:
            try:
                packet_pts, key_pts, discarded = _packet_index(c, st, decoder)
            except _NotExact as exc:
                log.info("%s: stream %d indexed by full decode (%s)", path, idx, exc)

    first = None
    rule = TS_PTS
    ts = None
    error = None
    if packet_pts is not None and len(packet_pts) > 0 and key_pts:
        pos = {int(p): i for i, p in enumerate(packet_pts)}
        keyframes = np.asarray(sorted(pos[p] for p in key_pts), dtype=np.int64)
        ok, first = _verify(path, idx, packet_pts, keyframes, tb, threads)
        if ok:
            ts = packet_pts
    if ts is None:
        with _open(path) as c:
            st = list(c.streams)[idx]
            pts_l, dts_l, key_l, first, error = _decode_all(c, st, path, threads)
        if not pts_l:
            reason = f"no frame of video stream {idx} decodes"
            if error:
                reason += f" ({error})"
            raise DecodeError(path, reason)
        rule, ts = _timestamp_rule(pts_l, dts_l)
        keyframes = np.flatnonzero(np.asarray(key_l, dtype=bool)).astype(np.int64)
        if rule == TS_COUNT:
            # Without usable timestamps only a decode from the start is exact.
            keyframes = np.asarray([0], dtype=np.int64)
            period = (1 / avg_rate) if avg_rate else Fraction(1, 25)
            ts = np.asarray([round(i * period / tb) for i in range(len(pts_l))], dtype=np.int64)
    if first is None:
        raise DecodeError(path, f"no frame of video stream {idx} decodes")
    if len(keyframes) > 1:
        candidate = VideoInfo(
            path=path, stream=idx, num_frames=len(ts), pts=ts, pts_seconds=_seconds(ts, tb), keyframes=keyframes,
            fps=0.0, width=0, height=0, rotation=0, codec=codec, pix_fmt="", time_base=tb, timestamps=rule,
            decoder=decoder,
        )
        if not _seek_is_exact(path, candidate, threads):
            log.warning(
                "%s: stream %d: a seek to a keyframe does not reproduce the frames of a continuous decode; "
                "reads of this file decode from its first keyframe (re-encoding the file fixes this)", path, idx
            )
            keyframes = keyframes[:1]

    n = len(ts)
    secs = _seconds(ts, tb)
    # Exact, then rounded once: 250 frames at 1/12800 give 25.0, not 24.999999999999996.
    fps = float(_fps_from(ts, tb, Fraction(avg_rate) if avg_rate else None))
    container_frames = -1
    if header_frames > 0:
        if header_frames > n and discarded is None:
            discarded = _discarded_packets(path, idx)
        container_frames = max(1, header_frames - (discarded or 0))
    if container_frames > n:
        log.warning(
            "%s: stream %d decodes %d of the %d frames its container claims%s; indexed the %d that decode "
            "(later reads and loaders see only those)", path, idx, n, container_frames,
            f" (the decoder stops: {error})" if error else "", n,
        )
    elif error is not None:
        log.warning("%s: stream %d stops decoding after %d frames: %s", path, idx, n, error)
    rotation = int(round(getattr(first, "rotation", 0) or 0))
    matrix = _display_matrix(first)
    if _exact_orientation(matrix) is None:
        log.warning(
            "%s: stream %d: the display matrix %s is not a quarter turn (rotation %d degrees); its frames are "
            "delivered as coded", path, idx, list(matrix), rotation,
        )
    turn, mirror = display_orientation(matrix)
    return VideoInfo(
        path=path,
        stream=idx,
        num_frames=n,
        pts=ts,
        pts_seconds=secs,
        keyframes=keyframes,
        fps=fps,
        width=int(first.width),
        height=int(first.height),
        rotation=rotation,
        codec=codec,
        pix_fmt=str(first.format.name),
        time_base=tb,
        timestamps=rule,
        display_matrix=matrix,
        display_rotation=turn,
        display_hflip=mirror,
        container_frames=container_frames,
        decoder=decoder,
    )
