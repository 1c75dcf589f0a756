"""The dataset index file: exact round trip of every real video, compact timestamps, damage."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest

from helpers import assert_same_info
from ringload import _indexfile as IF
from ringload import _indexfile_write as IFW
from ringload.probe import index_paths, probe


@pytest.fixture(scope="module")
def real(videos_dir, tmp_path_factory):
    """(paths, probe results, index file) over every file of the shared videos."""
    cache = tmp_path_factory.mktemp("cache")
    paths = sorted(str(p) for p in videos_dir.iterdir() if p.suffix != ".md")
    results = index_paths(paths, cache=cache, workers=2)
    rows = [r.info if r.info is not None else (r.path, r.error_type, r.reason) for r in results]
    out = tmp_path_factory.mktemp("idx") / "real.ringindex"
    cols, cats = IFW.columns_from_rows(rows)
    IFW.write_index(out, cols, cats)
    return paths, results, cache, out


def test_every_real_video_round_trips_exactly(real):
    paths, results, cache, out = real
    idx = IF.IndexFile.open(out)
    assert len(idx) == len(paths) >= 26
    ok = 0
    for i, (p, r) in enumerate(zip(paths, results)):
        assert idx.path(i) == os.path.abspath(p)
        if r.info is None:
            assert idx.info(i) is None and idx.error(i) == (r.error_type, r.reason)
            continue
        ok += 1
        assert_same_info(idx.info(i), probe(p, cache=cache))
        assert_same_info(idx.info(i), probe(p, cache=False))
    assert ok >= 24


def test_keyframe_byte_positions_point_at_the_keyframe_packets(real, videos_dir):
    import av

    idx = IF.IndexFile.open(real[3])
    i = real[0].index(str(videos_dir / "bikes.mp4"))
    info = idx.info(i)
    assert len(info.keyframe_pos) == len(info.keyframes) and bool(np.all(info.keyframe_pos > 0))
    with av.open(info.path) as c:
        st = c.streams[info.stream]
        key = {int(p.pts): int(p.pos) for p in c.demux(st) if p.is_keyframe and p.pts is not None}
    assert [key[int(info.pts[k])] for k in info.keyframes] == info.keyframe_pos.tolist()


def test_constant_rate_timestamps_are_stored_as_first_and_step(real):
    idx = IF.IndexFile.open(real[3])
    step = idx.column("pts_step")
    cfr = [i for i in range(len(idx)) if idx.ok(i) and step[i] > 0]
    vfr = [i for i in range(len(idx)) if idx.ok(i) and step[i] == 0]
    assert cfr and vfr  # the shared set has both
    assert len(idx.column("pts")) == sum(idx.info(i).num_frames for i in vfr)
    for i in cfr:
        pts = idx.info(i).pts
        rule = (int(step[i]), int(idx.column("pts_step_den")[i]), int(idx.column("pts_round")[i]))
        assert np.array_equal(_rule_pts(rule, int(pts[0]), len(pts)), pts)
    assert any(idx.info(i).path.endswith(".mkv") for i in cfr)  # the rounded-milliseconds rate is compact too


def _rule_pts(rule, first, n):
    p, q, r = rule
    return first + (np.arange(n) * p + r) // q


def test_a_rate_rule_is_used_only_when_every_timestamp_matches():
    assert IFW._rate_rule(np.array([0, 512, 1024, 1536])) == (512, 1, 0)
    odd = np.array([0, 512, 1024, 1537])  # a rational step 1537/3 reproduces it exactly: fine
    assert np.array_equal(_rule_pts(IFW._rate_rule(odd), 0, 4), odd)
    assert IFW._rate_rule(np.array([0, 10, 11, 30, 31]))[0] == 0
    assert IFW._rate_rule(np.array([7])) == (1, 1, 0)
    assert IFW._rate_rule(np.array([3, 3]))[0] == 0
    # 30 fps on Matroska's millisecond time base: rounded, 0 33 67 100 133 ...
    mkv = np.round(np.arange(310) * 1000 / 30).astype(np.int64)
    rule = IFW._rate_rule(mkv)
    assert rule[:2] == (100, 3) and np.array_equal(_rule_pts(rule, 0, 310), mkv)
    # 29.97 fps at 1/90000, and an NTSC rate rounded to ms, starting late.
    for pts in (1234 + np.arange(500) * 3003, 40 + np.floor(np.arange(400) * 1001 / 30).astype(np.int64)):
        rule = IFW._rate_rule(pts)
        assert rule[0] > 0 and np.array_equal(_rule_pts(rule, int(pts[0]), len(pts)), pts)
    vfr = mkv.copy()
    vfr[200] += 1
    assert IFW._rate_rule(vfr)[0] == 0


def test_views_are_read_only_and_zero_copy(real):
    idx = IF.IndexFile.open(real[3])
    kf = idx.column("keyframes")
    assert not kf.flags.writeable and not kf.flags.owndata
    info = next(idx.info(i) for i in range(len(idx)) if idx.ok(i))
    assert not info.keyframes.flags.writeable and not info.pts.flags.writeable


def test_labels_weights_and_meta_are_kept(tmp_path, real):
    paths, results, _, _ = real
    rows = [r.info for r in results if r.info is not None][:3]
    cols, cats = IFW.columns_from_rows(rows, labels=np.array([2, 0, 1]), weights=np.array([0.5, 1, 2]))
    IFW.write_index(tmp_path / "l.ringindex", cols, cats, {"class_names": ["a", "b", "c"]})
    idx = IF.IndexFile.open(tmp_path / "l.ringindex")
    assert idx.column("label").tolist() == [2, 0, 1]
    assert idx.column("weight").tolist() == [0.5, 1.0, 2.0]
    assert idx.meta["class_names"] == ["a", "b", "c"]


def _small(tmp_path, real) -> bytes:
    rows = [r.info for r in real[1] if r.info is not None][:4]
    cols, cats = IFW.columns_from_rows(rows)
    p = tmp_path / "s.ringindex"
    IFW.write_index(p, cols, cats, {"pad": "x" * 100})  # room for _rewrite_header's edits
    return p.read_bytes()


def _rewrite_header(data: bytes, edit) -> bytes:
    _, version, hlen, _ = IF._PREFIX.unpack_from(data)
    header = json.loads(data[IF._PREFIX.size : IF._PREFIX.size + hlen])
    edit(header)
    header["meta"]["pad"] = ""
    hb = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    assert len(hb) <= hlen
    hb = hb + b" " * (hlen - len(hb))  # same length: the data does not move
    return IF._PREFIX.pack(IF.MAGIC, version, hlen, zlib.crc32(hb)) + hb + data[IF._PREFIX.size + hlen :]


def _damages(data: bytes) -> dict[str, bytes]:
    _, _, hlen, _ = IF._PREFIX.unpack_from(data)
    other_version = IF._PREFIX.pack(IF.MAGIC, IF.FORMAT_VERSION + 1, hlen, 0) + data[IF._PREFIX.size :]
    header = json.loads(data[IF._PREFIX.size : IF._PREFIX.size + hlen])
    flipped = bytearray(data)
    flipped[IF._data_start(hlen) + header["columns"]["num_frames"]["offset"]] ^= 0x01  # one frame more
    return {
        "empty": b"",
        "garbage": os.urandom(4096),
        "truncated-prefix": data[:10],
        "truncated-header": data[: IF._PREFIX.size + hlen // 2],
        "truncated-data": data[: len(data) - 100],
        "appended": data + b"\0" * 64,
        "other-version": other_version,
        "header-bit-flip": data[:40] + bytes([data[40] ^ 1]) + data[41:],
        "data-bit-flip": bytes(flipped),
        "needs-a-feature": _rewrite_header(data, lambda h: h.update(required=["base", "tar"])),
        "offset-outside": _rewrite_header(data, lambda h: h["columns"]["pts"].update(offset=1 << 40)),
    }


DAMAGES = ["empty", "garbage", "truncated-prefix", "truncated-header", "truncated-data", "appended", "other-version",
           "header-bit-flip", "data-bit-flip", "needs-a-feature", "offset-outside"]  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_index_files_raise_a_typed_error_naming_the_file(tmp_path, real, damage):
    bad = tmp_path / f"{damage}.ringindex"
    bad.write_bytes(_damages(_small(tmp_path, real))[damage])
    with pytest.raises(IF.IndexFileError) as ei:
        IF.IndexFile.open(bad)
    msg = str(ei.value)
    assert str(bad) in msg and "ringload index" in msg
    if damage == "other-version":
        assert f"version {IF.FORMAT_VERSION + 1}" in msg
    if damage == "needs-a-feature":
        assert "tar" in msg


def test_forged_contents_with_valid_crcs_are_refused(tmp_path, real):
    """Offsets that point past their data, though every CRC matches, are caught by the structure check."""
    rows = [r.info for r in real[1] if r.info is not None][:4]
    cols, cats = IFW.columns_from_rows(rows)
    cols["keyframes"] = cols["keyframes"].copy()
    cols["keyframes"][-1] = 10**9
    IFW.write_index(tmp_path / "f.ringindex", cols, cats)
    with pytest.raises(IF.IndexFileError, match="keyframe outside"):
        IF.IndexFile.open(tmp_path / "f.ringindex")


def test_the_prefix_is_what_the_docs_say(tmp_path, real):
    data = _small(tmp_path, real)
    magic, version, hlen, crc = struct.unpack_from("<8sIII", data)
    assert magic == b"RINGIDX\0" and version == IF.FORMAT_VERSION
    assert zlib.crc32(data[20 : 20 + hlen]) == crc
    header = json.loads(data[20 : 20 + hlen])
    start = (20 + hlen + 63) // 64 * 64
    for name, spec in header["columns"].items():
        arr = np.frombuffer(data, dtype=spec["dtype"], count=int(np.prod(spec["shape"])), offset=start + spec["offset"])
        assert zlib.crc32(arr.tobytes()) == spec["crc32"], name
