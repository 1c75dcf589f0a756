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


def test_credentials_never_show_in_the_decoders_options_repr():
    from ringload._protocol import DecoderOptions
    from ringload._scheduler import SchedulerOptions

    secret = ({"secret": "hunter2"}, 1, 1, 1.0)
    assert "hunter2" not in repr(DecoderOptions(storage=secret))
    assert "hunter2" not in repr(SchedulerOptions(storage=secret))


def test_a_task_on_remote_data_may_take_its_reads_retries():
    from ringload._config import LoaderConfig
    from ringload._engine import remote_budget_s

    cfg = LoaderConfig(remote_retries=3, remote_timeout_s=10.0)
    assert remote_budget_s(cfg, ["/data/a.mp4"]) == 0.0
    # A HEAD and a range request, each with 4 attempts of 10 s and 3 backoffs of at most 2 s,
    # and one timeout waiting for the fetch made ahead of the task.
    assert remote_budget_s(cfg, ["/data/a.mp4", "s3://b/c.mp4"]) == 2 * (4 * 10.0 + 3 * 2.0) + 10.0
    assert remote_budget_s(cfg, ["tar://a.mp4::/data/s.tar"]) > 0


def test_a_remote_index_file_copy_is_reused_only_when_it_is_ours(tmp_path, monkeypatch):
    fsspec = pytest.importorskip("fsspec")
    import pathlib

    from ringload._remote import Storage, local_copy, using

    monkeypatch.setenv("RINGLOAD_CACHE_DIR", str(tmp_path / "cache"))
    fsspec.filesystem("memory").pipe("/ringload-copy/x.ringindex", b"0123456789")
    storage = Storage()
    monkeypatch.setattr(storage, "identity", lambda url, fresh=False: (10, "v1"))
    url = "memory://ringload-copy/x.ringindex"
    with using(storage):
        a = local_copy(url)
        assert pathlib.Path(a).read_bytes() == b"0123456789"
        fetched = storage.stats.bytes_fetched
        assert local_copy(url) == a and storage.stats.bytes_fetched == fetched  # reused
        # A planted symlink of the same name is not followed: the object is fetched again.
        os.unlink(a)
        (tmp_path / "elsewhere").write_bytes(b"forged!!!!")
        os.symlink(tmp_path / "elsewhere", a)
        b = local_copy(url)
        assert pathlib.Path(b).read_bytes() == b"0123456789" and not os.path.islink(b)
        assert storage.stats.bytes_fetched == fetched + 10
