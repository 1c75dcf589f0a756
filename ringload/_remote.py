"""Where a video's bytes live: local files, fsspec URLs (``s3://``, ``gs://``, ``http(s)://``,
...) and members of tar shards (``tar://MEMBER::SHARD``, fsspec's chained spelling).

A :class:`Storage` opens any of them for PyAV: a local file by its descriptor, anything
else as a :class:`~ringload._rangefile.RangeFile` that reads byte ranges through a
bounded block cache, with retries and a timeout on every request. Each process holds
one Storage per configuration (decoders get theirs from the loader); its counters are
what ``stats()["remote"]`` adds up.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import posixpath
import re
import threading

from .errors import ConfigError, RemoteReadError, VideoChangedError, VideoOpenError

log = logging.getLogger(__name__)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_MEMBER = re.compile(r"^tar://(?P<name>.+?)::(?P<shard>.+)$", re.DOTALL)
EXTRA_HINT = "pip install 'ringload[remote]'"

#: Bytes of remote data each process keeps in its block cache (``remote_cache_bytes``).
DEFAULT_CACHE_BYTES = 256 << 20
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT_S = 30.0


def member_path(shard: str, name: str) -> str:
    """The path of member ``name`` of the tar shard ``shard``."""
    return f"tar://{name}::{shard}"


def split_member(path) -> tuple[str, str] | None:
    """(shard, member name) of a tar member path, else None."""
    if not isinstance(path, str):
        return None
    m = _MEMBER.match(path)
    return (m["shard"], m["name"]) if m else None


def is_url(path) -> bool:
    """Whether ``path`` is a URL that fsspec reads (``file://`` counts as local)."""
    return isinstance(path, str) and bool(_URL.match(path)) and not path.startswith(("file://", "tar://"))


def is_local(path) -> bool:
    """A plain local file: neither a URL nor a tar member."""
    return not (is_url(path) or split_member(path))


def normalize(path) -> str:
    """Absolute for local files (and local shards), unchanged for URLs."""
    path = os.fspath(path)
    m = split_member(path)
    if m:
        return member_path(normalize(m[0]), m[1])
    path = path.removeprefix("file://")
    return path if is_url(path) else os.path.abspath(path)


def container_of(path: str) -> str:
    """The object holding ``path``'s bytes: the shard for a member, else the path itself."""
    m = split_member(path)
    return m[0] if m else path


def join(base_dir: str, rel: str) -> str:
    """``rel`` resolved against ``base_dir`` (a folder or a URL's folder)."""
    if is_url(rel) or split_member(rel) or os.path.isabs(rel):
        return rel
    if is_url(base_dir):
        return posixpath.join(base_dir, rel)
    return os.path.join(base_dir, rel)


def _fsspec():
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"reading URLs needs fsspec (and s3fs for s3://): {EXTRA_HINT}") from None
    return fsspec


def _etag(info: dict) -> str:
    """An object's version from fsspec's info ("": the store gives none). GCS's generation
    before its etag (which also changes with metadata); a modification time as the last resort."""
    for key in ("generation", "VersionId", "version_id", "ETag", "etag", "md5Hash", "checksum", "blob_id"):
        v = info.get(key)
        if v not in (None, ""):
            return str(v).strip('"')
    lfs = info.get("lfs")
    if isinstance(lfs, dict) and lfs.get("sha256"):
        return str(lfs["sha256"])
    for key in ("LastModified", "last_modified", "Last-Modified", "mtime", "updated", "modified"):
        v = info.get(key)
        if v not in (None, ""):
            return f"mtime:{v}"
    return ""


# How long an object's (size, version) is reused before it is asked for again: a decoder
# opening the same object for task after task asks once a while, not once per task.
_IDENTITY_TTL_S = 30.0


