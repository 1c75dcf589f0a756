"""Sources made of tar shards and URLs, without a server (local shards, fsspec's memory
file system): rows, labels and per-sample text exactly as the shards hold them."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from ringload import ConfigError
from ringload._source import resolve_source


def _shard(path, samples):
    """samples: [(key, {ext: bytes})]"""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                ti = tarfile.TarInfo(key + ext)
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return str(path)


def test_json_fields_named_like_manifest_columns_are_text_not_ranges_or_weights(tmp_path):
    meta = {"start": 1.0, "end": 0.5, "weight": 0, "caption": "a dog"}
    shard = _shard(tmp_path / "s.tar", [("k0", {".mp4": b"x" * 10, ".json": json.dumps(meta).encode()}),
                                        ("k1", {".mp4": b"y" * 10})])  # fmt: skip
    src = resolve_source(shard)
    assert src.segments is None and src.weights is None
    assert src.meta["start"] == [1.0, None] and src.meta["weight"] == [0, None]
    assert src.meta["caption"] == ["a dog", None]
    assert src.meta["key"] == ["k0", "k1"]


def test_a_shard_listed_twice_gives_its_members_twice_not_four_times(tmp_path):
    shard = _shard(tmp_path / "s.tar", [("a", {".mp4": b"1"}), ("b", {".mp4": b"2"})])
    src = resolve_source([shard, shard])
    assert len(src) == 4
    assert src.paths == [f"tar://a.mp4::{shard}", f"tar://b.mp4::{shard}"] * 2


def test_manifest_members_resolve_their_shard_against_the_manifest_folder(tmp_path):
    (tmp_path / "d").mkdir()
    shard = _shard(tmp_path / "d" / "s.tar", [("a", {".mp4": b"1"})])
    m = tmp_path / "d" / "m.csv"
    m.write_text("path,label\ntar://a.mp4::s.tar,3\n")
    src = resolve_source(str(m))
    assert src.paths == [f"tar://a.mp4::{shard}"]
    m.write_text("path\ns.tar\n")
    with pytest.raises(ConfigError, match=r"line 2: 's.tar' is a tar shard"):
        resolve_source(str(m))


def test_a_bad_shard_in_a_url_glob_is_skipped_with_on_error_skip(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    good = _shard(tmp_path / "good.tar", [("a", {".mp4": b"1" * 100, ".cls": b"2"})])
    import pathlib

    data = pathlib.Path(good).read_bytes()
    fs = fsspec.filesystem("memory")
    fs.pipe("/ringload-skip/0.tar", data)
    fs.pipe("/ringload-skip/1.tar", data[:700])  # cut inside the archive
    with pytest.raises(Exception, match="1.tar"):
        resolve_source("memory://ringload-skip/*.tar")
    src = resolve_source("memory://ringload-skip/*.tar", on_error="skip")
    assert src.paths == [f"tar://a.mp4::{fs.unstrip_protocol('/ringload-skip/0.tar')}"]
    assert src.labels.tolist() == [2]


def test_file_systems_are_kept_per_host_or_bucket():
    pytest.importorskip("fsspec")
    from ringload._remote import Storage

    s = Storage()
    s.filesystem("memory://one/a.mp4")
    s.filesystem("memory://two/b.mp4")
    s.filesystem("memory://one/c.mp4")
    assert sorted(s._fs) == [("memory", "one"), ("memory", "two")]


def test_no_cache_keeps_no_headers_either():
    from ringload._remote import Storage

    assert Storage(cache_bytes=0).cache.header_bytes == 0
    big = Storage(cache_bytes=256 << 20).cache
    assert big.header_bytes * big.header_objects <= big.capacity // 4
