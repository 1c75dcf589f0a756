"""A seekable read-only file over byte-range requests, with a bounded block cache, for remote videos.

PyAV opens a RangeFile like a local file (``av.open(rangefile)``); its reads are served from cached
blocks, and misses become range requests through a Fetcher, which times out and retries each one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import errno
import io
import logging
import os
import random
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from .errors import ConfigError, RemoteReadError

log = logging.getLogger(__name__)

AVSEEK_SIZE = 0x10000  # FFmpeg's "how large is it?" whence: PyAV answers it itself, other callers may not
_MAX_BACKOFF_S = 2.0
_HEADER_BLOCK_OBJECTS = 65536  # objects whose header blocks (a few numbers each) are remembered
# S3 error codes of a busy or failing service rather than a bad request.
_RETRY_CODES = frozenset(
    {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "Throttling", "ThrottlingException"}
)
# OSErrors that a retry cannot fix; s3fs maps InvalidRange and PreconditionFailed to EINVAL.
_PERMANENT_ERRNO = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOSYS, errno.EISDIR})
# Connection and timeout errors of the HTTP stacks under fsspec (s3fs: aiobotocore/botocore; http: aiohttp).
_LIBRARY_TRANSIENTS = {
    "botocore.exceptions": ("ConnectionError", "HTTPClientError", "IncompleteReadError"),
    "aiohttp": ("ClientError",),
}


@dataclasses.dataclass
class RemoteStats:
    """Counters of remote reads. cache_hits/cache_misses count reads (hits needed no request);
    header_hits counts the hits that took a block from the header store; ahead_requests, the
    requests (of ``requests``) made for a task while the one before it decoded."""

    bytes_fetched: int = 0
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    header_hits: int = 0
    ahead_requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def add(self, other: RemoteStats) -> RemoteStats:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self


class ShortReadError(Exception):
    """A range request returned fewer bytes than asked (a connection dropped mid-body can look like this)."""


class LongReadError(Exception):
    """A range request returned more bytes than asked: the server may ignore Range; retrying won't help."""


