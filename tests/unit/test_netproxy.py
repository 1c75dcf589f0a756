"""The local object-storage infrastructure: moto's S3 server (ringload.bench.s3local) and the
fault/latency proxy in front of it (ringload.bench.netproxy), read through with s3fs with its
own retries off, so that every fault reaches the caller."""

from __future__ import annotations

import errno
import http.client
import http.server
import os
import pathlib
import socket
import struct
import threading
import time

import pytest

from ringload.bench.netproxy import Proxy, fault_of
from ringload.bench.s3local import LocalS3, LocalS3Error

s3fs = pytest.importorskip("s3fs", reason="needs s3fs (the test extra has it)")

SIZE = 300_000


def no_retry_options(server: LocalS3, endpoint_url: str, read_timeout: float = 5.0) -> dict:
    # botocore: one attempt in all ("max_attempts" counts retries: 1 would allow one retry).
    # s3fs's own loop (S3FileSystem.retries, not a constructor argument) is set on the instance.
    return server.storage_options(
        endpoint_url,
        config_kwargs={"retries": {"total_max_attempts": 1}, "connect_timeout": 1, "read_timeout": read_timeout},
        skip_instance_cache=True,
    )


@pytest.fixture
def make_fs(s3_server):
    def make(endpoint_url: str, read_timeout: float = 5.0):
        fs = s3fs.S3FileSystem(**no_retry_options(s3_server, endpoint_url, read_timeout))
        fs.retries = 1
        return fs

    return make


@pytest.fixture
def s3_object(s3_bucket, s3_server, tmp_path) -> tuple[str, bytes]:
    """(bucket/key, contents) of a SIZE-byte object."""
    bucket, _ = s3_bucket
    data = os.urandom(SIZE)
    local = tmp_path / "obj.bin"
    local.write_bytes(data)
    s3_server.upload(local, f"s3://{bucket}/dir/obj.bin")
    return f"{bucket}/dir/obj.bin", data


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def test_fault_free_reads_through_the_proxy_are_exact_on_one_connection(s3_proxy, s3_object, make_fs):
    path, data = s3_object
    fs = make_fs(s3_proxy.endpoint_url)
    ranges = [(0, 1), (0, 1000), (12_345, 67_890), (SIZE - 10, SIZE), (0, SIZE)]
    for start, end in ranges:
        assert fs.cat_file(path, start=start, end=end) == data[start:end]
    c = s3_proxy.counters()
    assert c["requests"] == len(ranges)
    assert c["failed"] == c["dropped"] == c["stalled"] == 0
    assert c["bytes_to_client"] > sum(end - start for start, end in ranges)
    # werkzeug closes after every response; the proxy keeps the client's connection alive
    assert c["connections"] == 1 and c["upstream_connections"] == len(ranges)


def test_fail_share_answers_500_without_forwarding(s3_proxy, s3_object, make_fs):
    path, data = s3_object
    fs = make_fs(s3_proxy.endpoint_url)
    s3_proxy.fail_share = 1.0
    before = s3_proxy.counters()
    with pytest.raises(OSError) as info:
        fs.cat_file(path, start=0, end=100)
    # s3fs turns botocore's ClientError (InternalError) into OSError(EREMOTEIO)
    assert info.value.errno == errno.EREMOTEIO
    cause = info.value.__cause__
    assert type(cause).__name__ == "ClientError" and cause.response["Error"]["Code"] == "InternalError"
    d = delta(s3_proxy.counters(), before)
    assert d["requests"] == d["failed"] == 1  # one attempt: no retries left on
    assert d["upstream_connections"] == 0
    s3_proxy.fail_share = 0.0
    assert fs.cat_file(path, start=0, end=100) == data[:100]


def test_drop_share_cuts_the_body_and_the_read_raises(s3_proxy, s3_object, make_fs):
    aiohttp = pytest.importorskip("aiohttp")
    path, data = s3_object
    fs = make_fs(s3_proxy.endpoint_url)
    s3_proxy.drop_share = 1.0
    before = s3_proxy.counters()
    with pytest.raises(aiohttp.ClientPayloadError, match="Not enough data"):
        fs.cat_file(path, start=0, end=100_000)
    d = delta(s3_proxy.counters(), before)
    assert d["requests"] == d["dropped"] == 1
    assert 50_000 <= d["bytes_to_client"] < 51_000  # head + half of the 100 000-byte body
    s3_proxy.drop_share = 0.0
    assert fs.cat_file(path, start=5, end=100_000) == data[5:100_000]


