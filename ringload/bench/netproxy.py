"""An HTTP/1.1-aware TCP proxy on 127.0.0.1 that adds latency and faults between an S3
client and a server (:mod:`ringload.bench.s3local`), for the benchmark and the fault tests.

``Proxy(host, port)`` listens on a port of its own (``.port``, ``.endpoint_url``) and forwards
each client connection to ``host:port``, on an asyncio loop in a background thread. It follows
HTTP/1.1 framing on both sides (request and status lines, headers up to the blank line, bodies
by ``Content-Length`` or chunked, responses also "until close"; no body for HEAD, 1xx, 204, 304)
so it acts per HTTP request, keep-alive connections included. Per request it can:

- wait ``latency_s`` before forwarding it (once per request, not per packet);
- *fail* it (``fail_share``): answer ``500 Internal Server Error`` with an S3-style XML error body
  itself (``Content-Length``, ``Connection: close``), forwarding nothing, then close;
- *drop* it (``drop_share``): forward it, send the client the response head and half the body
  (half the head when the body is empty; for chunked or until-close bodies, half of the first
  block read), then close the connection (a FIN, not a reset);
- *stall* it (``stall_share``): forward it, send nothing back for ``stall_s`` seconds (or until
  the client hangs up), then close.

Which requests fault is a function of ``(seed, request number)`` alone (:func:`fault_of`):
request numbers count from 0 in the order the proxy finishes reading request heads, over all
connections. The shares, ``stall_s`` and ``latency_s`` can be changed while it runs, from any
thread; :meth:`Proxy.counters` reads the counts.

``keep_alive=True`` (the default) keeps the client's connection open across requests even
when the server closes after every response, as werkzeug's server under moto does: the proxy
drops the server's ``Connection: close`` (when the response body has a length) and opens a new
server connection for the next request, so the client sees keep-alive connections like real
S3's. ``keep_alive=False`` mirrors the server: the client's connection ends with the server's.

Chunked request bodies are forwarded as they are; ``Expect: 100-continue`` is answered by the
proxy (``100 Continue``) and not forwarded. Protocol upgrades, CONNECT and HTTP/2 are not
supported; a request the proxy cannot parse closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import socket
import threading
import weakref

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_HEAD = 64 * 1024  # request or response line + headers
_BLOCK = 64 * 1024
_CHUNKED = -1
_UNTIL_CLOSE = -2
_HEX = re.compile(rb"[0-9A-Fa-f]+")

FAIL, DROP, STALL = "fail", "drop", "stall"


class HTTPFramingError(ValueError):
    """Bytes the proxy cannot read as HTTP/1.x."""


def fault_of(seed: int, n: int, fail_share: float, drop_share: float, stall_share: float) -> str | None:
    """What the proxy does to request number ``n``: ``"fail"``, ``"drop"``, ``"stall"`` or None
    (forward it). One uniform number per ``(seed, n)`` falls in the bands
    ``[0, fail)``, ``[fail, fail + drop)``, ``[fail + drop, fail + drop + stall)``, so each share
    is that fault's probability while they sum to at most 1 (beyond, the later bands shrink)."""
    if not (fail_share or drop_share or stall_share):
        return None
    digest = hashlib.blake2b(f"{seed}:{n}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < fail_share:
        return FAIL
    if u < fail_share + drop_share:
        return DROP
    if u < fail_share + drop_share + stall_share:
        return STALL
    return None


# -- HTTP/1.x framing ---------------------------------------------------------------------


class _Head:
    """A request or response head: its first line and header fields, as received."""

    __slots__ = ("fields", "first")

    def __init__(self, raw: bytes):
        lines = raw.lstrip(b"\r\n")[:-4].split(b"\r\n")
        self.first = lines[0]
        self.fields: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise HTTPFramingError(f"bad header line {line[:80]!r}")
            self.fields.append((name.lower(), value.strip()))

    def values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.fields if k == name]

    def tokens(self, name: bytes) -> set[bytes]:
        return {t.strip().lower() for v in self.values(name) for t in v.split(b",") if t.strip()}

    def wants_close(self, version: bytes) -> bool:
        conn = self.tokens(b"connection")
        return b"close" in conn or (version == b"HTTP/1.0" and b"keep-alive" not in conn)

    def content_length(self) -> int | None:
        values = set(self.values(b"content-length"))
        if not values:
            return None
        if len(values) > 1 or not all(v.isdigit() for v in values):
            raise HTTPFramingError(f"bad Content-Length {sorted(values)!r}")
        return int(values.pop())

    def chunked(self) -> bool | None:
        """None: no Transfer-Encoding; else whether its last coding is chunked."""
        codings = [t.strip().lower() for v in self.values(b"transfer-encoding") for t in v.split(b",") if t.strip()]
        return None if not codings else codings[-1] == b"chunked"

    def encode(self, *, drop: tuple[bytes, ...] = (), add: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
        """The head again, without the fields named in ``drop`` (lowercase), with ``add``."""
        lines = [self.first]
        lines += [k + b": " + v for k, v in self.fields if k not in drop]
        lines += [k + b": " + v for k, v in add]
        return b"\r\n".join(lines) + b"\r\n\r\n"


async def _read_head(reader: asyncio.StreamReader, timeout: float | None = None) -> bytes | None:
    """The next head's bytes, up to and with the blank line; None on EOF before any byte."""
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip(b"\r\n"):
            raise HTTPFramingError("connection closed inside a head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise HTTPFramingError(f"head longer than {MAX_HEAD} bytes") from exc


def _request_framing(head: _Head) -> int:
    chunked = head.chunked()
    if chunked is not None:
        if not chunked:
            raise HTTPFramingError("a request body whose last transfer coding is not chunked")
        return _CHUNKED
    length = head.content_length()
    return length or 0


def _response_framing(head: _Head, status: int, method: bytes) -> int:
    if method == b"HEAD" or 100 <= status < 200 or status in (204, 304):
        return 0
    chunked = head.chunked()
    if chunked is not None:
        return _CHUNKED if chunked else _UNTIL_CLOSE
    length = head.content_length()
    return _UNTIL_CLOSE if length is None else length


async def _body_pieces(reader: asyncio.StreamReader, framing: int, timeout: float | None):
    """The raw bytes of one body (chunk sizes and trailers included), in pieces."""

    async def read(n: int) -> bytes:
        return await asyncio.wait_for(reader.read(n), timeout)

    if framing >= 0:
        left = framing
        while left:
            piece = await read(min(left, _BLOCK))
            if not piece:
                raise HTTPFramingError(f"connection closed {left} bytes before the end of a body")
            left -= len(piece)
            yield piece
    elif framing == _CHUNKED:
        while True:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
            size_field = line.split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size_field):
                raise HTTPFramingError(f"bad chunk size line {line[:40]!r}")
            yield line
            size = int(size_field, 16)
            if size == 0:
                while True:  # trailer fields, then the blank line
                    line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                    yield line
                    if line == b"\r\n":
                        return
            left = size + 2  # the data and its CRLF
            while left:
                piece = await read(min(left, _BLOCK))
                if not piece:
                    raise HTTPFramingError("connection closed inside a chunk")
                left -= len(piece)
                yield piece
    else:
        while True:
            piece = await read(_BLOCK)
            if not piece:
                return
            yield piece


def _fail_response(n: int, head_only: bool) -> bytes:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
        "<Message>We encountered an internal error. Please try again.</Message>"
        f"<RequestId>ringload-proxy-{n}</RequestId></Error>"
    ).encode()
    head = (
        "HTTP/1.1 500 Internal Server Error\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-request-id: ringload-proxy-{n}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body


# -- the proxy ----------------------------------------------------------------------------


_COUNTERS = ("connections", "upstream_connections", "requests", "failed", "dropped", "stalled", "bytes_to_client")
_SETTINGS = ("latency_s", "fail_share", "drop_share", "stall_share", "stall_s")


def _counter(name: str) -> property:
    return property(lambda self: self.counters()[name], doc=f"The ``{name}`` counter.")


class Proxy:
    """A proxy on ``127.0.0.1:port`` (0: the kernel picks) in front of
    ``target_host:target_port``, running from construction until :meth:`close`.

    ``upstream_timeout_s`` bounds each wait on the server (connecting: ``connect_timeout_s``);
    past it the proxy closes both sides. Counters: ``connections`` (client connections
    accepted), ``upstream_connections`` (opened to the server), ``requests`` (request heads
    read, faulted or not), ``failed``, ``dropped``, ``stalled``, ``bytes_to_client`` (every
    byte sent to clients); each is also an attribute.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        port: int = 0,
        latency_s: float = 0.0,
        seed: int = 0,
        fail_share: float = 0.0,
        drop_share: float = 0.0,
        stall_share: float = 0.0,
        stall_s: float = 30.0,
        keep_alive: bool = True,
        upstream_timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        start_timeout_s: float = 10.0,
    ):
        self.target = (target_host, int(target_port))
        self.seed = int(seed)
        self.keep_alive = bool(keep_alive)
        self.upstream_timeout_s = float(upstream_timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._settings: dict[str, float] = {}
        for name, value in zip(_SETTINGS, (latency_s, fail_share, drop_share, stall_share, stall_s)):
            setattr(self, name, value)
        self._closed = False
        self._tasks: set[asyncio.Task] = set()
        # Writers whose transports are still open (closed ones drop out): aborted by close().
        self._writers: weakref.WeakSet[asyncio.StreamWriter] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._start_error: BaseException | None = None
        self._started = threading.Event()
        self._sock = socket.create_server((HOST, port))
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name=f"netproxy-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(start_timeout_s):
            self.close()
            raise RuntimeError(f"the proxy's loop did not start within {start_timeout_s} s")
        if self._start_error is not None:
            self.close()
            raise RuntimeError("the proxy did not start") from self._start_error

    # -- settings and counters (any thread) ------------------------------------------------

    def _get(self, name: str) -> float:
        with self._lock:
            return self._settings[name]

    def _set(self, name: str, value: float) -> None:
        value = float(value)
        if name.endswith("_share") and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        with self._lock:
            self._settings[name] = value

    latency_s = property(lambda self: self._get("latency_s"), lambda self, v: self._set("latency_s", v))
    fail_share = property(lambda self: self._get("fail_share"), lambda self, v: self._set("fail_share", v))
    drop_share = property(lambda self: self._get("drop_share"), lambda self, v: self._set("drop_share", v))
    stall_share = property(lambda self: self._get("stall_share"), lambda self, v: self._set("stall_share", v))
    stall_s = property(lambda self: self._get("stall_s"), lambda self, v: self._set("stall_s", v))

    def counters(self) -> dict[str, int]:
        """A consistent snapshot of every counter."""
        with self._lock:
            return dict(self._counts)

    def _count(self, name: str, k: int = 1) -> int:
        with self._lock:
            before = self._counts[name]
            self._counts[name] = before + k
            return before

    connections = _counter("connections")
    upstream_connections = _counter("upstream_connections")
    requests = _counter("requests")
    failed = _counter("failed")
    dropped = _counter("dropped")
    stalled = _counter("stalled")
    bytes_to_client = _counter("bytes_to_client")

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _plan(self, n: int) -> tuple[float, str | None, float]:
        with self._lock:
            s = dict(self._settings)
        return s["latency_s"], fault_of(self.seed, n, s["fail_share"], s["drop_share"], s["stall_share"]), s["stall_s"]

    # -- the loop thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:
            log.exception("the proxy's loop failed")
            self._start_error = exc  # for the constructor to raise
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._accept, sock=self._sock, limit=MAX_HEAD)
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2.0)
            for writer in list(self._writers):
                writer.transport.abort()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count("connections")
        self._writers.add(writer)  # aborted by close() even if its task never starts
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        conn = _Connection(self, creader, cwriter)
        try:
            while await conn.one_request():
                pass
        except asyncio.CancelledError:
            pass  # close(): the connection ends here
        except (OSError, HTTPFramingError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            log.debug("proxy connection ends: %r", exc)
        except Exception:
            log.exception("proxy connection failed")
        finally:
            conn.close()

    # -- stopping --------------------------------------------------------------------------

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops the proxy: closes its listening socket and every connection; waits at most
        ``timeout_s`` for its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout_s)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError(f"the proxy's thread did not stop within {timeout_s} s")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Connection:
    """One client connection and the server connection behind it (opened when needed)."""

    def __init__(self, proxy: Proxy, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter):
        self.proxy = proxy
        self.creader, self.cwriter = creader, cwriter
        self.ureader: asyncio.StreamReader | None = None
        self.uwriter: asyncio.StreamWriter | None = None

    async def to_client(self, data: bytes) -> None:
        self.cwriter.write(data)
        self.proxy._count("bytes_to_client", len(data))
        await self.cwriter.drain()

    async def upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.ureader is not None and self.ureader.at_eof():
            self.close_upstream()
        if self.ureader is None or self.uwriter is None:
            host, port = self.proxy.target
            self.ureader, self.uwriter = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_HEAD), self.proxy.connect_timeout_s
            )
            self.proxy._writers.add(self.uwriter)
            self.proxy._count("upstream_connections")
        return self.ureader, self.uwriter

    def close_upstream(self) -> None:
        if self.uwriter is not None:
            self.uwriter.close()
        self.ureader = self.uwriter = None

    def close(self) -> None:
        self.close_upstream()
        self.cwriter.close()

    async def one_request(self) -> bool:
        """Relays one request and its response; whether the client connection goes on."""
        proxy = self.proxy
        raw = await _read_head(self.creader)
        if raw is None:
            return False
        head = _Head(raw)
        parts = head.first.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise HTTPFramingError(f"bad request line {head.first[:80]!r}")
        method, version = parts[0].upper(), parts[2]
        framing = _request_framing(head)
        n = proxy._count("requests")
        latency, fault, stall_s = proxy._plan(n)
        client_close = head.wants_close(version)
        expect = b"100-continue" in head.tokens(b"expect")
        if expect:
            await self.to_client(b"HTTP/1.1 100 Continue\r\n\r\n")
        if latency:
            await asyncio.sleep(latency)
        if fault == FAIL:
            body = _body_pieces(self.creader, framing, None)
            async with contextlib.aclosing(body):
                async for _ in body:
                    pass  # read the request to its end, so closing sends no reset
            proxy._count("failed")
            await self.to_client(_fail_response(n, method == b"HEAD"))
            return False

        timeout = proxy.upstream_timeout_s
        ureader, uwriter = await self.upstream()
        uwriter.write(head.encode(drop=(b"expect",)) if expect else raw)
        body = _body_pieces(self.creader, framing, None)
        async with contextlib.aclosing(body):
            async for piece in body:
                uwriter.write(piece)
                await asyncio.wait_for(uwriter.drain(), timeout)
        await asyncio.wait_for(uwriter.drain(), timeout)

        if fault == STALL:
            proxy._count("stalled")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._until_client_eof(), stall_s)
            return False

        while True:
            raw = await _read_head(ureader, timeout)
            if raw is None:
                raise HTTPFramingError("the server closed the connection before answering")
            rhead = _Head(raw)
            status_parts = rhead.first.split(b" ", 2)
            if len(status_parts) < 2 or not status_parts[1].isdigit():
                raise HTTPFramingError(f"bad status line {rhead.first[:80]!r}")
            status = int(status_parts[1])
            if not 100 <= status < 200:
                break
            if status == 101:
                raise HTTPFramingError("protocol upgrades are not supported")
            await self.to_client(raw)  # an interim response (103, ...): pass it on

        rframing = _response_framing(rhead, status, method)
        upstream_close = rhead.wants_close(status_parts[0]) or rframing == _UNTIL_CLOSE
        if proxy.keep_alive:
            keep = not client_close and rframing != _UNTIL_CLOSE
        else:
            keep = not client_close and not upstream_close
        if keep and upstream_close:
            out_head = rhead.encode(drop=(b"connection",))
        elif not keep and not rhead.wants_close(status_parts[0]):
            out_head = rhead.encode(drop=(b"connection",), add=((b"Connection", b"close"),))
        else:
            out_head = raw
        pieces = _body_pieces(ureader, rframing, timeout)

        async with contextlib.aclosing(pieces):
            if fault == DROP:
                proxy._count("dropped")
                if rframing == 0:
                    await self.to_client(out_head[: len(out_head) // 2])
                    return False
                await self.to_client(out_head)
                budget = rframing // 2 if rframing > 0 else None
                async for piece in pieces:
                    if budget is None:
                        await self.to_client(piece[: len(piece) // 2])
                        return False
                    if len(piece) >= budget:
                        if budget:
                            await self.to_client(piece[:budget])
                        return False
                    budget -= len(piece)
                    await self.to_client(piece)
                return False

            await self.to_client(out_head)
            async for piece in pieces:
                await self.to_client(piece)
        if upstream_close:
            self.close_upstream()
        return keep

    async def _until_client_eof(self) -> None:
        while await self.creader.read(_BLOCK):
            pass
