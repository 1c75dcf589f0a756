"""A decoder process: read task messages, decode, write frames straight into ring slots.

A decoder is started with the ``spawn`` context and imports only numpy, PyAV and the
decode helpers (never torch, so never CUDA). It inherits one end of a socketpair (no name
exists that another process could connect to), receives the ring's open file descriptor
over it (``socket.send_fds``) with the dataset's index file, maps both read-only, and then
serves tasks (each names its video: its index is read from the mapped file) until the socket reaches
end-of-file, which is also how it notices that the consumer died: it exits on its own.
Messages are ``ringload._protocol``'s. ``TaskRunner`` also runs in the consumer itself
with ``num_workers=0``.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import select
import signal
import socket
import sys
import threading
import time

import numpy as np

from . import _protocol as P

log = logging.getLogger(__name__)


class Channel:
    """Blocking message channel over this process's end of the control socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = P.MessageReader()
        self.queue: collections.deque = collections.deque()
        self.eof = False

    def send(self, msg) -> None:
        self.sock.sendall(P.encode(msg))

    def recv(self, *, with_fds: bool = False):
        """Next message (and received descriptors when asked); None at end-of-file."""
        fds: list[int] = []
        while not self.queue:
            if self.eof:
                return (None, fds) if with_fds else None
            if with_fds:
                data, got, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 4)
                fds.extend(got)
            else:
                data = self.sock.recv(1 << 16)
            self._take_in(data)
        msg = self.queue.popleft()
        return (msg, fds) if with_fds else msg

    def pending(self) -> bool:
        """Whether a whole message (or end-of-file) has arrived: recv() would not wait."""
        while not self.queue and not self.eof:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            self._take_in(self.sock.recv(1 << 16))
        return True

    def _take_in(self, data: bytes) -> None:
        if data:
            self.queue.extend(self.reader.feed(data))
        else:
            self.eof = True


def main(sock: socket.socket, token: bytes, worker_id: int, runner=None) -> None:
    """Entry point of a decoder process (the spawn target). ``sock`` is this decoder's end
    of a socketpair inherited from the consumer; ``runner`` builds the TaskRunner (tests
    hand in one that injects faults)."""
    # Ctrl-C reaches the whole process group; the consumer decides when decoders stop,
    # and they stop when its end of the socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"ringload decoder {worker_id}: %(levelname)s %(message)s")
    chan = Channel(sock)
    try:
        chan.send(P.Hello(worker_id, os.getpid(), token, "torch" in sys.modules))
        msg, fds = chan.recv(with_fds=True)
    except OSError as exc:
        log.info("cannot reach the loader: %s", exc)  # it closed while this decoder was starting
        return
    if not isinstance(msg, P.Ring) or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return
    from ._indexfile import IndexFile
    from ._ring import AttachedRing

    ring = AttachedRing(fds[0], msg.layout)
    try:
        # The consumer checked the file (CRCs, structure) before any decoder started; only
        # its header is read here, so a decoder pages in just the rows of its tasks.
        index = IndexFile.from_fd(fds[1], msg.index_name, verify=False, keep_fd=False, random=True)
    finally:
        os.close(fds[1])
    try:
        serve(chan, (runner or TaskRunner)(ring.slots, msg.options, index))
    finally:
        ring.close()
        index.close()
        sock.close()


def serve(chan: Channel, runner: TaskRunner) -> None:
    try:
        chan.send(P.Ready("torch" in sys.modules))
        while True:
            t0 = time.perf_counter()
            msg = chan.recv()
            if msg is None:
                return
            if not isinstance(msg, P.Task):
                raise P.ProtocolError(f"a decoder expects tasks, got {type(msg).__name__}")
            chan.send(runner.run(msg, idle_s=time.perf_counter() - t0, ahead=functools.partial(_ahead, chan, runner)))
    except (BrokenPipeError, ConnectionResetError):
        return  # the consumer closed the channel (or died): nothing left to do
    finally:
        runner.close()


def _ahead(chan: Channel, runner: TaskRunner) -> bool:
    """Warm the next task once it has arrived; True once there is nothing more to look for.
    The consumer queues up to `depth` tasks per decoder, the next one usually while the
    current one decodes: its bytes (a remote object's) are fetched meanwhile."""
    if not chan.pending():
        return False
    if chan.queue and isinstance(chan.queue[0], P.Task):
        runner.warm(chan.queue[0])
    return True


