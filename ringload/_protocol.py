"""The wire protocol between the consumer and its decoder processes.

Each message is a frozen dataclass; ``encode`` / ``MessageReader`` are the one codec both
sides use: a 4-byte little-endian length, then the message pickled. Only the classes this
protocol names (and numpy arrays, fractions and ringload's errors inside them) may be
unpickled, so a byte stream can never make the receiver build anything else. The channel
itself is a socketpair inherited at spawn: its peer is authenticated by construction.
``PROTOCOL_VERSION`` is checked at the handshake.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import pickle
import struct

import numpy as np

PROTOCOL_VERSION = 3  # 3: decoders map the index file; tasks carry no VideoInfo
_HEADER = struct.Struct("<I")
_MAX_MESSAGE = 1 << 30


class Kind(enum.IntEnum):
    HELLO = 1  # decoder -> consumer, first message
    RING = 2  # consumer -> decoder, with the ring's descriptor
    READY = 3  # decoder -> consumer, the ring is mapped
    TASK = 4  # consumer -> decoder
    DONE = 5  # decoder -> consumer
    FAILED = 6  # decoder -> consumer


@dataclasses.dataclass(frozen=True)
class DecoderOptions:
    """How a decoder runs: readers kept open, indexes cached, FFmpeg threads, orientation."""

    max_open: int = 4
    info_cache: int = 256
    threads: int = 1
    orientation: str = "display"  # "display": turn frames as the video's display matrix says
    # How remote objects and shards are read: (storage_options, cache_bytes, retries, timeout_s).
    storage: tuple = dataclasses.field(default=({}, 256 << 20, 3, 30.0), repr=False)  # credentials: never in a repr


@dataclasses.dataclass(frozen=True)
class Hello:
    kind = Kind.HELLO
    worker_id: int
    pid: int
    token: bytes
    torch_loaded: bool
    version: int = PROTOCOL_VERSION


@dataclasses.dataclass(frozen=True)
class Ring:
    kind = Kind.RING
    layout: object  # _ring.RingLayout
    options: DecoderOptions
    index_name: str = ""  # the index file whose descriptor travels with the ring's (for messages)


@dataclasses.dataclass(frozen=True)
class Ready:
    kind = Kind.READY
    torch_loaded: bool


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """Decode ``frames`` (sorted, unique) of ``video``; request r writes frame
    ``frames[req_frame[r]]`` into ``slot[r], row[r], t[r]`` with crop box ``crop[r]``
    (x, y, w, h; w == 0: whole frame) resized to ``size``, mirrored where ``flip[r]``."""

    kind = Kind.TASK
    task_id: int
    video: int
    path: str
    frames: np.ndarray
    req_frame: np.ndarray
    slot: np.ndarray
    row: np.ndarray
    t: np.ndarray
    crop: np.ndarray
    flip: np.ndarray
    size: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Done:
    kind = Kind.DONE
    task_id: int
    decoded_frames: int
    idle_s: float
    busy_s: float
    remote: tuple = ()  # counters of reads since the last reply (REMOTE_COUNTERS order)


@dataclasses.dataclass(frozen=True, eq=False)
class Failed:
    """The task stopped at ``error``; ``delivered[i]`` says whether ``frames[i]`` was written."""

    kind = Kind.FAILED
    task_id: int
    error: Exception
    delivered: np.ndarray
    decoded_frames: int
    idle_s: float
    busy_s: float
    remote: tuple = ()


# What Done.remote and Failed.remote count, in order (stats()["remote"]).
REMOTE_COUNTERS = ("bytes_fetched", "requests", "retries", "cache_hits", "cache_misses", "header_hits", "gop_bytes",
                   "ahead_requests")

_MESSAGES = (Hello, Ring, Ready, Task, Done, Failed)

# Everything a message may contain, by (module, name): numpy arrays, the ring layout and
# ringload's typed errors. Video indexes never travel: decoders map the index file.
_ALLOWED = {(m.__module__, m.__qualname__) for m in (*_MESSAGES, DecoderOptions)} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("fractions", "Fraction"),
    ("ringload._ring", "RingLayout"),
    ("ringload.errors", "_rebuild_video_error"),
    ("builtins", "bytearray"),
    ("builtins", "frozenset"),
    ("builtins", "set"),
}
_ERROR_MODULE = "ringload.errors"


class ProtocolError(Exception):
    """A message that is not part of the protocol (a bug or a corrupt stream)."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == _ERROR_MODULE:
            cls = super().find_class(module, name)
            if isinstance(cls, type) and issubclass(cls, Exception):
                return cls
        raise ProtocolError(f"a decoder message may not contain {module}.{name}")


def encode(msg) -> bytes:
    if not isinstance(msg, _MESSAGES):
        raise ProtocolError(f"not a protocol message: {type(msg).__name__}")
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def decode(body: bytes):
    msg = _Unpickler(io.BytesIO(body)).load()
    if not isinstance(msg, _MESSAGES):
        raise ProtocolError(f"not a protocol message: {type(msg).__name__}")
    return msg


class MessageReader:
    """Incremental decoder of length-prefixed messages from a byte stream."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list:
        self._buf += data
        out = []
        while len(self._buf) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(self._buf)
            if n > _MAX_MESSAGE:
                raise ProtocolError(f"control message of {n} bytes is corrupt")
            if len(self._buf) < _HEADER.size + n:
                break
            out.append(decode(bytes(self._buf[_HEADER.size : _HEADER.size + n])))
            del self._buf[: _HEADER.size + n]
        return out
