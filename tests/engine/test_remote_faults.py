"""A bucket that fails: 500s, connections dropped mid-body and responses stalled past the
timeout, injected by a proxy between the decoders and a real S3 server. Retries that
succeed give the batches of a fault-free run; retries that run out give a typed error
naming the URL and the byte range; nothing hangs and no shared memory is left behind."""

from __future__ import annotations

import os

import pytest
from helpers import assert_same_batches, collect, make_dataset, ringload_shm

import ringload

pytestmark = pytest.mark.slow

KW = dict(sample="clips", clip_len=4, sampling="strict", batch_size=6, size=(48, 48), num_workers=2, seed=5,
          timeout_s=120)  # fmt: skip


@pytest.fixture(scope="module")
def fault_bucket(s3_server, tmp_path_factory):
    paths = make_dataset(tmp_path_factory.mktemp("fault-videos"))
    s3_server.make_bucket("ringload-faults")
    urls = [s3_server.upload(p, f"s3://ringload-faults/{os.path.basename(p)}") for p in paths]
    return paths, urls


def _run(urls, opts, **kw):
    with ringload.VideoLoader(urls, storage_options=opts, **{**KW, **kw}) as loader:
        return collect(loader), loader.stats()


@pytest.mark.parametrize(
    "fault", [dict(fail_share=0.3), dict(drop_share=0.25), dict(stall_share=0.15, stall_s=20.0)], ids=["500", "drop", "stall"]
)
def test_retried_faults_give_the_fault_free_batches(fault, fault_bucket, s3_server, s3_proxy):
    paths, urls = fault_bucket
    with ringload.VideoLoader(paths, **KW) as loader:
        ref = collect(loader)
    opts = s3_server.storage_options(endpoint_url=s3_proxy.endpoint_url)
    before = ringload_shm()
    for name, value in fault.items():
        setattr(s3_proxy, name, value)
    got, stats = _run(urls, opts, remote_retries=12, remote_timeout_s=1.5, remote_cache_bytes=0)
    assert_same_batches(ref, got)
    c = s3_proxy.counters()
    assert c["failed"] + c["dropped"] + c["stalled"] > 0, c
    assert stats["remote"]["retries"] > 0
    assert ringload_shm() == before


def test_a_bucket_that_always_fails_raises_a_typed_error_naming_url_and_range(fault_bucket, s3_server, s3_proxy):
    _, urls = fault_bucket
    opts = s3_server.storage_options(endpoint_url=s3_proxy.endpoint_url)
    before = ringload_shm()
    with ringload.VideoLoader(urls, storage_options=opts, remote_retries=1, remote_timeout_s=2.0, **KW) as loader:
        s3_proxy.fail_share = 1.0  # indexed already: the decoders' reads fail
        with pytest.raises(ringload.RemoteReadError) as err:
            collect(loader)
    msg = str(err.value)
    assert "s3://ringload-faults/" in msg and "attempts failed" in msg
    assert "remote_retries" in msg
    assert ringload_shm() == before


def test_stalls_past_the_timeout_never_hang(fault_bucket, s3_server, s3_proxy):
    _, urls = fault_bucket
    opts = s3_server.storage_options(endpoint_url=s3_proxy.endpoint_url)
    with ringload.VideoLoader(urls, storage_options=opts, remote_retries=0, remote_timeout_s=1.0, on_error="skip",
                              **KW) as loader:  # fmt: skip
        s3_proxy.stall_share, s3_proxy.stall_s = 1.0, 30.0
        with pytest.raises((ringload.RemoteReadError, ringload.ConfigError, ringload.WorkerError)):
            collect(loader)  # every video quarantined: the loader says so instead of waiting
        assert loader.stats()["quarantined"]
