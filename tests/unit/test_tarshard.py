"""_tarshard: listing the videos of WebDataset-style tar shards as byte ranges, with labels and text."""

import bz2
import gzip
import io
import json
import logging
import lzma
import os
import pathlib
import tarfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringload._tarshard import (
    SIDECAR_LIMIT,
    Member,
    member_path,
    parse_member_path,
    scan_shard,
    scan_shards,
)
from ringload.errors import ConfigError, VideoOpenError

LONG_DIR = "clips/" + "a-very-long-directory-name-" * 5  # > 100 characters with the file name
FMT = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}


def _write_tar(path, members, fmt=tarfile.PAX_FORMAT):
    """members: (name, bytes) in tar order; returns path as str."""
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return str(path)


def _fake_video(i, n=3000):
    return bytes((i * 7 + j) % 251 for j in range(n))


def _sample_members():
    meta = {"label": ["cat", "dog"], "url": "http://x", "fps": 29.97, "ok": True, "n": 5, "nested": {"a": 1}}
    return [
        ("s/000.mp4", _fake_video(0)),
        ("s/000.cls", b" 3\n"),
        ("s/000.txt", "a dog runs — fast 🐕".encode()),
        ("s/001.json", json.dumps(meta).encode()),
        ("s/001.webm", _fake_video(1, 4097)),
        ("s/002.json", json.dumps({"caption": "only metadata"}).encode()),  # no video: skipped
        (LONG_DIR + "/003.mp4", _fake_video(3, 512)),
        (LONG_DIR + "/003.json", json.dumps({"label": 7}).encode()),
        ("004.seg.mp4", _fake_video(4, 0)),
        ("004.cls", b"tabby cat\n"),
        ("004.json", json.dumps({"label": 1}).encode()),  # .cls wins
    ]


class Counting:
    """A file object that counts the bytes handed out by read."""

    def __init__(self, f):
        self.f, self.bytes_read, self.reads = f, 0, 0

    def read(self, n=-1):
        b = self.f.read(n)
        self.bytes_read += len(b)
        self.reads += 1
        return b

    def seek(self, *a):
        return self.f.seek(*a)

    def tell(self):
        return self.f.tell()


@pytest.mark.parametrize("fmt", sorted(FMT))
def test_members_labels_meta_and_skipped(tmp_path, fmt, caplog):
    members = _sample_members()
    shard = _write_tar(tmp_path / "shard.tar", members, FMT[fmt])
    with caplog.at_level(logging.WARNING, logger="ringload"), open(shard, "rb") as f:
        out = scan_shard(f, shard)
    data = dict(members)
    assert [m.key for m in out.members] == ["s/000", "s/001", LONG_DIR + "/003", "004"]
    assert [m.name for m in out.members] == ["s/000.mp4", "s/001.webm", LONG_DIR + "/003.mp4", "004.seg.mp4"]
    assert len(LONG_DIR + "/003.mp4") > 100
    with open(shard, "rb") as f:
        for m in out.members:
            assert m.shard == shard and m.size == len(data[m.name])
            f.seek(m.offset)
            assert f.read(m.size) == data[m.name]
    assert out.labels == [3, ["cat", "dog"], 7, "tabby cat"]
    assert out.meta[0] == {"txt": "a dog runs — fast 🐕", "key": "s/000"}
    assert out.meta[1] == {"url": "http://x", "fps": 29.97, "ok": True, "n": 5, "key": "s/001"}
    assert out.meta[2] == {"key": LONG_DIR + "/003"}
    assert out.skipped == [(shard, "s/002")] and out.errors == []
    assert len(out) == 4
    assert any(shard in r.getMessage() and "1 key(s)" in r.getMessage() for r in caplog.records)


