"""Decoder processes: read small task messages, decode, write frames straight into ring slots.

A decoder is started with the ``spawn`` context and imports only numpy, PyAV and the
decode helpers (never torch, so never CUDA). It inherits one end of a socketpair (no name
exists that another process could connect to), receives the ring's open file descriptor
over it (``socket.send_fds``), maps it, and then serves tasks until the socket reaches
end-of-file, which is also how it notices that the consumer died: it exits on its own.

Wire format, both directions: 4-byte little-endian length, then a pickled tuple.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time

import numpy as np

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<I")
_MAX_MESSAGE = 1 << 30


def pack(msg) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Incremental decoder of length-prefixed messages from a byte stream."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list:
        self._buf += data
        out = []
        while len(self._buf) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(self._buf)
            if n > _MAX_MESSAGE:
                raise ValueError(f"control message of {n} bytes is corrupt")
            if len(self._buf) < _HEADER.size + n:
                break
            out.append(pickle.loads(bytes(self._buf[_HEADER.size : _HEADER.size + n])))
            del self._buf[: _HEADER.size + n]
        return out


class _Conn:
    """Blocking message channel over the decoder's end of the control socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = FrameReader()
        self.queue: collections.deque = collections.deque()

    def send(self, msg) -> None:
        self.sock.sendall(pack(msg))

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


def main(sock: socket.socket, token: bytes, worker_id: int) -> None:
    """Entry point of a decoder process (the spawn target). ``sock`` is this decoder's end
    of a socketpair inherited from the consumer: nothing else can reach it."""
    # Ctrl-C reaches the whole process group; the consumer decides when decoders stop,
    # and they stop when its end of the socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"ringload decoder {worker_id}: %(levelname)s %(message)s")
    conn = _Conn(sock)
    try:
        conn.send(("hello", worker_id, os.getpid(), token, "torch" in sys.modules))
        msg, fds = conn.recv(with_fds=True)
    except OSError as exc:
        # The loader closed while this decoder was starting: nothing to serve.
        log.info("cannot reach the loader: %s", exc)
        return
    if msg is None or msg[0] != "ring" or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return
    _, layout, options = msg
    from ._ring import AttachedRing

    ring = AttachedRing(fds[0], layout)
    try:
        _Decoder(conn, ring, options).serve()
    finally:
        ring.close()
        sock.close()


class _Decoder:
    def __init__(self, conn: _Conn, ring, options: dict):
        from . import _decode

        self._decode = _decode
        self.conn = conn
        self.slots = ring.slots
        self.max_open = int(options.get("max_open", 4))
        self.info_cache_size = int(options.get("info_cache", 256))
        self.orientation = options.get("orientation", "display")
        self.readers: collections.OrderedDict = collections.OrderedDict()
        self.infos: collections.OrderedDict = collections.OrderedDict()

    def serve(self) -> None:
        try:
            self.conn.send(("ready", "torch" in sys.modules))
            while True:
                t0 = time.perf_counter()
                msg = self.conn.recv()
                if msg is None or msg[0] == "stop":
                    return
                if msg[0] == "task":
                    t1 = time.perf_counter()
                    reply = self.run_task(*msg[1:])
                    # Idle time before the task and time spent on it: the consumer's stats.
                    self.conn.send((*reply, t1 - t0, time.perf_counter() - t1))
        except (BrokenPipeError, ConnectionResetError):
            return  # the consumer closed the channel (or died): nothing left to do

    def _reader(self, video: int, path: str, info):
        if info is not None:
            self.infos[video] = info
        self.infos.move_to_end(video)
        while len(self.infos) > self.info_cache_size:
            self.infos.popitem(last=False)
        reader = self.readers.get(video)
        if reader is None:
            reader = self._decode.VideoReader(path, self.infos[video])
            self.readers[video] = reader
            while len(self.readers) > self.max_open:
                _, old = self.readers.popitem(last=False)
                _close(old)
        self.readers.move_to_end(video)
        return reader

    def _drop_reader(self, video: int) -> None:
        reader = self.readers.pop(video, None)
        if reader is not None:
            _close(reader)

    def run_task(self, task_id, video, path, info, uidx, req_u, req_slot, req_b, req_t, req_crop, req_flip, size, hang_s):
        if hang_s:
            time.sleep(hang_s)  # test hook: simulate a decoder stuck in a task
        delivered = np.zeros(len(uidx), dtype=bool)
        order = np.argsort(req_u, kind="stable")
        starts = np.searchsorted(req_u[order], np.arange(len(uidx) + 1))
        convert_into = self._decode.convert_into
        slots = self.slots
        decoded_before = 0

        def sink(p, frame):
            for r in order[starts[p] : starts[p + 1]]:
                out = slots[req_slot[r], req_b[r], req_t[r]]
                c = req_crop[r]
                convert_into(frame, out, crop=(int(c[0]), int(c[1]), int(c[2]), int(c[3])) if c[2] > 0 else None, size=size,
                             orient=orient)
                # The augmentation's flip mirrors the frame as delivered (after the orientation).
                if req_flip[r]:
                    out[...] = out[:, ::-1]
            delivered[p] = True

        reader = None
        try:
            reader = self._reader(video, path, info)
            orient = self.infos[video].orient(self.orientation)
            decoded_before = reader.decoded_frames
            reader.decode([int(i) for i in uidx], sink)
        except Exception as exc:  # every failure goes back to the consumer, typed
            from .errors import DecodeError, VideoError

            if not isinstance(exc, VideoError):
                exc = DecodeError(path, f"{type(exc).__name__}: {exc}")
            decoded = reader.decoded_frames - decoded_before if reader is not None else 0
            self._drop_reader(video)
            return ("error", task_id, exc, delivered, decoded)
        return ("done", task_id, reader.decoded_frames - decoded_before)


def _close(reader) -> None:
    close = getattr(reader, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # closing a broken container must not take the decoder down
            log.debug("closing a reader failed", exc_info=True)
