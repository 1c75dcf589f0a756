"""A local S3 server for the tests and the benchmark: moto's standalone server
(``python -m moto.server``) in a subprocess on 127.0.0.1.

It listens on port 0 by default, so the kernel picks a free port (no race between finding a
port and binding it); werkzeug prints the port it got (`` * Running on http://127.0.0.1:PORT``)
and :class:`LocalS3` reads it from the server's output. That output (werkzeug logs one line per
request) goes to a pipe that a thread drains, keeping only the last lines for error messages.

The server's credentials and region come from its own environment (``AWS_*`` set for the
subprocess only, the config and credentials files pointed at ``/dev/null``), and the clients made
here pass theirs explicitly: nothing depends on ``~/.aws``.

moto has no fault injection of its own (its ``/moto-api/*`` endpoints reset state, seed ids, set
canned results for a few services and configure batch/lambda; nothing makes S3 answer 500s or
drop connections): :mod:`ringload.bench.netproxy` does that, between a client and this server.

Werkzeug's development server closes the connection after every response (it sends
``Connection: close``); the proxy can hide that from the client (see ``Proxy(keep_alive=...)``).
"""

from __future__ import annotations

import collections
import http.client
import logging
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

from .procfs import process_cpu_seconds

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
KEY = SECRET = "testing"
REGION = "us-east-1"

_RUNNING = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")
_TAIL_LINES = 40


# The server dies with the process that started it (Linux: PR_SET_PDEATHSIG), so a test run
# or a script killed mid-way leaves no server behind; then it runs as `python -m moto.server`.
_LAUNCH = """
import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit(0)
sys.argv[0] = "moto.server"
runpy.run_module("moto.server", run_name="__main__", alter_sys=True)
"""


class LocalS3Error(RuntimeError):
    """The local S3 server did not start, or did not answer as expected."""


def _server_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "MOTO_PORT"}
    env.update(
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PYTHONUNBUFFERED="1",
    )
    if port:
        env["MOTO_PORT"] = str(port)
    return env


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key/parts`` -> ``("bucket", "key/parts")``."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError(f"an s3:// URL needs a bucket and a key: {url!r}")
    return bucket, key