def test_stall_share_makes_the_read_time_out(s3_proxy, s3_object, make_fs):
    botocore_exceptions = pytest.importorskip("botocore.exceptions")
    path, _ = s3_object
    fs = make_fs(s3_proxy.endpoint_url, read_timeout=1.0)
    s3_proxy.stall_share = 1.0
    before = s3_proxy.counters()
    t0 = time.monotonic()
    with pytest.raises(botocore_exceptions.ReadTimeoutError):
        fs.cat_file(path, start=0, end=100)
    assert time.monotonic() - t0 < 5.0
    d = delta(s3_proxy.counters(), before)
    assert d["requests"] == d["stalled"] == 1 and d["bytes_to_client"] == 0


def test_latency_is_added_to_every_request(s3_proxy, s3_object, make_fs):
    path, data = s3_object
    fs = make_fs(s3_proxy.endpoint_url)
    assert fs.cat_file(path, start=0, end=10) == data[:10]  # connection and session set up
    s3_proxy.latency_s = 0.05
    t0 = time.monotonic()
    for i in range(5):
        assert fs.cat_file(path, start=i, end=i + 10) == data[i : i + 10]
    assert time.monotonic() - t0 >= 5 * 0.05


def test_faults_follow_the_seed_and_the_request_number(s3_server, s3_object, make_fs):
    path, data = s3_object
    with Proxy("127.0.0.1", s3_server.port, seed=11, fail_share=0.5) as proxy:
        fs = make_fs(proxy.endpoint_url)
        failed = []
        for _ in range(16):
            try:
                assert fs.cat_file(path, start=0, end=10) == data[:10]
                failed.append(False)
            except OSError:
                failed.append(True)
        assert failed == [fault_of(11, n, 0.5, 0.0, 0.0) == "fail" for n in range(16)]
        assert any(failed) and not all(failed)
        assert proxy.failed == sum(failed) and proxy.requests == 16


def test_fault_of_bands():
    draws = [fault_of(3, n, 0.2, 0.3, 0.1) for n in range(4000)]
    assert draws == [fault_of(3, n, 0.2, 0.3, 0.1) for n in range(4000)]
    share = {k: draws.count(k) / len(draws) for k in ("fail", "drop", "stall", None)}
    assert share["fail"] == pytest.approx(0.2, abs=0.03) and share["drop"] == pytest.approx(0.3, abs=0.03)
    assert share["stall"] == pytest.approx(0.1, abs=0.03)
    assert all(fault_of(3, n, 1.0, 0.0, 0.0) == "fail" for n in range(100))
    assert all(fault_of(3, n, 0.0, 0.0, 0.0) is None for n in range(100))
    assert draws != [fault_of(4, n, 0.2, 0.3, 0.1) for n in range(4000)]


def test_settings_are_checked():
    with Proxy("127.0.0.1", 9) as proxy:
        with pytest.raises(ValueError):
            proxy.fail_share = 1.5
        with pytest.raises(ValueError):
            proxy.latency_s = -1
        proxy.stall_share = 0.25
        assert proxy.stall_share == 0.25


