"""`ringload index SOURCE --out FILE`, `--shard i/N`, `ringload index merge`: one index file per dataset."""

import os
import pathlib
import subprocess

import pytest

from helpers import REPO, assert_same_info, console_script
from ringload._indexfile import IndexFile, IndexFileError
from ringload.probe import probe


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([*console_script(), "index", *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def dataset(tmp_path, videos_dir):
    d = tmp_path / "data"
    d.mkdir()
    for name in ("bikes.mp4", "carphone_pristine.mp4", "flipping_a_pancake.mkv", "mv_with_2_top_shots.mp4",
                 "bbb_2500ms.ts"):  # fmt: skip
        os.symlink(videos_dir / name, d / name)
    (d / "empty.mp4").write_bytes(b"")
    return d


def test_out_writes_one_index_file_equal_to_probe(dataset, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "data.ringindex"
    res = _cli(str(dataset), "--out", str(out), "--workers", "2", "--cache-dir", str(cache))
    assert res.returncode == 1  # empty.mp4 failed: listed, recorded, exit status 1
    assert "indexed 5 of 6 videos" in res.stdout and "empty.mp4: empty file" in res.stdout
    assert f"wrote {out}: 6 videos (1 unusable, recorded)" in res.stdout
    assert "files/s" in res.stdout and "indexing" in res.stderr
    idx = IndexFile.open(out)
    paths = sorted(str(p) for p in dataset.iterdir())
    assert [idx.path(i) for i in range(len(idx))] == paths
    for i, p in enumerate(paths):
        if p.endswith("empty.mp4"):
            assert idx.info(i) is None and idx.error(i)[0] == "VideoOpenError"
        else:
            assert_same_info(idx.info(i), probe(p, cache=cache))


def test_shards_merged_equal_a_single_build_byte_for_byte(dataset, tmp_path):
    cache = str(tmp_path / "cache")
    whole = tmp_path / "whole.ringindex"
    _cli(str(dataset), "--out", str(whole), "--cache-dir", cache, "--no-progress")
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.ringindex"
        res = _cli(str(dataset), "--shard", f"{i}/3", "--out", str(part), "--cache-dir", cache, "--no-progress")
        assert f"wrote shard {i}/3 {part}: 2 videos" in res.stdout, res.stdout + res.stderr
        parts.append(str(part))
    merged = tmp_path / "merged.ringindex"
    res = _cli("merge", *reversed(parts), "--out", str(merged))
    assert res.returncode == 0, res.stderr
    assert "merged 3 parts" in res.stdout and "6 videos" in res.stdout
    assert merged.read_bytes() == whole.read_bytes()

    # A shard twice, a shard missing, or a part of another format version: refused, named.
    res = _cli("merge", parts[0], parts[0], parts[1], "--out", str(tmp_path / "x.ringindex"))
    assert res.returncode == 1 and "shard 0/3 is also in" in res.stderr
    res = _cli("merge", parts[0], parts[1], "--out", str(tmp_path / "x.ringindex"))
    assert res.returncode == 1 and "shard(s) 2/3 missing" in res.stderr
    data = bytearray(pathlib.Path(parts[2]).read_bytes())
    data[8] = 99  # the format version field
    old = tmp_path / "old.ringindex"
    old.write_bytes(bytes(data))
    res = _cli("merge", parts[0], parts[1], str(old), "--out", str(tmp_path / "x.ringindex"))
    assert res.returncode == 1 and str(old) in res.stderr and "version 99" in res.stderr
    assert not (tmp_path / "x.ringindex").exists()


def test_merge_refuses_a_video_in_two_parts(dataset, tmp_path):
    cache = str(tmp_path / "cache")
    a, b = tmp_path / "a.ringindex", tmp_path / "b.ringindex"
    _cli(str(dataset), "--shard", "0/2", "--out", str(a), "--cache-dir", cache, "--no-progress")
    # Another 2-way split of the same source whose part 1 is really part 0 again.
    data = a.read_bytes().replace(b'"shard":[0,2]', b'"shard":[1,2]')
    import json
    import struct
    import zlib

    _m, v, hlen, _c = struct.unpack_from("<8sIII", data)
    hb = data[20 : 20 + hlen]
    b.write_bytes(struct.pack("<8sIII", b"RINGIDX\0", v, hlen, zlib.crc32(hb)) + data[20:])
    json.loads(hb)
    res = _cli("merge", str(a), str(b), "--out", str(tmp_path / "x.ringindex"))
    assert res.returncode == 1 and "appear in several parts" in res.stderr


def test_shard_needs_out_and_a_valid_spec(dataset):
    assert "--shard needs --out" in _cli(str(dataset), "--shard", "0/2").stderr
    assert "need 0 <= i < N" in _cli(str(dataset), "--shard", "2/2", "--out", "x.ringindex").stderr


def test_an_interrupted_build_resumes_without_redoing_finished_files(dataset, tmp_path, monkeypatch):
    """Stopped after 2 files, the rerun probes only the other 4 (the per-file cache keeps the 2)."""
    import sys

    from ringload._indexfile_build import build_index
    from ringload._source import resolve_source

    src = resolve_source(str(dataset))
    cache = tmp_path / "cache"
    out = tmp_path / "d.ringindex"
    done = []

    def interrupt(res):
        done.append(res.path)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(src, out, cache=cache, workers=1, on_result=interrupt)
    assert not out.exists()
    rp = sys.modules["ringload.probe"]
    built = []
    real_build = rp._build
    monkeypatch.setattr(rp, "_build", lambda path, *a, **k: built.append(path) or real_build(path, *a, **k))
    build_index(src, out, cache=cache, workers=1)
    assert sorted(built) == sorted(p for p in src.paths[2:] if not p.endswith("empty.mp4"))
    assert len(IndexFile.open(out)) == 6


def test_a_damaged_index_file_is_a_clear_cli_and_loader_error(tmp_path):
    bad = tmp_path / "bad.ringindex"
    bad.write_bytes(b"RINGIDX\0" + os.urandom(100))
    with pytest.raises(IndexFileError, match="bad.ringindex"):
        IndexFile.open(bad)
