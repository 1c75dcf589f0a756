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
import logging
import os
import signal
import socket
import sys
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

    def send(self, msg) -> None:
        self.sock.sendall(P.encode(msg))

    def recv(self, *, with_fds: bool = False):
        """Next message (and received descriptors when asked); None at end-of-file."""
        fds: list[int] = []
        while not self.queue:
            if with_fds:
                data, got, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 4)
                fds.extend(got)
            else:
                data = self.sock.recv(1 << 16)
            if not data:
                return (None, fds) if with_fds else None
            self.queue.extend(self.reader.feed(data))
        msg = self.queue.popleft()
        return (msg, fds) if with_fds else msg


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
            chan.send(runner.run(msg, idle_s=time.perf_counter() - t0))
    except (BrokenPipeError, ConnectionResetError):
        return  # the consumer closed the channel (or died): nothing left to do


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

    def _remote_delta(self) -> tuple:
        """Counters of remote reads since the last reply (all zero for local files)."""
        now = self.storage.stats.as_dict()
        now["gop_bytes"] = self._gop_bytes + sum(r.gop_bytes for r in self.readers.values())
        delta = tuple(int(now.get(k, 0)) - self._reported[k] for k in P.REMOTE_COUNTERS)
        self._reported = {k: int(now.get(k, 0)) for k in P.REMOTE_COUNTERS}
        return delta if any(delta) else ()

    def close(self) -> None:
        for video in list(self.readers):
            self._drop_reader(video)

    def run(self, task: P.Task, *, idle_s: float = 0.0):
        """Decode ``task``; returns the Done or Failed reply."""
        t1 = time.perf_counter()
        delivered = np.zeros(len(task.frames), dtype=bool)
        order = np.argsort(task.req_frame, kind="stable")
        starts = np.searchsorted(task.req_frame[order], np.arange(len(task.frames) + 1))
        convert_into = self._decode.convert_into
        slots, size = self.slots, task.size
        orient = None

        def sink(p, frame):
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

        reader = None
        before = 0
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
