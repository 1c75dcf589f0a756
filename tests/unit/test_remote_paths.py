"""Paths and settings of remote storage, without a server: what is a URL, a shard member,
a local file; which storage_options decoders can get; the client options ringload adds."""

from __future__ import annotations

import os

import pytest

from ringload import ConfigError
from ringload import _remote


@pytest.mark.parametrize(
    "path, url, local",
    [
        ("s3://bucket/a.mp4", True, False),
        ("gs://b/c/d.webm", True, False),
        ("https://host/v.mp4", True, False),
        ("tar://k.mp4::s3://b/shard.tar", False, False),
        ("tar://k.mp4::/data/shard.tar", False, False),
        ("/data/a.mp4", False, True),
        ("relative/a.mp4", False, True),
        ("file:///data/a.mp4", False, True),
        ("weird:name.mp4", False, True),
    ],
)
def test_kinds_of_paths(path, url, local):
    assert _remote.is_url(path) is url
    assert _remote.is_local(path) is local


def test_members_split_at_the_first_separator_and_normalise_their_shard():
    assert _remote.split_member("tar://d/k.mp4::s3://b/x.tar") == ("s3://b/x.tar", "d/k.mp4")
    assert _remote.split_member("/a.mp4") is None
    rel = _remote.normalize("tar://k.mp4::shards/x.tar")
    assert rel == f"tar://k.mp4::{os.path.abspath('shards/x.tar')}"
    assert _remote.container_of(rel) == os.path.abspath("shards/x.tar")
    assert _remote.normalize("s3://b/k.mp4") == "s3://b/k.mp4"
    assert _remote.normalize("file:///data/a.mp4") == "/data/a.mp4"


def test_storage_options_must_be_plain_values():
    assert _remote.check_storage_options(None) is None
    ok = {"key": "k", "client_kwargs": {"endpoint_url": "http://127.0.0.1:1", "verify": False}, "n": [1, 2.5, None]}
    assert _remote.check_storage_options(ok) == ok
    with pytest.raises(ConfigError, match="storage_options"):
        _remote.check_storage_options("key=k")
    with pytest.raises(ConfigError, match=r"storage_options\['config'\]=object"):
        _remote.check_storage_options({"config": object()})
    with pytest.raises(ConfigError, match="keys must be str"):
        _remote.check_storage_options({"client_kwargs": {1: "x"}})


def test_s3_clients_get_ringloads_retry_policy_unless_the_user_sets_one():
    opts = _remote._with_defaults("s3", {}, 7.0)
    cfg = opts["config_kwargs"]
    assert cfg["retries"]["total_max_attempts"] == 1  # max_attempts would count retries, not attempts
    assert cfg["connect_timeout"] == cfg["read_timeout"] == 7.0
    mine = _remote._with_defaults("s3", {"config_kwargs": {"read_timeout": 2}}, 7.0)
    assert mine["config_kwargs"]["read_timeout"] == 2
    assert _remote._with_defaults("gs", {"token": "x"}, 7.0) == {"token": "x"}


def test_storage_pickles_as_its_settings():
    import pickle

    s = _remote.Storage({"anon": True}, cache_bytes=1 << 20, retries=5, timeout_s=2.5)
    s.stats.requests = 9
    t = pickle.loads(pickle.dumps(s))
    assert (t.storage_options, t.cache_bytes, t.retries, t.timeout_s) == ({"anon": True}, 1 << 20, 5, 2.5)
    assert t.stats.requests == 0  # counters are per process


def test_versions_come_from_etag_or_version_fields():
    assert _remote._etag({"ETag": '"abc"'}) == "abc"
    assert _remote._etag({"generation": 12}) == "12"
    assert _remote._etag({"size": 3}) == ""