class TaskRunner:
    """Decodes tasks into ring slots, keeping up to ``max_open`` videos open; ``index`` is
    the mapped index file (``_indexfile.IndexFile``) the tasks' video numbers refer to."""

    def __init__(self, slots, options: P.DecoderOptions, index):
        from . import _decode

        self._decode = _decode
        self.slots = slots
        self.options = options
        self.index = index
        self.readers: collections.OrderedDict = collections.OrderedDict()
        self.infos: collections.OrderedDict = collections.OrderedDict()
        from . import _remote

        so, cache_bytes, retries, timeout_s = options.storage
        self.storage = _remote.Storage(so, cache_bytes=cache_bytes, retries=retries, timeout_s=timeout_s)
        _remote.set_process_storage(self.storage)
        self._reported = dict.fromkeys(P.REMOTE_COUNTERS, 0)
        self._gop_bytes = 0  # of readers closed since
        self._warming: dict[int, tuple[threading.Thread, object]] = {}  # task id -> (thread, its counters)
        self._warmed: list[tuple[threading.Thread, object]] = []  # threads whose counters are not yet added

    def _info(self, video: int):
        info = self.infos.get(video)
        if info is None:
            info = self.infos[video] = self.index.info(video)
        self.infos.move_to_end(video)
        while len(self.infos) > self.options.info_cache:
            self.infos.popitem(last=False)
        return info

    def _reader(self, video: int, path: str):
        info = self._info(video)
        reader = self.readers.get(video)
        if reader is None:
            reader = self._decode.VideoReader(path, info, threads=self.options.threads)
            self.readers[video] = reader
            while len(self.readers) > self.options.max_open:
                _, old = self.readers.popitem(last=False)
                self._gop_bytes += old.gop_bytes
                _close(old)
        self.readers.move_to_end(video)
        return reader

    def _drop_reader(self, video: int) -> None:
        reader = self.readers.pop(video, None)
        if reader is not None:
            self._gop_bytes += reader.gop_bytes
            _close(reader)

    def warm(self, task: P.Task) -> None:
        """Start fetching, in a thread, the bytes of a remote object that ``task`` will read (the
        header blocks its last opening read, if it is not open, and its GOPs), so that they
        arrive while the current task decodes. Failures are left for the task itself to meet
        and report; a task that never runs only cost the fetch."""
        from . import _remote

        if task.task_id in self._warming or not _remote.is_url(_remote.container_of(task.path)):
            return
        if self.storage.cache.capacity == 0:
            return  # nothing fetched ahead would still be cached when the task reads it
        try:
            info = self._info(task.video)
        except Exception:  # the task's own run reports it
            return
        from ._rangefile import RemoteStats

        stats = RemoteStats()
        header = task.video not in self.readers
        th = threading.Thread(target=self._warm, args=(task.path, info, np.unique(task.frames), header, stats),
                              name="ringload-warm", daemon=True)  # fmt: skip
        self._warming[task.task_id] = (th, stats)
        th.start()

    def _warm(self, path: str, info, targets, header: bool, stats) -> None:
        from . import _remote

        try:
            f, _ = self.storage.open_indexed(path, stats=stats, **_remote.location(info))
            try:
                if header:
                    f.warm_header()
                self._decode.prefetch_gops(f, info, targets)
            finally:
                f.close()
        except Exception as exc:
            log.debug("fetching ahead for %s failed (its task meets it): %s", path, exc)

    def _await_warm(self, task_id: int) -> None:
        """Let the warm-ahead of this task finish (one request timeout at most: past it the task
        fetches what it still lacks itself)."""
        w = self._warming.pop(task_id, None)
        if w is not None:
            w[0].join(timeout=self.storage.timeout_s)
            self._warmed.append(w)
        for tid in [t for t, (th, _) in self._warming.items() if not th.is_alive()]:
            self._warmed.append(self._warming.pop(tid))  # warmed for a task that went elsewhere

    def _remote_delta(self) -> tuple:
        """Counters of remote reads since the last reply (all zero for local files)."""
        for w in [w for w in self._warmed if not w[0].is_alive()]:
            self._warmed.remove(w)
            self.storage.stats.add(w[1])
            self.storage.stats.ahead_requests += w[1].requests
        now = self.storage.stats.as_dict()
        now["gop_bytes"] = self._gop_bytes + sum(r.gop_bytes for r in self.readers.values())
        delta = tuple(int(now.get(k, 0)) - self._reported[k] for k in P.REMOTE_COUNTERS)
        self._reported = {k: int(now.get(k, 0)) for k in P.REMOTE_COUNTERS}
        return delta if any(delta) else ()

    def close(self) -> None:
        for video in list(self.readers):
            self._drop_reader(video)

    def run(self, task: P.Task, *, idle_s: float = 0.0, ahead=None):
        """Decode ``task``; returns the Done or Failed reply. ``ahead()`` is called before
        decoding and after each frame until it returns True (serve's look at the next task)."""
        t1 = time.perf_counter()
        delivered = np.zeros(len(task.frames), dtype=bool)
        order = np.argsort(task.req_frame, kind="stable")
        starts = np.searchsorted(task.req_frame[order], np.arange(len(task.frames) + 1))
        convert_into = self._decode.convert_into
        slots, size = self.slots, task.size
        orient = None
        look = ahead if ahead is not None and not ahead() else None

        def sink(p, frame):
            nonlocal look
            for r in order[starts[p] : starts[p + 1]]:
                out = slots[task.slot[r], task.row[r], task.t[r]]
                c = task.crop[r]
                convert_into(
                    frame, out, crop=(int(c[0]), int(c[1]), int(c[2]), int(c[3])) if c[2] > 0 else None, size=size, orient=orient
                )
                # The augmentation's flip mirrors the frame as delivered (after the orientation).
                if task.flip[r]:
                    out[...] = out[:, ::-1]
            delivered[p] = True
            if look is not None and look():
                look = None

        reader = None
        before = 0
        self._await_warm(task.task_id)
        try:
            reader = self._reader(task.video, task.path)
            orient = self._info(task.video).orient(self.options.orientation)
            before = reader.decoded_frames
            reader.decode([int(i) for i in task.frames], sink)
        except Exception as exc:  # every failure goes back to the consumer, typed
            from .errors import DecodeError, VideoError

            if not isinstance(exc, VideoError):
                exc = DecodeError(task.path, f"{type(exc).__name__}: {exc}")
            decoded = reader.decoded_frames - before if reader is not None else 0
            self._drop_reader(task.video)
            return P.Failed(task.task_id, exc, delivered, decoded, idle_s, time.perf_counter() - t1, self._remote_delta())
        return P.Done(task.task_id, reader.decoded_frames - before, idle_s, time.perf_counter() - t1, self._remote_delta())


def _close(reader) -> None:
    try:
        reader.close()
    except Exception:  # closing a broken container must not take the decoder down
        log.debug("closing a reader failed", exc_info=True)