def _library_transients() -> tuple[type[BaseException], ...]:
    # Only libraries already imported: an error of one that never was cannot have been raised.
    found = []
    for module_name, names in _LIBRARY_TRANSIENTS.items():
        module = sys.modules.get(module_name)
        found += [getattr(module, name) for name in names if module is not None and hasattr(module, name)]
    return tuple(found)


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    else:  # aiohttp ClientResponseError (.status), requests HTTPError (.response.status_code)
        status = getattr(exc, "status", None) or getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """Whether a retry of the request that raised ``exc`` may succeed."""
    if isinstance(exc, (ShortReadError, TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return not isinstance(exc, (FileNotFoundError, PermissionError)) and exc.errno not in _PERMANENT_ERRNO
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Code") in _RETRY_CODES:
        return True
    status = _http_status(exc)
    if status is not None:
        return status >= 500 or status in (408, 429)
    return isinstance(exc, _library_transients())


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Fetcher:
    """Range requests on one object. ``fetch_fn(start, end)`` makes one request for bytes [start, end);
    each attempt waits at most ``timeout_s``, transient failures are retried ``retries`` times with backoff."""

    def __init__(
        self,
        fetch_fn: Callable[[int, int], bytes],
        url: str,
        *,
        size: int | None = None,
        retries: int = 3,
        timeout_s: float | None = 30.0,
        backoff_s: float = 0.1,
        stats: RemoteStats | None = None,
    ):
        if retries < 0 or (timeout_s is not None and not timeout_s > 0) or backoff_s < 0:
            raise ConfigError(f"retries={retries} must be >= 0, timeout_s={timeout_s} > 0, backoff_s={backoff_s} >= 0")
        self.fetch_fn, self.url, self.size = fetch_fn, str(url), size
        self.retries, self.timeout_s, self.backoff_s = retries, timeout_s, backoff_s
        self.stats = stats if stats is not None else RemoteStats()
        # Seeded by url and process: reproducible in one process, not in lockstep across decoders.
        self._rng = random.Random(f"{self.url}\0{os.getpid()}")
        self._sleep = time.sleep  # backoff only; tests swap it to see the delays

    def delay(self, attempt: int) -> float:
        """Backoff before retry number ``attempt`` + 1: exponential, capped, jittered down to half."""
        return min(_MAX_BACKOFF_S, self.backoff_s * 2**attempt) * (0.5 + 0.5 * self._rng.random())

    def fetch(self, start: int, end: int) -> bytes:
        """Exactly bytes [start, end) of the object; RemoteReadError when no attempt returned them."""
        if not 0 <= start <= end or (self.size is not None and end > self.size):
            raise ValueError(f"{self.url}: range [{start}, {end}) is outside the object (size {self.size})")
        if start == end:
            return b""
        where = f"bytes {start}-{end - 1}" + (f" (of {self.size})" if self.size is not None else "")
        return self._retry(lambda: self._attempt(start, end), where)

    def call(self, fn: Callable[[], object], what: str):
        """``fn()`` (a HEAD, a listing) with this fetcher's retries and timeout; ``what`` names it in errors."""
        return self._retry(lambda: self._timed(fn), what)

    def _retry(self, attempt_fn: Callable[[], object], where: str):
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
                self._sleep(self.delay(attempt - 1))
            self.stats.requests += 1
            try:
                return attempt_fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise RemoteReadError(self.url, f"{where}: {_describe(exc)} (not retried)") from exc
                last = exc
                log.debug("%s: %s, attempt %d failed: %s", self.url, where, attempt + 1, _describe(exc))
        raise RemoteReadError(
            self.url,
            f"{where}: {self.retries + 1} attempts failed, last: {_describe(last)}",
            hint="raise VideoLoader's remote_retries= or remote_timeout_s= if the store is slow or flaky",
        ) from last

    def _timed(self, fn: Callable[[], object]):
        if self.timeout_s is None:  # a local file: no thread, no wait to bound
            return fn()
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 -- handed to the waiting thread, which re-raises it
                future.set_exception(exc)

        # A daemon thread per attempt rather than a ThreadPoolExecutor: a request that never returns
        # would hold a pool worker for good (later attempts queue behind it) and block interpreter exit.
        threading.Thread(target=run, name="ringload-fetch", daemon=True).start()
        done, _ = concurrent.futures.wait([future], timeout=self.timeout_s)
        if not done:
            raise TimeoutError(f"no answer within timeout_s={self.timeout_s}")
        return future.result()

    def _attempt(self, start: int, end: int) -> bytes:
        data = self._timed(lambda: self.fetch_fn(start, end))
        data = data if isinstance(data, bytes) else bytes(data)
        self.stats.bytes_fetched += len(data)
        if len(data) < end - start:
            raise ShortReadError(f"got {len(data)} of {end - start} bytes")
        if len(data) > end - start:
            raise LongReadError(f"got {len(data)} bytes for a range of {end - start}")
        return data


def local_fetch_fn(fd: int) -> Callable[[int, int], bytes]:
    """A fetch_fn over a local file descriptor (a shard on disk): one ``pread`` per call."""
    return lambda start, end: os.pread(fd, end - start, start)


def fsspec_fetch_fn(fs, path: str) -> Callable[[int, int], bytes]:
    """A fetch_fn over an fsspec filesystem: one ``cat_file`` range request per call."""
    return lambda start, end: fs.cat_file(path, start=start, end=end)


#: The most bytes one range request asks for; longer runs are split.
MAX_REQUEST_BYTES = 16 << 20


class BlockCache:
    """An LRU of fixed-size blocks keyed by (object key, block number), bounded in bytes, and a header
    store: up to ``header_bytes`` per object of the blocks read while opening it, over the last
    ``header_objects`` objects, which the block LRU does not evict."""

    def __init__(
        self,
        capacity_bytes: int,
        block_size: int = 64 * 1024,
        *,
        header_bytes: int = 4 * 1024 * 1024,
        header_objects: int = 64,
    ):
        if capacity_bytes < 0 or block_size < 1 or header_bytes < 0 or header_objects < 0:
            raise ConfigError(
                f"capacity_bytes={capacity_bytes}, header_bytes={header_bytes}, header_objects={header_objects} "
                f"must be >= 0 and block_size={block_size} >= 1"
            )
        self.capacity, self.block_size = capacity_bytes, block_size
        self.header_bytes, self.header_objects = header_bytes, header_objects
        self.nbytes = 0
        self._blocks: OrderedDict[tuple[Hashable, int], bytes] = OrderedDict()
        self._headers: OrderedDict[Hashable, dict[int, bytes]] = OrderedDict()
        # Which blocks opening each object read (numbers only, so many more objects than the
        # header store holds): fetched ahead of a reopen (RangeFile.warm_header).
        self._header_blocks: OrderedDict[Hashable, tuple[int, ...]] = OrderedDict()
        # read_frames may be called from several threads sharing a process's storage.
        self._lock = threading.Lock()

    def get(self, key: Hashable, block_no: int) -> bytes | None:
        with self._lock:
            data = self._blocks.get((key, block_no))
            if data is not None:
                self._blocks.move_to_end((key, block_no))
            return data

    def put(self, key: Hashable, block_no: int, data: bytes) -> None:
        with self._lock:
            old = self._blocks.pop((key, block_no), None)
            self.nbytes += len(data) - (len(old) if old is not None else 0)
            self._blocks[(key, block_no)] = data
            while self.nbytes > self.capacity:
                _, evicted = self._blocks.popitem(last=False)
                self.nbytes -= len(evicted)

    def get_header(self, key: Hashable, block_no: int) -> bytes | None:
        with self._lock:
            blocks = self._headers.get(key)
            if blocks is None:
                return None
            self._headers.move_to_end(key)
            return blocks.get(block_no)

    def note_header(self, key: Hashable, block_nos) -> None:
        """Remember that opening ``key`` read these blocks."""
        with self._lock:
            self._header_blocks[key] = tuple(sorted(block_nos))
            self._header_blocks.move_to_end(key)
            if len(self._header_blocks) > _HEADER_BLOCK_OBJECTS:
                self._header_blocks.popitem(last=False)

    def header_blocks(self, key: Hashable) -> tuple[int, ...]:
        """The blocks the last opening of ``key`` read (() when unknown)."""
        with self._lock:
            return self._header_blocks.get(key, ())

    def put_header(self, key: Hashable, block_no: int, data: bytes) -> None:
        if self.header_objects == 0 or self.header_bytes == 0:
            return
        with self._lock:
            blocks = self._headers.setdefault(key, {})
            self._headers.move_to_end(key)
            if len(self._headers) > self.header_objects:
                self._headers.popitem(last=False)
            if block_no not in blocks and sum(map(len, blocks.values())) + len(data) <= self.header_bytes:
                blocks[block_no] = data


class RangeFile(io.RawIOBase):
    """Bytes [base, base + size) of a remote object as a seekable read-only file; positions are relative
    to base (base > 0: a member of a tar shard), requests absolute.

    Blocks are aligned on this view's own offsets and cached under (key, base, size), so a block holds
    only this view's bytes and no request reaches past its end (members of a shard share no bytes, so
    they lose nothing by not sharing blocks). A read that misses fetches its missing blocks plus
    read-ahead: ``readahead_bytes`` after a seek, doubling up to ``max_readahead_bytes`` while the
    misses are sequential, never more than the cache holds. A seek into the last prefetched range
    starts with none, as the caller said what it needs: a read past it fetches just its blocks, and
    read-ahead resumes from the next sequential miss. Reads before the first ``prefetch`` (the
    container's header) also go to the cache's header store, so reopening the object does not refetch
    them once the LRU has evicted them.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        key: Hashable,
        size: int,
        cache: BlockCache,
        *,
        base: int = 0,
        readahead_bytes: int = 256 * 1024,
        max_readahead_bytes: int = 4 * 1024 * 1024,
        stats: RemoteStats | None = None,
    ):
        super().__init__()
        if size < 0 or base < 0 or readahead_bytes < 0 or max_readahead_bytes < readahead_bytes:
            raise ConfigError(
                f"size={size}, base={base}, readahead_bytes={readahead_bytes} must be >= 0 "
                f"and max_readahead_bytes={max_readahead_bytes} >= readahead_bytes"
            )
        if fetcher.size is not None and base + size > fetcher.size:
            raise ConfigError(f"{fetcher.url}: bytes [{base}, {base + size}) reach past its size {fetcher.size}")
        self.name = fetcher.url  # PyAV names the container after it
        self.size, self.base = size, base
        self.stats = stats if stats is not None else fetcher.stats
        self._fetcher, self._cache, self._key = fetcher, cache, (key, base, size)
        self._readahead, self._max_readahead = readahead_bytes, max_readahead_bytes
        self._ra = readahead_bytes
        self._pos = 0
        self._next: int | None = None  # where the previous read ended
        self._prefetched = (0, 0)
        self._opening = True  # until end_header() or the first prefetch, reads are the container's header
        self._header_read: set[int] = set()
        self.local = False  # a local file (a shard on disk): prefetching it gains nothing

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        if whence == AVSEEK_SIZE:
            return self.size
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
            raise ValueError(f"invalid whence {whence}")
        pos = offset + (0, self._pos, self.size)[whence]
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        self._check_open()
        start = self._pos
        end = self.size if n is None or n < 0 else min(self.size, start + n)
        if end <= start:
            return b""
        data = self._read(start, end)
        self._pos = end
        return data

    def readinto(self, b) -> int:
        with memoryview(b) as view, view.cast("B") as out:
            data = self.read(len(out))
            out[: len(data)] = data
        return len(data)

    def prefetch(self, start: int, end: int) -> None:
        """Fetch the blocks of [start, end) (clipped to the file) that are not cached: one request per
        contiguous run of them. Ends the header phase."""
        self._check_open()
        start, end = max(0, start), min(self.size, end)
        # More than the cache holds would be evicted before it is read: the rest is read as needed.
        end = min(end, start + self._cache.capacity)
        self._end_opening()
        self._ra, self._prefetched = 0, (start, end)
        if end <= start:
            return
        bs = self._cache.block_size
        self._fetch([b for b in range(start // bs, (end - 1) // bs + 1) if self._lookup(b)[0] is None])

    def end_header(self) -> None:
        """The container is open: later reads are not its header."""
        self._end_opening()

    def _end_opening(self) -> None:
        if self._opening and self._header_read:
            self._cache.note_header(self._key, self._header_read)
        self._opening = False

    def warm_header(self) -> None:
        """Fetch the blocks the last opening of this object read, where they are not cached
        (ahead of reopening it; one request per contiguous run)."""
        self._check_open()
        self._fetch([b for b in self._cache.header_blocks(self._key) if self._lookup(b)[0] is None])

    def _lookup(self, block_no: int) -> tuple[bytes | None, bool]:
        data = self._cache.get(self._key, block_no)
        if data is not None:
            return data, False
        data = self._cache.get_header(self._key, block_no)
        return data, data is not None

    def _fetch(self, block_nos: list[int]) -> dict[int, bytes]:
        """Fetch these (sorted) blocks, one request per contiguous run, and cache them."""
        bs, got = self._cache.block_size, {}
        i = 0
        while i < len(block_nos):
            j = i
            while j + 1 < len(block_nos) and block_nos[j + 1] == block_nos[j] + 1:
                j += 1
            # One request per run, split so that each body arrives well within one timeout.
            j = min(j, i + max(1, MAX_REQUEST_BYTES // bs) - 1)
            first, stop = block_nos[i] * bs, min(self.size, (block_nos[j] + 1) * bs)
            data = self._fetcher.fetch(self.base + first, self.base + stop)
            for b in range(block_nos[i], block_nos[j] + 1):
                got[b] = data[b * bs - first : (b + 1) * bs - first]
                self._cache.put(self._key, b, got[b])
            i = j + 1
        return got

    def _read(self, start: int, end: int) -> bytes:
        bs = self._cache.block_size
        first, last = start // bs, (end - 1) // bs
        sequential, self._next = start == self._next, end
        if not sequential:  # a new stream: read-ahead starts over
            lo, hi = self._prefetched
            self._ra = 0 if lo <= start < hi else self._readahead
        blocks, missing, from_header = {}, [], False
        for b in range(first, last + 1):
            data, header = self._lookup(b)
            if data is None:
                missing.append(b)
            else:
                blocks[b], from_header = data, from_header or header
        if missing:
            self.stats.cache_misses += 1
            ahead_end = min(self.size, end + min(self._ra, self._cache.capacity))
            ahead = [b for b in range(last + 1, -(-ahead_end // bs)) if self._lookup(b)[0] is None]
            blocks.update(self._fetch(missing + ahead))
            if sequential:
                self._ra = min(self._max_readahead, 2 * self._ra if self._ra else self._readahead)
        else:
            self.stats.cache_hits += 1
            self.stats.header_hits += from_header
        if self._opening:
            for b in range(first, last + 1):
                self._cache.put_header(self._key, b, blocks[b])
                self._header_read.add(b)
        if first == last:
            return blocks[first][start - first * bs : end - first * bs]
        return b"".join(blocks[b] for b in range(first, last + 1))[start - first * bs : end - first * bs]