def _request(port: int, raw: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(raw)
    return sock


def _recv_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_close_is_prompt_with_idle_and_stalled_connections(s3_server, s3_object):
    path, _ = s3_object
    proxy = Proxy("127.0.0.1", s3_server.port, stall_share=1.0, stall_s=60.0)
    idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    stalled = _request(proxy.port, f"GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    deadline = time.monotonic() + 5
    while proxy.stalled == 0:
        assert time.monotonic() < deadline, "the request never reached the stall"
        time.sleep(0.01)  # polling a counter, to a deadline
    t0 = time.monotonic()
    proxy.close()
    assert time.monotonic() - t0 < 3.0
    assert _recv_all(stalled) == b"" and _recv_all(idle) == b""  # both closed, nothing sent
    stalled.close()
    idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    proxy.close()  # idempotent


def test_clients_that_misbehave_do_not_break_the_proxy(s3_proxy, s3_object, make_fs):
    path, data = s3_object
    port = s3_proxy.port
    _request(port, b"GET /half-a-head HTTP/1.1\r\nHo").close()
    _request(port, f"GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).close()  # gone before the answer
    garbage = _request(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert _recv_all(garbage) == b""
    garbage.close()
    reset = _request(port, f"GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()  # a reset, not a FIN
    fs = make_fs(s3_proxy.endpoint_url)
    assert fs.cat_file(path, start=100, end=200) == data[100:200]


class _Upstream(http.server.BaseHTTPRequestHandler):
    """A keep-alive HTTP/1.1 server with the framings moto does not use."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif self.path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"all of it, then EOF")
            self.close_connection = True
        else:
            self.send_response(204)
            self.end_headers()

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()

    def do_PUT(self):
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
        else:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = b"got %d bytes: %s" % (len(body), body[:20])
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_framing_on_one_keep_alive_connection(upstream):
    with Proxy("127.0.0.1", upstream) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("GET", "/chunked")
        resp = conn.getresponse()
        assert resp.read() == b"hello chunked world"
        conn.request("HEAD", "/anything")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        conn.request("GET", "/no-content")
        resp = conn.getresponse()
        assert resp.status == 204 and resp.read() == b""
        conn.request("PUT", "/sized", body=b"x" * 5000)
        assert conn.getresponse().read() == b"got 5000 bytes: " + b"x" * 20
        conn.request("PUT", "/chunked", body=iter([b"abc", b"defg"]), encode_chunked=True)
        assert conn.getresponse().read() == b"got 7 bytes: abcdefg"
        conn.request("GET", "/until-close")
        resp = conn.getresponse()
        assert resp.read() == b"all of it, then EOF" and resp.getheader("Connection") == "close"
        conn.close()
        c = proxy.counters()
        assert c["requests"] == 6 and c["connections"] == 1 and c["upstream_connections"] == 1


def test_expect_100_continue_is_answered_by_the_proxy(upstream):
    with Proxy("127.0.0.1", upstream) as proxy:
        sock = _request(proxy.port, b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"body")
        sock.shutdown(socket.SHUT_WR)
        reply = _recv_all(sock)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 200")
        assert reply.endswith(b"got 4 bytes: body")


def test_drop_of_a_chunked_response(upstream):
    with Proxy("127.0.0.1", upstream, drop_share=1.0) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("GET", "/chunked")
        resp = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
        conn.close()
        assert proxy.dropped == 1


def test_local_s3_upload_dir_and_reset(s3_server, s3_bucket, tmp_path, make_fs):
    bucket, opts = s3_bucket
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"a" * 10)
    (tmp_path / "sub" / "b.bin").write_bytes(b"b" * 20)
    urls = s3_server.upload_dir(tmp_path, bucket, "pre/fix/")
    assert urls == [f"s3://{bucket}/pre/fix/a.bin", f"s3://{bucket}/pre/fix/sub/b.bin"]
    fs = make_fs(opts["endpoint_url"])
    assert fs.cat_file(f"{bucket}/pre/fix/sub/b.bin") == b"b" * 20
    assert opts == s3_server.storage_options()
    assert s3_server.cpu_seconds() > 0


def test_local_s3_close_leaves_no_process_behind():
    server = LocalS3()
    pid = server.pid
    assert server.running() and pathlib.Path(f"/proc/{pid}").exists()
    server.make_bucket("reset-me")
    server.reset()
    assert server.client.list_buckets()["Buckets"] == []
    t0 = time.monotonic()
    server.close()
    assert time.monotonic() - t0 < 10
    assert not server.running()
    assert not pathlib.Path(f"/proc/{pid}").exists()  # exited and reaped
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert server.cpu_seconds() > 0  # the last reading before it stopped
    server.close()  # idempotent


def test_local_s3_that_cannot_start_says_why():
    with socket.create_server(("127.0.0.1", 0)) as taken, pytest.raises(LocalS3Error, match="exited") as info:
        LocalS3(port=taken.getsockname()[1])
    assert "in use" in str(info.value)


def test_without_keep_alive_the_client_connection_ends_with_the_servers(s3_server, s3_object, make_fs):
    path, data = s3_object
    with Proxy("127.0.0.1", s3_server.port, keep_alive=False) as proxy:
        fs = make_fs(proxy.endpoint_url)
        for i in range(3):
            assert fs.cat_file(path, start=i, end=i + 100) == data[i : i + 100]
        assert proxy.connections == proxy.upstream_connections == proxy.requests == 3