def test_sidecars_need_not_be_adjacent_and_labels_can_be_off(tmp_path):
    shard = _write_tar(tmp_path / "x.tar", [("a.json", b'{"cls": 2, "label": 9}'), ("b.mp4", b"B"),
                                            ("a.mp4", b"A"), ("b.txt", b"bee")])  # fmt: skip
    with open(shard, "rb") as f:
        out = scan_shard(f, shard, label_key="cls")
    assert [m.key for m in out.members] == ["b", "a"]  # tar order of the videos
    assert out.labels == [None, 2]
    assert out.meta == [{"txt": "bee", "key": "b"}, {"label": 9, "key": "a"}]
    with open(shard, "rb") as f:
        assert scan_shard(f, shard, label_key=None).labels == [None, None]


def test_links_dirs_and_odd_names_are_not_samples(tmp_path):
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tf:
        d = tarfile.TarInfo("d")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name in ("d/real.mp4", "d/._real.mp4", "d/noext"):
            ti = tarfile.TarInfo(name)
            ti.size = 1
            tf.addfile(ti, io.BytesIO(b"v"))
        link = tarfile.TarInfo("d/link.mp4")
        link.type, link.linkname = tarfile.SYMTYPE, "real.mp4"
        tf.addfile(link)
    with open(path, "rb") as f:
        out = scan_shard(f, str(path))
    assert [m.name for m in out.members] == ["d/real.mp4"]
    assert sorted(k for _, k in out.skipped) == ["d/._real.mp4", "d/link", "d/noext"]


def test_two_videos_for_one_key_is_an_error_naming_both(tmp_path):
    shard = _write_tar(tmp_path / "dup.tar", [("k.mp4", b"1"), ("k.webm", b"2")])
    with open(shard, "rb") as f, pytest.raises(VideoOpenError, match=r"'k\.mp4' and 'k\.webm'") as ei:
        scan_shard(f, shard)
    assert ei.value.path == shard
    shard = _write_tar(tmp_path / "dup2.tar", [("k.mp4", b"1"), ("k.json", b"{}"), ("k.json", b"{}")])
    with open(shard, "rb") as f, pytest.raises(VideoOpenError, match=r"'k\.json' appears twice"):
        scan_shard(f, shard)


@pytest.mark.parametrize(
    "sidecar, match",
    [
        (("k.json", b"{nope"), "'k.json' is not valid JSON"),
        (("k.json", b"[1, 2]"), "'k.json' holds a JSON list"),
        (("k.json", b'{"label": 1.5}'), "field 'label' is '1.5'"),
        (("k.json", b'{"label": true}'), "field 'label'"),
        (("k.txt", b"\xff\xfe"), "'k.txt' is not UTF-8"),
        (("k.txt", b"x" * (SIDECAR_LIMIT + 1)), "'k.txt' is 1048577 bytes, over the"),
    ],
)
def test_bad_sidecars_name_shard_and_member(tmp_path, sidecar, match):
    shard = _write_tar(tmp_path / "bad.tar", [("k.mp4", b"v"), sidecar])
    with open(shard, "rb") as f, pytest.raises(VideoOpenError, match=match) as ei:
        scan_shard(f, shard)
    assert str(ei.value).startswith(shard)


_NAME = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from("/.:é漢"), min_size=1).filter(
    lambda s: "::" not in s and not s.endswith(":")
)
_SHARD = st.sampled_from(["/data/x.tar", "s3://b/x.tar", "simplecache::s3://b/y 1.tar", ":odd", "https://h/a.tar?x=1"])


@given(name=_NAME, shard=_SHARD | _NAME)
def test_member_path_round_trips(name, shard):
    p = member_path(shard, name)
    assert p == f"tar://{name}::{shard}"
    assert parse_member_path(p) == (shard, name)


@pytest.mark.parametrize("path", ["/data/x.mp4", "s3://b/x.tar", "tar://x.mp4", "tar://::/x.tar", "tar://a::", "",
                                  "file://tar://a::b", None])  # fmt: skip
def test_parse_member_path_is_none_for_other_paths(path):
    assert parse_member_path(path) is None