class Storage:
    """How one process reads non-local videos: ``storage_options`` for fsspec, the block
    cache's size in bytes, retries per request and the timeout of each. Pickles as its
    settings; file systems, cache and counters are per process."""

    def __init__(self, storage_options: dict | None = None, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 retries: int = DEFAULT_RETRIES, timeout_s: float = DEFAULT_TIMEOUT_S):
        from ._rangefile import BlockCache, RemoteStats

        self.storage_options = check_storage_options(storage_options) or {}
        self.cache_bytes = int(cache_bytes)
        self.retries = int(retries)
        self.timeout_s = float(timeout_s)
        self.stats = RemoteStats()
        # Headers (moov, cues) kept past the LRU: a sixteenth of the cache per object, a quarter in all.
        per_object = min(4 << 20, self.cache_bytes // 16)
        self.cache = BlockCache(self.cache_bytes, header_bytes=per_object,
                                header_objects=min(64, self.cache_bytes // 4 // per_object) if per_object else 0)  # fmt: skip
        self._fs: dict[tuple[str, str], object] = {}
        self._fetchers: dict[str, object] = {}
        self._identities: dict[str, tuple[float, int, str]] = {}
        # A decoder's warm-ahead thread (TaskRunner.warm) opens objects beside its decoding.
        self._lock = threading.Lock()

    def settings(self) -> tuple:
        """(storage_options, cache_bytes, retries, timeout_s): what a decoder's Storage is made of."""
        return (self.storage_options, self.cache_bytes, self.retries, self.timeout_s)

    def __reduce__(self):
        return (_rebuild, self.settings())

    # ---- file systems

    def filesystem(self, url: str):
        """(fsspec file system, its path) of ``url``; ConfigError without the remote extra."""
        fsspec = _fsspec()
        protocol, rest = url.split("://", 1)
        # Per host or bucket: fsspec keeps the host inside the instance for some protocols (ftp, sftp, ...).
        where = (protocol, rest.split("/", 1)[0])
        fs = self._fs.get(where)
        if fs is None:
            opts = _with_defaults(protocol, self.storage_options, self.timeout_s)
            if protocol in ("s3", "s3a"):
                # Our own instance: its retry setting below must not change a user's cached one.
                opts.setdefault("skip_instance_cache", True)
            try:
                fs, _ = fsspec.core.url_to_fs(url, **opts)
            except ImportError as exc:
                raise ConfigError(f"{url}: fsspec needs another package for {protocol}:// ({exc}); {EXTRA_HINT}") from None
            except ValueError as exc:
                if "protocol" in str(exc).lower():
                    raise ConfigError(f"{url}: fsspec knows no {protocol}:// file system ({exc})") from None
                raise ConfigError(f"{url}: storage_options do not suit {protocol}:// ({exc})") from None
            except TypeError as exc:
                raise ConfigError(f"{url}: storage_options do not suit {protocol}:// ({exc})") from None
            if protocol in ("s3", "s3a") and hasattr(fs, "retries"):
                fs.retries = 1  # s3fs's own loop would retry 5 x botocore's: ours is the whole policy
            with self._lock:
                fs = self._fs.setdefault(where, fs)
        return fs, fs._strip_protocol(url)

    def read_all(self, url: str) -> bytes:
        """Every byte of a (small) remote object: a manifest, a shard's sibling member."""
        size, _ = self.identity(url)
        return self.fetcher(url, size).fetch(0, size) if size else b""

    def identity(self, url: str, *, fresh: bool = False, stats=None) -> tuple[int, str]:
        """(size in bytes, version tag) of a remote object, asked at most every 30 s unless ``fresh``;
        its request is counted in ``stats`` (default: this storage's)."""
        import time

        now = time.monotonic()
        seen = self._identities.get(url)
        if seen is not None and not fresh and now - seen[0] < _IDENTITY_TTL_S:
            return seen[1], seen[2]
        fs, p = self.filesystem(url)
        info = self._call(url, lambda: fs.info(p), what="its size and version", stats=stats)
        if info.get("type") == "directory":
            raise VideoOpenError(url, "is a folder, not an object")
        if info.get("size") is None:
            raise VideoOpenError(url, "the store does not say its size (no Content-Length): ranges cannot be read")
        size, etag = int(info["size"]), _etag(info)
        if not etag and url not in self._identities:
            log.warning("%s: the store gives no version (ETag, generation, mtime) for it: a change that keeps its "
                        "size would go unnoticed", url)  # fmt: skip
        with self._lock:
            self._identities[url] = (now, size, etag)
            if len(self._identities) > 65536:
                self._identities.pop(next(iter(self._identities)))
        return size, etag

    def call(self, url: str, fn, *, what: str):
        """``fn()`` (a listing) with the retries and timeout of every request; errors name ``url``."""
        return self._call(url, fn, what=what)

    def _call(self, url: str, fn, *, what: str, stats=None):
        from ._rangefile import Fetcher

        return Fetcher(lambda a, b: b"", url, retries=self.retries, timeout_s=self.timeout_s,
                       stats=self.stats if stats is None else stats).call(fn, what)  # fmt: skip

    def fetcher(self, url: str, size: int | None = None, *, stats=None):
        """The range reader of one object (``size``: its size now, for the checks of every request);
        with ``stats``, a reader of its own that counts there."""
        f = self._fetchers.get(url) if stats is None else None
        if f is None or f.size != size:
            from ._rangefile import Fetcher

            fs, p = self.filesystem(url)
            f = Fetcher(
                lambda start, end: fs.cat_file(p, start=start, end=end), url, size=size, retries=self.retries,
                timeout_s=self.timeout_s, stats=self.stats if stats is None else stats,
            )
            if stats is None:
                with self._lock:
                    self._fetchers[url] = f
                    if len(self._fetchers) > 4096:
                        self._fetchers.pop(next(iter(self._fetchers)))
        return f

    # ---- opening

    def open_indexed(self, path: str, *, data_offset: int = 0, data_size: int = -1, file_size: int = -1,
                     file_mtime_ns: int = -1, file_etag: str = "", stats=None):
        """:meth:`open` with the ``VideoInfo`` fields that say where the video lies and what it was (LOC_FIELDS)."""
        return self.open(path, offset=data_offset, size=data_size, expect_size=file_size, expect_mtime_ns=file_mtime_ns,
                         expect_etag=file_etag, stats=stats)  # fmt: skip

    def open(self, path: str, *, offset: int = 0, size: int = -1, expect_size: int = -1, expect_mtime_ns: int = -1,
             expect_etag: str = "", readahead_bytes: int | None = None, stats=None):
        """Open ``path`` for PyAV: (file object, local descriptor or None). A member of a
        shard is bytes [offset, offset + size) of it. Raises VideoChangedError when the
        object is not the one described by the ``expect_*`` values (-1 / "": unknown).
        A remote object's requests count in ``stats`` (default: this storage's)."""
        from ._rangefile import Fetcher, RangeFile, local_fetch_fn

        outer = container_of(path)
        if is_url(outer):
            obj_size, etag = self.identity(outer, stats=stats)
            if (expect_size >= 0 and obj_size != expect_size) or (expect_etag and etag and etag != expect_etag):
                raise VideoChangedError(
                    path, f"the object changed after it was indexed (indexed: {expect_size} bytes, version "
                    f"{expect_etag or '?'}; now: {obj_size} bytes, version {etag or '?'}); its frames would not "
                    "match the index. Re-index it (`ringload index SOURCE`) or rebuild the loader",
                )  # fmt: skip
            length = obj_size - offset if size < 0 else size
            fetcher = self.fetcher(outer, obj_size, stats=stats)
            ra = {} if readahead_bytes is None else {"readahead_bytes": readahead_bytes}
            return RangeFile(fetcher, (outer, etag or obj_size), length, self.cache, base=offset, stats=fetcher.stats,
                             **ra), None  # fmt: skip
        try:
            fd = os.open(outer, os.O_RDONLY)
        except FileNotFoundError:
            raise VideoOpenError(path, "no such file (it was indexed: moved or deleted since?)") from None
        except OSError as exc:
            raise VideoOpenError(path, f"cannot open: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            check_file(path, st, expect_size, expect_mtime_ns)
            length = st.st_size - offset if size < 0 else size
            if offset + length > st.st_size:
                raise VideoOpenError(path, f"bytes {offset}-{offset + length} lie past the end of {outer} "
                                           f"({st.st_size} bytes); re-index it")  # fmt: skip
            # Local shards: the page cache holds their bytes; a small cache serves PyAV's reads.
            key = (outer, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            f = RangeFile(Fetcher(local_fetch_fn(fd), outer, retries=0, timeout_s=None), key, length, _local_cache(),
                          base=offset, readahead_bytes=readahead_bytes if readahead_bytes is not None else 256 << 10)
            f.local = True  # nothing to prefetch: the kernel reads ahead
            return f, fd
        except BaseException:
            os.close(fd)
            raise


#: The VideoInfo fields that locate a video's bytes and identify the object they were indexed from.
LOC_FIELDS = ("data_offset", "data_size", "file_size", "file_mtime_ns", "file_etag")


def location(info) -> dict:
    """A VideoInfo's LOC_FIELDS, as :meth:`Storage.open_indexed` takes them."""
    return {k: getattr(info, k) for k in LOC_FIELDS}


def check_file(path: str, st: os.stat_result, expect_size: int, expect_mtime_ns: int) -> None:
    """VideoChangedError unless a local file's size and mtime are the indexed ones (-1: unknown).
    Size and mtime only: inode and device differ for an index built on another machine."""
    if (expect_size < 0 or st.st_size == expect_size) and (expect_mtime_ns < 0 or st.st_mtime_ns == expect_mtime_ns):
        return
    raise VideoChangedError(
        path, f"the file changed after it was indexed (indexed: {expect_size} bytes, mtime_ns {expect_mtime_ns}; "
        f"now: {st.st_size} bytes, mtime_ns {st.st_mtime_ns}); its frames would not match the index. "
        "Re-index it (`ringload index SOURCE`) or rebuild the loader",
    )  # fmt: skip


def check_storage_options(options) -> dict | None:
    """``storage_options`` as decoders will get them: a dict of plain values (str, numbers,
    bools, None, lists and dicts of them), or a ConfigError naming the setting."""
    if options is None:
        return None
    if not isinstance(options, dict):
        # Its type only: the value may hold a secret.
        raise ConfigError(f"storage_options: pass a dict of fsspec options, e.g. {{'client_kwargs': {{'endpoint_url': "
                          f"'http://...'}}}}, or None, not {type(options).__name__}")  # fmt: skip

    def plain(v, where: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise ConfigError(f"storage_options{where}: keys must be str, got {k!r}")
                plain(x, f"{where}[{k!r}]")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                plain(x, f"{where}[{i}]")
        elif not (v is None or isinstance(v, (str, int, float, bool))):
            raise ConfigError(
                f"storage_options{where}={type(v).__name__}: decoder processes get plain values only (str, numbers, "
                "bools, None, lists and dicts of them); pass the object's settings instead"
            )

    plain(options, "")
    return dict(options)


def _rebuild(options, cache_bytes, retries, timeout_s):
    return Storage(options, cache_bytes=cache_bytes, retries=retries, timeout_s=timeout_s)


def _with_defaults(protocol: str, options: dict, timeout_s: float) -> dict:
    """The user's options, plus ours where the user set none: ringload retries and times
    out each request itself, so the client's own retries are turned off."""
    opts = dict(options)
    if protocol in ("s3", "s3a"):
        cfg = dict(opts.get("config_kwargs") or {})
        # botocore's max_attempts counts retries; total_max_attempts counts every attempt.
        cfg.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
        cfg.setdefault("connect_timeout", timeout_s)
        cfg.setdefault("read_timeout", timeout_s)
        opts["config_kwargs"] = cfg
    return opts


_LOCAL_CACHE = None  # made on first use


def _local_cache():
    global _LOCAL_CACHE
    if _LOCAL_CACHE is None:
        from ._rangefile import BlockCache

        _LOCAL_CACHE = BlockCache(4 << 20)
    return _LOCAL_CACHE


def local_copy(url: str, *, chunk: int = 16 << 20) -> str:
    """A local copy of the object at ``url`` (an index file), fetched once per version into
    the cache directory and reused while the object's size and version stay the same. A
    copy is reused only from a folder that no other user can write, and only when it is a
    regular file of ours; otherwise the object is fetched into a private temporary folder."""
    import hashlib
    import secrets
    import stat
    import tempfile

    from ._index_cache import _dir_trusted, default_cache_dir

    storage = current()
    size, etag = storage.identity(url, fresh=True)
    folder = os.path.join(default_cache_dir(), "objects")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        trusted = _dir_trusted(os.path.dirname(folder)) and _dir_trusted(folder)
    except OSError:
        trusted = False
    if not trusted:
        folder = tempfile.mkdtemp(prefix="ringload-objects-")
    name = hashlib.sha256(repr((url, size, etag)).encode()).hexdigest()[:32] + os.path.splitext(url)[1]
    dest = os.path.join(folder, name)
    try:
        st = os.lstat(dest)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_size == size and etag:
            return dest
    except OSError:
        pass
    tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}")
    fetcher = storage.fetcher(url, size)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as fh:
            for start in range(0, size, chunk):
                fh.write(fetcher.fetch(start, min(size, start + chunk)))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    log.info("fetched %s (%d bytes) into %s", url, size, dest)
    return dest


# --------------------------------------------------------------------------- the process's storage

_current: contextvars.ContextVar[Storage | None] = contextvars.ContextVar("ringload_storage", default=None)
_default: Storage | None = None


def current() -> Storage:
    """The storage in use here: the one set by :func:`using`, else a default one."""
    s = _current.get()
    if s is not None:
        return s
    global _default
    if _default is None:
        _default = Storage()
    return _default


@contextlib.contextmanager
def using(storage: Storage | None):
    """Make ``storage`` the current one inside the block (None: leave it as it is)."""
    if storage is None:
        yield current()
        return
    token = _current.set(storage)
    try:
        yield storage
    finally:
        _current.reset(token)


def set_process_storage(storage: Storage) -> None:
    """The storage for the rest of this process (decoder and indexing processes)."""
    global _default
    _default = storage


__all__ = ["RemoteReadError", "Storage", "current", "is_local", "is_url", "member_path", "split_member", "using"]
