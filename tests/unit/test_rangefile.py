"""RangeFile over a fake range store (ringload._rangefile): exact bytes, few requests, typed failures."""

from __future__ import annotations

import errno
import io
import os
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringload._rangefile import (
    AVSEEK_SIZE,
    BlockCache,
    Fetcher,
    RangeFile,
    RemoteStats,
    fsspec_fetch_fn,
    is_transient,
)
from ringload.errors import RemoteReadError, VideoOpenError

URL = "s3://bucket/video.mp4"


class FakeStore:
    """A fetch_fn over bytes in memory. Records each request; ``faults`` are used up one per request:
    "reset" raises ConnectionResetError, "short" drops the last byte, "hang" waits for ``release``,
    an exception instance is raised; None (or no fault left) answers."""

    def __init__(self, data: bytes, faults=()):
        self.data, self.faults, self.requests = data, list(faults), []
        self.release = threading.Event()

    def __call__(self, start: int, end: int) -> bytes:
        self.requests.append((start, end))
        fault = self.faults.pop(0) if self.faults else None
        if fault == "reset":
            raise ConnectionResetError("connection reset by peer")
        if fault == "short":
            return self.data[start : end - 1]
        if fault == "hang":
            self.release.wait(60)  # bounded: the test sets it as soon as the timeout path ran
        elif isinstance(fault, BaseException):
            raise fault
        return self.data[start:end]


def _blob(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _file(store, *, base=0, size=None, cache=None, fetcher=None, **kwargs) -> RangeFile:
    fetcher = fetcher or Fetcher(store, URL, size=len(store.data), backoff_s=0)
    size = len(store.data) - base if size is None else size
    return RangeFile(fetcher, "key", size, cache or BlockCache(1 << 20, 1000), base=base, **kwargs)


# --- bytes: every sequence of operations reads what io.BytesIO reads ---------------------------------

_op = st.one_of(
    st.tuples(st.just("read"), st.integers(-1, 700)),
    st.tuples(st.just("readinto"), st.integers(0, 700)),
    st.tuples(st.just("seek"), st.integers(0, 1300), st.sampled_from([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END])),
    st.tuples(st.just("prefetch"), st.integers(-50, 1300), st.integers(-50, 1300)),
)


@given(
    blob_len=st.integers(0, 1500),
    members=st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 1500)), min_size=1, max_size=2),
    block_size=st.sampled_from([1, 7, 64, 500]),
    capacity=st.sampled_from([0, 1, 64, 700, 1 << 20]),
    readahead=st.sampled_from([0, 5, 100, 1000]),
    header_bytes=st.sampled_from([0, 100, 1 << 20]),
    ops=st.lists(st.tuples(st.integers(0, 1), _op), max_size=30),
)
def test_any_seek_read_prefetch_sequence_reads_what_bytesio_reads(
    blob_len, members, block_size, capacity, readahead, header_bytes, ops
):
    # Two members of one object (same key) share one cache; each must still read only its own bytes.
    store = FakeStore(_blob(blob_len, seed=blob_len))
    fetcher = Fetcher(store, URL, size=blob_len, backoff_s=0)
    cache = BlockCache(capacity, block_size, header_bytes=header_bytes)
    files, refs = [], []
    for base, size in members:
        base = min(base, blob_len)
        size = min(size, blob_len - base)
        files.append(RangeFile(fetcher, "key", size, cache, base=base, readahead_bytes=readahead))
        refs.append(io.BytesIO(store.data[base : base + size]))
    for which, op in ops:
        f, ref = files[which % len(files)], refs[which % len(files)]
        if op[0] == "read":
            assert f.read(op[1]) == ref.read(op[1])
        elif op[0] == "readinto":
            got, want = bytearray(op[1]), bytearray(op[1])
            assert f.readinto(got) == ref.readinto(want)
            assert got == want
        elif op[0] == "seek":
            _, pos, whence = op
            offset = pos - (0, ref.tell(), len(ref.getbuffer()))[whence]
            assert f.seek(offset, whence) == ref.seek(offset, whence) == pos
        else:
            f.prefetch(op[1], op[2])
        assert f.tell() == ref.tell()
    assert cache.nbytes <= capacity
    spans = [(f.base, f.base + f.size) for f in files]
    for start, end in store.requests:  # no request reaches past a member: next to it may be the object's end
        assert start < end and any(lo <= start and end <= hi for lo, hi in spans)