@pytest.mark.parametrize("name", ["", "a::b.mp4", "a.mp4:"])
def test_member_path_refuses_names_it_cannot_spell(name):
    with pytest.raises(ConfigError, match="rename it"):
        member_path("x.tar", name)


def test_member_path_opens_with_fsspec(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    members = [("d/a b.mp4", b"first"), ("d/é.mp4", b"second")]
    shard = _write_tar(tmp_path / "x.tar", members)
    with open(shard, "rb") as f:
        out = scan_shard(f, shard)
    for m, (_, data) in zip(out.members, members):
        assert isinstance(m, Member) and parse_member_path(m.path) == (shard, m.name)
        with fsspec.open(m.path, "rb") as g:
            assert g.read() == data


def test_compressed_shards_are_refused(tmp_path):
    plain = _write_tar(tmp_path / "x.tar", [("a.mp4", b"v")])
    for kind, compress in (("gzip", gzip.compress), ("bzip2", bz2.compress), ("xz", lzma.compress)):
        gz = tmp_path / f"{kind}.tar"  # compressed under a .tar name: found by its magic
        gz.write_bytes(compress(pathlib.Path(plain).read_bytes()))
        with open(gz, "rb") as f, pytest.raises(ConfigError, match="uncompressed tar") as ei:
            scan_shard(f, str(gz), on_error="skip")  # not a broken shard: a setting to change, never skipped
        assert str(gz) in str(ei.value) and f"({kind})" in str(ei.value)
    odd = _write_tar(tmp_path / "odd.tar", [("BZh91-intro.mp4", b"v"), ("PK.mp4", b"w")])  # not magic
    with open(odd, "rb") as f:
        assert len(scan_shard(f, odd)) == 2
    named = str(tmp_path / "z.tar.gz")  # named compressed: refused by its name
    with open(plain, "rb") as f, pytest.raises(ConfigError, match="uncompressed tar"):
        scan_shard(f, named)
    with pytest.raises(ConfigError, match="uncompressed tar"):
        scan_shards([plain, str(gz)], on_error="skip", progress=False)


def _cuts(shard):
    """Sizes to cut the shard to: inside headers, inside data, just before the end marker."""
    with open(shard, "rb") as f:
        out = scan_shard(f, shard)
    last = out.members[-1]
    end = last.offset + -(-last.size // 512) * 512
    return [0, 100, 512, out.members[1].offset - 300, out.members[1].offset + 1, last.offset + last.size - 1, end,
            end + 511]  # fmt: skip


@pytest.mark.parametrize("fmt", sorted(FMT))
def test_truncated_or_corrupt_shard_is_a_video_open_error(tmp_path, fmt):
    whole = _write_tar(tmp_path / "whole.tar", _sample_members(), FMT[fmt])
    raw = pathlib.Path(whole).read_bytes()
    cuts = _cuts(whole)
    for n in cuts:
        cut = tmp_path / f"cut{n}.tar"
        cut.write_bytes(raw[:n])
        with open(cut, "rb") as f, pytest.raises(VideoOpenError, match="not a readable tar shard") as ei:
            scan_shard(f, str(cut))
        assert ei.value.path == str(cut) and "re-create it" in str(ei.value)
    # A garbled header in the middle (tarfile alone would end the listing there quietly).
    with open(whole, "rb") as f:
        second = scan_shard(f, whole).members[1]
    bad = bytearray(raw)
    header = second.offset - 512
    bad[header : header + 512] = b"\x01" * 512
    (tmp_path / "bad.tar").write_bytes(bytes(bad))
    with open(tmp_path / "bad.tar", "rb") as f, pytest.raises(VideoOpenError, match="corrupt|not a readable"):
        scan_shard(f, str(tmp_path / "bad.tar"))


def test_on_error_skip_reports_the_shard_and_goes_on(tmp_path, caplog):
    good = _write_tar(tmp_path / "good.tar", [("a.mp4", b"A"), ("a.cls", b"1")])
    (tmp_path / "cut.tar").write_bytes(pathlib.Path(good).read_bytes()[:700])
    cut = str(tmp_path / "cut.tar")
    missing = str(tmp_path / "missing.tar")
    with open(cut, "rb") as f, caplog.at_level(logging.WARNING, logger="ringload"):
        out = scan_shard(f, cut, on_error="skip")
    assert out.members == [] and out.errors[0][0] == cut and "not a readable tar shard" in out.errors[0][1]
    assert any(cut in r.getMessage() for r in caplog.records)
    out = scan_shards([good, cut, missing, good], on_error="skip", progress=False)
    assert [m.shard for m in out.members] == [good, good] and out.labels == [1, 1]
    assert [s for s, _ in out.errors] == [cut, missing]
    with pytest.raises(VideoOpenError, match="missing.tar"):
        scan_shards([good, missing], progress=False)
    with pytest.raises(ConfigError, match="on_error"):
        scan_shards([good], on_error="ignore")


def test_scan_shards_concatenates_in_order_through_open_fn(tmp_path, caplog):
    shards = [_write_tar(tmp_path / f"{i:05d}.tar", [(f"{i}/{j}.mp4", _fake_video(i + j, 10)) for j in range(3)]
                         + [(f"{i}/x.json", b"{}")]) for i in range(4)]  # fmt: skip
    opened = []

    def open_fn(s):
        opened.append(s)
        return open(s, "rb")

    with caplog.at_level(logging.WARNING, logger="ringload"):
        out = scan_shards(shards[::-1], open_fn, progress=True)
    assert opened == shards[::-1]
    assert [m.name for m in out.members] == [f"{i}/{j}.mp4" for i in (3, 2, 1, 0) for j in range(3)]
    assert [d["key"] for d in out.meta] == [m.key for m in out.members]
    assert len(out.skipped) == 4
    summary = [r.getMessage() for r in caplog.records if "are not samples" in r.getMessage()]
    assert len(summary) == 1 and "4 key(s)" in summary[0] and "4 of 4 shard(s)" in summary[0]


def test_scan_reads_headers_not_video_data(tmp_path):
    mib = 1 << 20
    members = []
    for i in range(20):
        members += [(f"{i:03d}.mp4", os.urandom(mib)), (f"{i:03d}.json", json.dumps({"label": i}).encode())]
    shard = _write_tar(tmp_path / "big.tar", members)
    size = os.path.getsize(shard)
    with open(shard, "rb", buffering=0) as raw:
        f = Counting(raw)
        out = scan_shard(f, shard)
    assert out.labels == list(range(20))
    assert f.bytes_read < 0.05 * size, (f.bytes_read, size)
    assert f.bytes_read < 200 * 1024  # headers, sidecars and one byte per member end


class Window(io.RawIOBase):
    """Bytes [offset, offset + size) of a file, seen as a whole file."""

    def __init__(self, f, offset, size):
        self.f, self.offset, self.size, self.pos = f, offset, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        n = max(0, min(len(b), self.size - self.pos))
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def seek(self, pos, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self):
        return self.pos


def _frames(src):
    import av

    with av.open(src) as c:
        return [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]


def test_a_real_video_decodes_from_its_byte_range(tmp_path):
    import av

    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            img = np.zeros((48, 64, 3), np.uint8)
            img[:, :, 0] = i * 25
            img[i * 4 : i * 4 + 8, i * 5 : i * 5 + 8] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = video.read_bytes()
    shard = _write_tar(tmp_path / "real.tar", [("v/000.txt", b"x" * 777), ("v/000.mp4", data),
                                               ("v/001.mp4", _fake_video(1))])  # fmt: skip
    with open(shard, "rb") as f:
        m = scan_shard(f, shard).members[0]
    assert m.offset % 512 == 0 and m.offset > 512 and m.size == len(data)
    want = _frames(str(video))
    assert len(want) == 10
    with open(shard, "rb") as f:
        got = _frames(Window(f, m.offset, m.size))
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
