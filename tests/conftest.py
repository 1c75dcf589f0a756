"""Shared fixtures: where the real test videos are, the cuda marker, hypothesis profiles."""

from __future__ import annotations

import os
import pathlib

import pytest
from hypothesis import HealthCheck, settings

REPO = pathlib.Path(__file__).resolve().parent.parent
VIDEOS = pathlib.Path(os.environ.get("RINGLOAD_TEST_VIDEOS", REPO.parent / "shared" / "videos"))

# CI must be deterministic: no deadlines (a shared 2-core machine is noisy), derandomised.
settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_runtest_setup(item):
    if "cuda" in item.keywords and not _has_cuda():
        if os.environ.get("RINGLOAD_REQUIRE_CUDA") == "1":
            pytest.fail("RINGLOAD_REQUIRE_CUDA=1 but torch.cuda.is_available() is False")
        pytest.skip("needs a CUDA GPU (set RINGLOAD_REQUIRE_CUDA=1 to make this a failure)")


@pytest.fixture(scope="session", autouse=True)
def private_index_cache(tmp_path_factory):
    """Every test (and every process it starts) indexes into a cache of this session, never
    the user's ~/.cache/ringload; tests of the cache itself set their own."""
    path = tmp_path_factory.mktemp("index-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RINGLOAD_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def engine_videos(tmp_path_factory) -> list[str]:
    """Four small synthetic videos (helpers.SPECS), made once per session."""
    from helpers import make_dataset

    return make_dataset(tmp_path_factory.mktemp("engine_videos"))


@pytest.fixture(scope="session")
def videos_dir() -> pathlib.Path:
    if not VIDEOS.is_dir():
        pytest.fail(f"test videos not found at {VIDEOS}; set RINGLOAD_TEST_VIDEOS")
    return VIDEOS


@pytest.fixture(scope="session")
def second_user():
    """(uid, gid) of a throwaway unprivileged user, created for this session and removed after."""
    import pwd
    import secrets
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create a second local user")
    name = "rltest" + secrets.token_hex(4)
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    try:
        pw = pwd.getpwnam(name)
        yield pw.pw_uid, pw.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


# -- local object storage: moto's S3 server on 127.0.0.1, and a fault/latency proxy ----------


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server in a subprocess for the session
    (:class:`ringload.bench.s3local.LocalS3`); skipped where moto[server] is not installed."""
    import importlib.util

    for module in ("moto", "werkzeug", "boto3"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs moto[server] for a local S3 server ({module} is not installed; the test extra has it)")
    from ringload.bench.s3local import LocalS3

    with LocalS3() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server):
    """(name, storage_options) of a fresh, empty bucket on the session's S3 server."""
    import uuid

    name = f"test-{uuid.uuid4().hex[:24]}"
    s3_server.make_bucket(name)
    return name, s3_server.storage_options()


@pytest.fixture
def s3_proxy(s3_server):
    """A :class:`ringload.bench.netproxy.Proxy` in front of the session's S3 server, no faults
    and no latency until the test sets them; closed after the test."""
    from ringload.bench.netproxy import Proxy

    with Proxy("127.0.0.1", s3_server.port) as proxy:
        yield proxy