# --- requests: prefetch, coalescing, read-ahead -------------------------------------------------------


def test_reads_inside_a_prefetched_range_make_no_request():
    store = FakeStore(_blob(1_000_000))
    f = _file(store, cache=BlockCache(4 << 20, 64 * 1024))
    f.prefetch(100_000, 600_000)
    assert store.requests == [(65536, 655360)]  # one request: the blocks that cover the range
    f.seek(100_000)
    reads = 0
    while f.tell() < 600_000:
        pos = f.tell()
        chunk = f.read(min(32 * 1024, 600_000 - pos))
        assert chunk and chunk == store.data[pos : pos + len(chunk)]
        reads += 1
    assert len(store.requests) == 1
    assert f.stats.cache_hits == reads and f.stats.cache_misses == 0
    f.seek(100_000)
    assert f.read(500_000) == store.data[100_000:600_000]
    assert len(store.requests) == 1


def test_prefetch_makes_one_request_per_contiguous_run_of_missing_blocks():
    store = FakeStore(_blob(20_000))
    f = _file(store, readahead_bytes=0)
    f.seek(3000)
    f.read(2000)  # caches blocks 3 and 4
    store.requests.clear()
    f.prefetch(0, 10_000)
    assert store.requests == [(0, 3000), (5000, 10_000)]
    f.prefetch(0, 10_000)
    f.prefetch(10_500, 10_000_000)  # clipped to the file's end; the last block is short
    assert store.requests[2:] == [(10_000, 20_000)]
    assert f.stats.requests == 4


def test_prefetch_offsets_are_relative_to_base_and_blocks_stay_inside_the_member():
    store = FakeStore(_blob(10_000))
    f = _file(store, base=1234, size=5000)
    f.prefetch(0, 5000)
    assert store.requests == [(1234, 6234)]
    f.seek(0)
    assert f.read() == store.data[1234:6234]
    assert f.read() == b"" and len(store.requests) == 1


def test_readahead_doubles_while_sequential_and_starts_over_after_a_seek():
    store = FakeStore(_blob(100_000))
    f = _file(store, readahead_bytes=2000, max_readahead_bytes=8000)
    spans = []
    while f.tell() < 40_000:
        n = len(store.requests)
        assert f.read(1000) == store.data[f.tell() - 1000 : f.tell()]
        spans += [end - start for start, end in store.requests[n:]]
    # The read's block plus read-ahead of 2000 (after the open), 2000 (first sequential miss), then doubled
    # after each sequential miss up to the max: 4000, 8000, 8000.
    assert spans[:5] == [3000, 3000, 5000, 9000, 9000]
    f.seek(70_000)
    f.read(1000)
    assert store.requests[-1] == (70_000, 73_000)


def test_after_a_prefetch_reads_past_it_get_read_ahead_only_once_they_keep_missing():
    # The prefetch named the task's bytes: the demuxer's peek past them should cost a block, not 256 KiB.
    store = FakeStore(_blob(100_000))
    f = _file(store, readahead_bytes=4000)
    f.prefetch(10_000, 20_000)
    f.seek(12_000)
    while f.tell() < 20_000:
        f.read(500)
    f.read(500)
    assert store.requests[1:] == [(20_000, 21_000)]
    f.read(1000)
    assert store.requests[2:] == [(21_000, 26_000)]


def test_readahead_never_exceeds_the_cache():
    store = FakeStore(_blob(100_000))
    f = _file(store, cache=BlockCache(3000, 1000), readahead_bytes=50_000)
    f.read(10)
    assert store.requests == [(0, 4000)]
    assert f.stats.bytes_fetched == 4000