class LocalS3:
    """moto's S3 server on 127.0.0.1, started by the constructor, stopped by :meth:`close`
    (or leaving the ``with`` block).

    ``port=0`` lets the kernel choose. Raises :class:`LocalS3Error`, with the tail of the
    server's output, when the server does not answer HTTP within ``startup_timeout_s``;
    ``startup_s`` is how long it took (about 0.3 s).
    """

    def __init__(self, port: int = 0, *, startup_timeout_s: float = 30.0):
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._port: int | None = None
        self._port_known = threading.Event()
        self._client = None
        self._final_cpu: float | None = None
        self._closed = False
        started = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(os.getpid()), "-H", HOST, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_server_env(port),
        )
        self._drain = threading.Thread(target=self._drain_output, name="s3local-output", daemon=True)
        self._drain.start()
        try:
            self._wait_ready(started + startup_timeout_s)
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - started
        log.debug("moto S3 server pid %d on %s, up in %.2f s", self.pid, self.endpoint_url, self.startup_s)

    # -- the process -----------------------------------------------------------------------

    def _drain_output(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            self._tail.append(raw.decode("utf-8", "replace").rstrip())
            if self._port is None:
                m = _RUNNING.search(raw)
                if m:
                    self._port = int(m.group(1))
                    self._port_known.set()
        self._port_known.set()  # EOF: the server is gone; wake the waiter

    def _fail(self, why: str) -> LocalS3Error:
        tail = "\n".join(self._tail) or "(no output)"
        return LocalS3Error(f"moto's S3 server {why}; its output ends with:\n{tail}")

    def _wait_ready(self, deadline: float) -> None:
        if not self._port_known.wait(max(0.0, deadline - time.monotonic())):
            raise self._fail("printed no port in time")
        if self._port is None:
            raise self._fail(f"exited with status {self._proc.wait(5)} before listening")
        while True:
            try:
                self._request("GET", "/", timeout=1.0)
                return
            except OSError as exc:
                if self._proc.poll() is not None:
                    raise self._fail(f"exited with status {self._proc.returncode}") from exc
                if time.monotonic() >= deadline:
                    raise self._fail(f"does not answer HTTP on port {self._port}: {exc}") from exc
            self._proc_gone_or(0.05)

    def _proc_gone_or(self, seconds: float) -> None:
        try:
            self._proc.wait(seconds)
        except subprocess.TimeoutExpired:
            pass

    def _request(self, method: str, path: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalS3Error("the server has no port yet")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def running(self) -> bool:
        return self._proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (after :meth:`close`: in all)."""
        if self._final_cpu is not None:
            return self._final_cpu
        cpu = process_cpu_seconds(self.pid)
        if cpu is None:
            raise LocalS3Error(f"the server process {self.pid} is gone")
        return cpu

    def output_tail(self) -> str:
        """The last lines the server printed (startup messages, then one line per request)."""
        return "\n".join(self._tail)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the server: SIGTERM, then SIGKILL after ``timeout_s``; reaps it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._proc.poll() is None:
            self._final_cpu = process_cpu_seconds(self.pid)
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("moto S3 server %d ignored SIGTERM for %.0f s; killing it", self.pid, timeout_s)
                self._proc.kill()
                self._proc.wait(timeout_s)
        self._drain.join(timeout_s)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._final_cpu is None:
            self._final_cpu = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- clients and data ------------------------------------------------------------------

    def storage_options(self, endpoint_url: str | None = None, **extra) -> dict:
        """Keyword arguments for ``s3fs.S3FileSystem`` / fsspec's ``storage_options`` that reach
        this server (or ``endpoint_url``, e.g. a proxy in front of it). ``extra`` is added;
        a ``client_kwargs`` there is merged into the one here."""
        opts: dict = {
            "key": KEY,
            "secret": SECRET,
            "endpoint_url": endpoint_url or self.endpoint_url,
            "client_kwargs": {"region_name": REGION},
        }
        for k, v in extra.items():
            opts[k] = {**opts[k], **v} if k == "client_kwargs" else v
        return opts

    @property
    def client(self):
        """A boto3 S3 client of this server, made on first use (from a session that reads no
        AWS config or credentials files)."""
        if self._client is None:
            import boto3
            import botocore.session

            core = botocore.session.Session()
            core.set_config_variable("config_file", os.devnull)
            core.set_config_variable("credentials_file", os.devnull)
            self._client = boto3.session.Session(botocore_session=core).client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=REGION,
                aws_access_key_id=KEY,
                aws_secret_access_key=SECRET,
            )
        return self._client

    def make_bucket(self, name: str) -> None:
        self.client.create_bucket(Bucket=name)

    def upload(self, local_path: str | os.PathLike, url: str) -> str:
        """Copies one local file to ``s3://bucket/key``; returns the URL."""
        bucket, key = split_s3_url(url)
        self.client.upload_file(os.fspath(local_path), bucket, key)
        return url

    def upload_dir(self, local_dir: str | os.PathLike, bucket: str, prefix: str = "") -> list[str]:
        """Copies every file under ``local_dir`` to ``s3://bucket/prefix/<relative path>``;
        returns their URLs, sorted."""
        root = pathlib.Path(local_dir)
        prefix = prefix.strip("/")
        urls = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = path.relative_to(root).as_posix()
            urls.append(self.upload(path, f"s3://{bucket}/{prefix + '/' if prefix else ''}{key}"))
        return urls

    def reset(self) -> None:
        """Forgets every bucket and object (moto's ``POST /moto-api/reset``)."""
        status, body = self._request("POST", "/moto-api/reset")
        if status != 200:
            raise LocalS3Error(f"POST /moto-api/reset answered {status}: {body[:200]!r}")
