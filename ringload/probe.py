"""``probe()`` and ``index_paths()``: a video's index, from the cache or built, one file or many in parallel.

What an index holds is ``VideoInfo`` (``ringload._videoinfo``); how it is built,
``ringload._index_build``; the on-disk cache, ``ringload._index_cache``. Their public names
are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys

from . import _remote
from ._index_build import (  # noqa: F401
    _build,
    _fill,
    _timestamp_rule,
    _vp8_shown,
    _vp9_shown,
    select_stream,
)
from ._index_cache import (  # noqa: F401
    _cache_dir,
    _cache_key,
    _cache_load,
    _cache_store,
    _cache_trusted,
    default_cache_dir,
)
from ._videoinfo import (  # noqa: F401
    CACHE_FORMAT,
    ORIENTATIONS,
    TS_COUNT,
    TS_DTS,
    TS_PTS,
    VideoInfo,
    display_orientation,
    fps_fraction,
    frame_timestamp,
    short_files,
    short_files_warning,
)
from .errors import ConfigError, VideoError, VideoOpenError, WorkerError

log = logging.getLogger(__name__)

MAIN_GUARD_EXIT = 78  # a spawned process exited: the script lacks its main guard (loader._refuse_in_a_spawned_import)
MAIN_GUARD_HELP = (
    "ringload's decoders and indexing processes are spawned processes that import your main module; a "
    "script that builds a VideoLoader at module level builds it again in each of them. Build the loader (and train) under "
    "`if __name__ == \"__main__\":`, e.g.\n\n    def main():\n        loader = VideoLoader(...)\n"
    "        for batch in loader: ...\n\n    if __name__ == \"__main__\":\n        main()"
)


def probe(path: str | os.PathLike, *, stream: int | None = None, cache: bool | str | os.PathLike = True,
          storage_options: dict | None = None) -> VideoInfo:
    """Index one video stream: frame count, timestamps, keyframes, size, codec.

    ``path`` is a local file, an fsspec URL (``s3://bucket/a.mp4``; ``storage_options``
    go to fsspec) or a member of a tar shard (``tar://a.mp4::shard.tar``). ``stream`` is
    the container's stream index (default: the best video stream, see docs/indexing.md).
    ``cache`` is True (the default cache directory: ``RINGLOAD_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/ringload`` or ``~/.cache/ringload``), a directory, or False.
    Raises a :class:`ringload.VideoError` subclass naming the file when it cannot be used.
    """
    storage = _remote.Storage(storage_options) if storage_options is not None else None
    with _remote.using(storage):
        return _probe(path, stream=stream, cache=cache, threads=None)


@dataclasses.dataclass(frozen=True)
class _Ident:
    """What identifies the bytes behind a path, for the cache: like ``os.stat_result``'s
    size and mtime, plus a remote object's version and a member's byte range."""

    st_size: int
    st_mtime_ns: int
    etag: str = ""
    offset: int = 0
    length: int = -1


def _identify(path: str, member: tuple[int, int] | None) -> _Ident:
    outer = _remote.container_of(path)
    if _remote.is_url(outer):
        size, etag = _remote.current().identity(outer)
        mtime = -1
    else:
        try:
            st = os.stat(outer)
        except FileNotFoundError:
            raise VideoOpenError(path, "no such file") from None
        except OSError as exc:
            raise VideoOpenError(path, f"cannot stat: {exc.strerror or exc}") from None
        if not os.path.isfile(outer):
            raise VideoOpenError(path, "not a regular file")
        size, etag, mtime = st.st_size, "", st.st_mtime_ns
    if size == 0:
        raise VideoOpenError(path, "empty file (0 bytes)")
    if _remote.split_member(path) is None:
        return _Ident(size, mtime, etag)
    if member is None:
        member = _find_member(path)
    offset, length = int(member[0]), int(member[1])
    if offset < 0 or length <= 0 or offset + length > size:
        raise VideoOpenError(path, f"member bytes {offset}-{offset + length} do not lie inside its shard ({size} bytes)")
    return _Ident(size, mtime, etag, offset, length)


def _find_member(path: str) -> tuple[int, int]:
    """(offset, size) of a member, by scanning its shard (when no source listed it)."""
    from ._shards import find_member

    return find_member(path)


def _probe(path, *, stream, cache, threads: int | None, member: tuple[int, int] | None = None) -> VideoInfo:
    path = _remote.normalize(path)
    if stream is not None and (isinstance(stream, bool) or not isinstance(stream, int) or stream < 0):
        raise ConfigError(f"probe(stream={stream!r}): stream must be a stream index (int >= 0) or None")
    st = _identify(path, member)
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
    loc = {"file_size": st.st_size, "file_mtime_ns": st.st_mtime_ns, "file_etag": st.etag, "data_offset": st.offset,
           "data_size": st.length}  # fmt: skip
    info = dataclasses.replace(_build(path, stream, threads, loc=loc), **loc)
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
    reason: str | None = None  # the error without the path


def _probe_one(path: str, stream: int | None, cache, threads: int | None, member=None) -> IndexResult:
    try:
        return IndexResult(path, _probe(path, stream=stream, cache=cache, threads=threads, member=member), None)
    except VideoError as exc:
        return IndexResult(path, None, str(exc), type(exc).__name__, exc.reason)
    except Exception as exc:  # a bug or an FFmpeg surprise must not stop the other files
        log.exception("unexpected error indexing %s", path)
        why = f"{type(exc).__name__}: {exc}"
        return IndexResult(path, None, f"{_remote.normalize(path)}: {why}", type(exc).__name__, why)


def index_paths(paths, *, stream: int | None = None, cache=True, workers: int | None = None, on_result=None,
                members=None):
    """Probe many files in parallel spawned processes (``workers``, default: the usable
    cores; 1 runs in this process). Returns one :class:`IndexResult` per path, in order;
    ``on_result(result)`` is called as each finishes (progress bars). Never raises for a
    bad file: its result carries the error. ``members[i]`` is (offset, size) of path i in
    its tar shard (None: not a member, or unknown); remote paths are read with the
    current storage (``_remote.using``)."""
    paths = [os.fspath(p) for p in paths]
    members = list(members) if members is not None else [None] * len(paths)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: pass an int >= 1")
    workers = min(workers, max(1, len(paths)))
    results: list[IndexResult | None] = [None] * len(paths)
    if workers == 1:
        for i, p in enumerate(paths):
            results[i] = _probe_one(p, stream, cache, None, members[i])
            if on_result is not None:
                on_result(results[i])
        return results
    _run_index_pool(paths, stream, cache, workers, results, on_result, members)
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


def _index_worker(conn, parent_pid: int, stream: int | None, cache, storage=None) -> None:
    """Entry point of an indexing process: (position, path, member) in, (position, IndexResult) out."""
    _die_with_parent(parent_pid)
    if storage is not None:
        _remote.set_process_storage(storage)
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            i, path, member = msg
            conn.send((i, _probe_one(path, stream, cache, 1, member)))  # the processes already use every core
    except (EOFError, OSError):
        return  # the parent is gone
    finally:
        conn.close()


class _IndexProc:
    """One indexing process, the parent's end of its socket pair, and the file it holds."""

    def __init__(self, ctx, stream, cache, storage=None):
        self.conn, child = ctx.Pipe(duplex=True)  # a socket pair: no semaphore
        self.proc = ctx.Process(
            target=_index_worker, args=(child, os.getpid(), stream, cache, storage), name="ringload-index", daemon=True
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


def _run_index_pool(paths, stream, cache, workers, results, on_result, members) -> None:
    import collections
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    pending = collections.deque(range(len(paths)))
    storage = _remote.current()
    pool: list[_IndexProc] = []
    left = len(paths)
    ok = False

    def feed(w: _IndexProc) -> None:
        if pending:
            w.job = pending.popleft()
            try:
                w.conn.send((w.job, paths[w.job], members[w.job]))
            except OSError:
                pass  # it died already: the wait below reads end-of-file

    try:
        for _ in range(workers):
            w = _IndexProc(ctx, stream, cache, storage)
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
                    if w.proc.exitcode == MAIN_GUARD_EXIT:
                        # Not the file's fault: every file would "die" the same way.
                        raise WorkerError(f"an indexing process re-ran your script's loader construction. {MAIN_GUARD_HELP}") from None
                    reason = _exit_reason(w.proc.exitcode)
                    log.warning("indexing process %d died while indexing %s (%s)", w.proc.pid, paths[i], reason)
                    why = f"the indexing process died on it ({reason})"
                    res = IndexResult(paths[i], None, f"{_remote.normalize(paths[i])}: {why}", "WorkerError", why)
                    pool.remove(w)
                    w.stop(now=True)
                    w = None
                    if pending:  # the replacement takes the next file
                        w = _IndexProc(ctx, stream, cache, storage)
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