# --- header store --------------------------------------------------------------------------------------


def test_the_header_store_survives_block_eviction():
    store = FakeStore(_blob(50_000))
    cache = BlockCache(2000, 1000)
    first = _file(store, cache=cache, readahead_bytes=0)
    first.seek(40_000)
    header = first.read(3000)  # opening: the container's index at the end of the file
    first.prefetch(0, 2000)  # the task's bytes; they evict the header blocks from the LRU
    assert all(cache.get(("key", 0, 50_000), b) is None for b in (40, 41, 42))
    store.requests.clear()
    again = _file(store, cache=cache, readahead_bytes=0)
    again.seek(40_000)
    assert again.read(3000) == header
    assert store.requests == []
    assert again.stats.header_hits == 1 and again.stats.cache_hits == 1


def test_the_header_store_is_bounded_per_object_and_in_objects():
    cache = BlockCache(0, 1000, header_bytes=2500, header_objects=2)
    for b in range(5):
        cache.put_header("a", b, bytes(1000))
    assert [cache.get_header("a", b) is not None for b in range(5)] == [True, True, False, False, False]
    cache.put_header("b", 0, b"x")
    cache.get_header("a", 0)  # "a" is the most recently used again
    cache.put_header("c", 0, b"y")
    assert cache.get_header("b", 0) is None and cache.get_header("a", 0) is not None


def test_warm_header_fetches_what_the_last_opening_read_once_the_header_store_lost_it():
    store = FakeStore(_blob(50_000))
    cache = BlockCache(5000, 1000, header_objects=0)  # no header store: only the block numbers remain
    nothing = _file(store, cache=cache)
    nothing.warm_header()  # never opened: nothing is known, nothing fetched
    assert store.requests == []
    first = _file(store, cache=cache, readahead_bytes=0)
    first.read(1500)
    first.seek(40_000)
    header = first.read(2000)
    first.end_header()
    first.prefetch(10_000, 15_000)  # evicts every header block
    store.requests.clear()
    ahead = _file(store, cache=cache, readahead_bytes=0)
    ahead.warm_header()
    # One request per contiguous run of the blocks the opening read: [0, 2000) and [40000, 42000).
    assert store.requests == [(0, 2000), (40_000, 42_000)]
    store.requests.clear()
    again = _file(store, cache=cache, readahead_bytes=0)
    assert again.read(1500) == store.data[:1500]
    again.seek(40_000)
    assert again.read(2000) == header
    assert store.requests == []
    again.warm_header()  # all cached: no request
    assert store.requests == []


# --- block cache -----------------------------------------------------------------------------------------


def test_block_cache_evicts_least_recently_used_by_bytes():
    cache = BlockCache(2500, 1000)
    cache.put("k", 0, bytes(1000))
    cache.put("k", 1, bytes(1000))
    cache.get("k", 0)
    cache.put("k", 2, bytes(400))  # a short last block
    assert cache.nbytes == 2400
    cache.put("j", 0, bytes(1000))
    assert cache.get("k", 1) is None and cache.get("k", 0) is not None and cache.nbytes == 2400
    cache.put("k", 0, bytes(10))  # replacing a block counts its new size
    assert cache.nbytes == 1410
    none = BlockCache(0, 1000)
    none.put("k", 0, b"abc")
    assert none.get("k", 0) is None and none.nbytes == 0


def test_capacity_zero_still_reads_right_and_caches_nothing():
    store = FakeStore(_blob(5000))
    f = _file(store, cache=BlockCache(0, 1000, header_bytes=0))
    assert f.read(2500) == store.data[:2500]
    assert f.read(2500) == store.data[2500:]
    assert store.requests == [(0, 3000), (2000, 5000)]


# --- failures: retries, short reads, timeouts, permanent errors --------------------------------------------


def test_transient_failures_are_retried_and_counted():
    store = FakeStore(_blob(5000), faults=["reset", "reset"])
    fetcher = Fetcher(store, URL, size=5000, retries=3, backoff_s=0)
    assert fetcher.fetch(100, 900) == store.data[100:900]
    assert fetcher.stats.as_dict() == {
        "bytes_fetched": 800,
        "requests": 3,
        "retries": 2,
        "cache_hits": 0,
        "cache_misses": 0,
        "header_hits": 0,
        "ahead_requests": 0,
    }


def test_a_short_answer_is_retried_never_returned():
    store = FakeStore(_blob(5000), faults=["short"])
    fetcher = Fetcher(store, URL, size=5000, backoff_s=0)
    assert fetcher.fetch(0, 1000) == store.data[:1000]
    assert fetcher.stats.retries == 1 and fetcher.stats.bytes_fetched == 999 + 1000
    store.faults = ["short"] * 4
    with pytest.raises(RemoteReadError, match="4 attempts failed, last: ShortReadError: got 999 of 1000 bytes"):
        fetcher.fetch(0, 1000)


def test_a_long_answer_is_an_error_not_truncated():
    fetcher = Fetcher(lambda start, end: bytes(end - start + 1), URL, backoff_s=0)
    with pytest.raises(RemoteReadError, match=r"LongReadError.*\(not retried\)"):
        fetcher.fetch(0, 10)
    assert fetcher.stats.requests == 1


def test_an_attempt_that_hangs_times_out_and_is_retried():
    store = FakeStore(_blob(5000), faults=["hang"])
    fetcher = Fetcher(store, URL, size=5000, retries=1, timeout_s=0.2, backoff_s=0)
    try:
        assert fetcher.fetch(0, 100) == store.data[:100]
        assert fetcher.stats.retries == 1 and fetcher.stats.requests == 2
        store.faults = ["hang", "hang"]
        with pytest.raises(RemoteReadError, match=r"2 attempts failed, last: TimeoutError: .*timeout_s=0.2") as info:
            fetcher.fetch(0, 100)
        assert "remote_retries= or remote_timeout_s=" in str(info.value)
    finally:
        store.release.set()


def test_the_error_names_the_url_the_range_and_the_last_error():
    store = FakeStore(_blob(5000), faults=["reset"] * 3)
    fetcher = Fetcher(store, URL, size=5000, retries=2, backoff_s=0)
    with pytest.raises(RemoteReadError) as info:
        fetcher.fetch(1000, 2048)
    err = info.value
    assert isinstance(err, VideoOpenError) and err.path == URL
    assert err.reason.startswith("bytes 1000-2047 (of 5000): 3 attempts failed, last: ConnectionResetError")
    assert str(err).startswith(f"{URL}: bytes 1000-2047")
    assert isinstance(err.__cause__, ConnectionResetError)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    assert fetcher.stats.requests == 3 and fetcher.stats.retries == 2


@pytest.mark.parametrize("exc", [FileNotFoundError("no such key"), PermissionError("access denied")])
def test_a_missing_or_forbidden_object_is_not_retried(exc):
    store = FakeStore(_blob(5000), faults=[exc])
    f = _file(store, fetcher=Fetcher(store, URL, retries=5, backoff_s=0))
    with pytest.raises(RemoteReadError, match=rf"bytes 0-4999: {type(exc).__name__}: .* \(not retried\)"):
        f.read(10)
    assert len(store.requests) == 1 and f.stats.retries == 0


def test_backoff_doubles_is_capped_and_its_jitter_depends_only_on_the_url():
    def delays(url):
        fetcher = Fetcher(FakeStore(bytes(10), faults=["reset"] * 9), url, retries=8, backoff_s=0.1)
        seen = []
        fetcher._sleep = seen.append
        with pytest.raises(RemoteReadError):
            fetcher.fetch(0, 10)
        return seen

    first = delays(URL)
    assert len(first) == 8
    for attempt, delay in enumerate(first):
        cap = min(2.0, 0.1 * 2**attempt)
        assert cap / 2 <= delay <= cap
    assert delays(URL) == first and delays(URL + "x") != first


def test_which_errors_are_transient():
    botocore = pytest.importorskip("botocore.exceptions")
    aiohttp = pytest.importorskip("aiohttp")

    def client_error(status, code):
        return botocore.ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Get")

    def response_error(status):
        return aiohttp.ClientResponseError(None, (), status=status)

    transient = [
        ConnectionResetError(),
        TimeoutError(),
        OSError(errno.EIO, "remote I/O"),
        client_error(500, "InternalError"),
        client_error(503, "SlowDown"),
        client_error(400, "RequestTimeout"),
        botocore.EndpointConnectionError(endpoint_url="http://x"),
        botocore.ReadTimeoutError(endpoint_url="http://x"),
        aiohttp.ServerDisconnectedError(),
        response_error(503),
        response_error(429),
    ]
    permanent = [
        FileNotFoundError(),
        PermissionError(),
        OSError(errno.EINVAL, "InvalidRange"),
        client_error(403, "AccessDenied"),
        client_error(404, "NoSuchKey"),
        response_error(404),
        response_error(416),
        ValueError("bad"),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)


# --- the file object ------------------------------------------------------------------------------------------


def test_seek_whences_eof_and_close():
    store = FakeStore(_blob(3000))
    f = _file(store)
    assert f.readable() and f.seekable() and not f.writable()
    assert f.seek(-10, os.SEEK_END) == 2990 and f.read(100) == store.data[2990:]
    assert f.read(5) == b"" and f.read() == b""
    assert f.seek(0, AVSEEK_SIZE) == 3000 and f.tell() == 3000  # a size query does not move
    assert f.seek(5000) == 5000 and f.read(1) == b""
    with pytest.raises(ValueError, match="negative"):
        f.seek(-1)
    with pytest.raises(ValueError, match="whence"):
        f.seek(0, 7)
    f.close()
    with pytest.raises(ValueError, match="closed"):
        f.read(1)


def test_stats_add_up():
    total = RemoteStats(requests=1).add(RemoteStats(requests=2, bytes_fetched=5))
    assert total.as_dict()["requests"] == 3 and total.bytes_fetched == 5


def test_fsspec_fetch_fn_reads_ranges_of_an_fsspec_file():
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    data = _blob(3000)
    fs.pipe_file("/rangefile-test/blob.bin", data)
    try:
        fetcher = Fetcher(fsspec_fetch_fn(fs, "/rangefile-test/blob.bin"), "memory://blob.bin", size=3000)
        f = RangeFile(fetcher, "blob", 2000, BlockCache(1 << 20, 256), base=500)
        assert f.read() == data[500:2500]
    finally:
        fs.rm("/rangefile-test", recursive=True)


# --- PyAV reads through it ---------------------------------------------------------------------------------------


def _encode_mp4(frames: int = 30) -> bytes:
    av = pytest.importorskip("av")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = 10
        rng = np.random.default_rng(1)
        for i in range(frames):
            image = np.full((48, 64, 3), i * 8, np.uint8) + rng.integers(0, 8, (48, 64, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def _decode(fileobj) -> list[np.ndarray]:
    import av

    with av.open(fileobj) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.mark.parametrize("base", [0, 1000])
def test_pyav_decodes_the_same_frames_through_a_rangefile(base):
    video = _encode_mp4()
    want = _decode(io.BytesIO(video))
    assert len(want) == 30
    store = FakeStore(_blob(base, seed=2) + video + _blob(777, seed=3))
    fetcher = Fetcher(store, URL, size=len(store.data), backoff_s=0)
    cache = BlockCache(1 << 20, 4096)
    got = _decode(RangeFile(fetcher, "key", len(video), cache, base=base))
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert all(base <= start and end <= base + len(video) for start, end in store.requests)
    # The decoder's way: open (header), prefetch the task's bytes, decode; nothing more is fetched.
    f = RangeFile(fetcher, "key", len(video), cache, base=base)
    import av

    with av.open(f) as container:
        f.prefetch(0, len(video))
        n = len(store.requests)
        assert [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)][-1].tobytes() == (
            want[-1].tobytes()
        )
    assert len(store.requests) == n
