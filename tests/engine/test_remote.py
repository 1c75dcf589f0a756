"""Videos in a real S3 server (moto's, on 127.0.0.1) and in tar shards: loader batches equal
those of the same files on local disk, bit for bit, in every sampling mode."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from helpers import assert_same_batches, collect, make_dataset, ringload_shm

import ringload

pytestmark = pytest.mark.slow

# Real files of several containers (mp4 with B-frames, Matroska, WebM VP8, AVI, MPEG-TS).
REAL = ["bikes.mp4", "flipping_a_pancake.mkv", "mmaction2_test.avi", "hls_cea608_sd-hls0000000000.ts",
        "bear-vp9-odd-dimensions.webm"]  # fmt: skip

MODES = {
    "frames-bounded": dict(sample="frames", sampling="bounded", batch_size=16),
    "frames-strict": dict(sample="frames", sampling="strict", batch_size=16),
    "clips-strict": dict(sample="clips", clip_len=4, frame_stride=2, sampling="strict", batch_size=6),
    "clips-per-video-bounded": dict(sample="clips", clip_len=8, clips_per_video=2, sampling="bounded", batch_size=4),
    "views-sequential": dict(sample="clips", clip_len=4, clips_per_video=2, sampling="sequential", crop="three",
                             size=(48, 48), batch_size=6),
    "segments": dict(sample="segments", num_segments=3, sampling="strict", batch_size=4),
}  # fmt: skip


@pytest.fixture(scope="module")
def local_videos(tmp_path_factory, videos_dir) -> list[str]:
    folder = tmp_path_factory.mktemp("remote-videos")
    paths = make_dataset(folder)
    for name in REAL:
        shutil.copy(videos_dir / name, folder / name)
        paths.append(str(folder / name))
    return paths


@pytest.fixture(scope="module")
def bucket(s3_server, local_videos):
    name = "ringload-remote"
    s3_server.make_bucket(name)
    urls = [s3_server.upload(p, f"s3://{name}/videos/{os.path.basename(p)}") for p in local_videos]
    return name, urls


def _loader(source, opts=None, **kw):
    args = dict(size=(64, 64), num_workers=2, seed=3, timeout_s=120)
    args.update(kw)
    return ringload.VideoLoader(source, storage_options=opts, **args)


def _batches(source, opts=None, limit=12, **kw):
    with _loader(source, opts, **kw) as loader:
        out = collect(loader, limit)
        return out, loader.stats()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_bucket_batches_equal_local_batches(mode, s3_server, bucket, local_videos):
    _, urls = bucket
    local, _ = _batches(local_videos, **MODES[mode])
    remote, stats = _batches(urls, s3_server.storage_options(), **MODES[mode])
    assert_same_batches(local, remote)
    r = stats["remote"]
    assert r["bytes_fetched"] > 0 and r["requests"] > 0


def test_the_next_task_is_fetched_while_one_decodes(s3_server, bucket, local_videos):
    _, urls = bucket
    kw = dict(sample="frames", sampling="strict", batch_size=16, num_workers=1)
    local, _ = _batches(local_videos, **kw)
    remote, stats = _batches(urls, s3_server.storage_options(), **kw)
    assert_same_batches(local, remote)
    r = stats["remote"]
    # The decoder's second queued task had its GOPs fetched during the first one's decoding.
    assert 0 < r["ahead_requests"] < r["requests"], r


def test_fetches_about_the_bytes_of_the_gops_it_decodes(s3_server, bucket):
    _, urls = bucket
    _, stats = _batches(urls, s3_server.storage_options(), limit=None, sample="frames", sampling="bounded",
                        batch_size=32, remote_cache_bytes=0)  # fmt: skip
    r = stats["remote"]
    assert r["gop_bytes"] > 0
    # Headers, reorder tails and block rounding on top of the GOPs, never whole objects twice over.
    assert r["bytes_fetched"] <= 2.0 * r["gop_bytes"] + 4 * 2**20, r


def test_urls_glob_folder_and_manifest(s3_server, bucket, tmp_path):
    name, urls = bucket
    opts = s3_server.storage_options()
    with _loader(f"s3://{name}/videos/*.mp4", opts, batch_size=4) as a:
        assert a.paths == sorted(u for u in urls if u.endswith(".mp4"))
    with _loader(f"s3://{name}/videos/", opts, batch_size=4) as b:
        assert b.paths == sorted(urls)
    manifest = tmp_path / "train.csv"
    rows = ["path,label"] + [f"videos/{os.path.basename(u)},{i % 3}" for i, u in enumerate(urls)]
    manifest.write_text("\n".join(rows) + "\n")
    s3_server.upload(manifest, f"s3://{name}/train.csv")
    with _loader(f"s3://{name}/train.csv", opts, batch_size=4) as c:
        assert c.paths == urls  # relative to the manifest's folder in the bucket
        batch = next(iter(c))
        assert batch.labels.tolist() == [v % 3 for v in batch.video_index.tolist()]


def test_index_file_in_the_bucket(s3_server, bucket, tmp_path):
    from ringload._indexfile_build import build_index
    from ringload._remote import Storage, using
    from ringload._source import resolve_source

    name, urls = bucket
    opts = s3_server.storage_options()
    out = tmp_path / "data.ringindex"
    with using(Storage(opts)):
        build_index(resolve_source(urls), str(out), workers=1)
    s3_server.upload(out, f"s3://{name}/data.ringindex")
    ref, _ = _batches(urls, opts, sample="clips", clip_len=4, sampling="strict", batch_size=6)
    got, _ = _batches(f"s3://{name}/data.ringindex", opts, sample="clips", clip_len=4, sampling="strict", batch_size=6)
    assert_same_batches(ref, got)


def test_object_changed_after_indexing_is_refused(s3_server, local_videos, tmp_path):
    from ringload._remote import Storage, using

    s3_server.make_bucket("ringload-changed")
    url = s3_server.upload(local_videos[0], "s3://ringload-changed/a.mp4")
    opts = s3_server.storage_options()
    with using(Storage(opts)):
        info = ringload.probe(url, cache=False)
    assert info.file_etag and info.file_size == os.path.getsize(local_videos[0])
    s3_server.upload(local_videos[1], "s3://ringload-changed/a.mp4")  # replaced in place
    from ringload._decode import VideoReader

    with using(Storage(opts)), pytest.raises(ringload.VideoChangedError, match="changed after it was indexed"):
        with VideoReader(url, info) as r:
            r.decode([0], lambda p, f: None)


def test_missing_object_is_quarantined_with_skip(s3_server, local_videos):
    s3_server.make_bucket("ringload-missing")
    urls = [s3_server.upload(p, f"s3://ringload-missing/{os.path.basename(p)}") for p in local_videos[:3]]
    opts = s3_server.storage_options()
    with pytest.raises(ringload.VideoOpenError, match="ringload-missing/nope.mp4"):
        _loader([*urls, "s3://ringload-missing/nope.mp4"], opts, batch_size=4)
    before = ringload_shm()
    with _loader([*urls, "s3://ringload-missing/nope.mp4"], opts, batch_size=4, on_error="skip") as loader:
        assert "s3://ringload-missing/nope.mp4" in loader.stats()["quarantined"]
        next(iter(loader))
    assert ringload_shm() == before


def test_urls_without_the_remote_extra_say_which_to_install(tmp_path):
    code = (
        "import sys; sys.modules['fsspec'] = None\n"
        "import ringload\n"
        "try:\n"
        "    ringload.VideoLoader('s3://bucket/a.mp4')\n"
        "except ringload.ConfigError as e:\n"
        "    print('CONFIG', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "CONFIG" in out.stdout and "ringload[remote]" in out.stdout, out.stdout + out.stderr


# --------------------------------------------------------------------------- tar shards


def _write_shards(folder, videos, per_shard=4):
    """Shards of KEY.ext + KEY.cls (+ KEY.json with a caption); returns (shards, labels by key)."""
    shards, labels = [], {}
    for s in range(0, len(videos), per_shard):
        path = folder / f"shard-{s // per_shard:03d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for i, v in enumerate(videos[s : s + per_shard], s):
                key = f"sample{i:04d}"
                ext = os.path.splitext(v)[1]
                tar.add(v, arcname=key + ext)
                for suffix, data in ((".cls", str(i % 3).encode()), (".json", json.dumps({"caption": f"c{i}"}).encode())):
                    ti = tarfile.TarInfo(key + suffix)
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))
                labels[key] = i % 3
        shards.append(str(path))
    return shards, labels


@pytest.fixture(scope="module")
def shard_data(tmp_path_factory, local_videos, s3_server):
    folder = tmp_path_factory.mktemp("shards")
    shards, labels = _write_shards(folder, local_videos)
    s3_server.make_bucket("ringload-shards")
    urls = [s3_server.upload(p, f"s3://ringload-shards/{os.path.basename(p)}") for p in shards]
    return shards, urls, labels


@pytest.mark.parametrize("mode", ["frames-bounded", "clips-strict", "views-sequential"])
def test_shards_local_and_in_the_bucket_equal_the_extracted_files(mode, shard_data, local_videos, s3_server):
    shards, urls, labels = shard_data
    ref, _ = _batches(local_videos, **MODES[mode])
    local, _ = _batches(shards, **MODES[mode])
    remote, _ = _batches(urls, s3_server.storage_options(), **MODES[mode])
    assert_same_batches(ref, local)
    assert_same_batches(ref, remote)


def test_shard_members_carry_labels_and_captions(shard_data, s3_server):
    _, urls, labels = shard_data
    with _loader(urls, s3_server.storage_options(), batch_size=4, sample="clips", clip_len=2) as loader:
        assert all(p.startswith("tar://sample") and "::s3://ringload-shards/shard-" in p for p in loader.paths)
        b = next(iter(loader))
        for v, lab, cap in zip(b.video_index.tolist(), b.labels.tolist(), b.meta["caption"]):
            key = loader.paths[v].split("://", 1)[1].split(".", 1)[0]
            assert lab == labels[key]
            assert cap == f"c{int(key[6:])}"


def test_a_shard_member_is_read_as_its_byte_range_only(shard_data, local_videos):
    shards, _, _ = shard_data
    info = ringload.probe(f"tar://sample0001.mp4::{shards[0]}", cache=False)
    assert info.data_offset > 0 and info.data_size == os.path.getsize(local_videos[1])
    ref = ringload.probe(local_videos[1], cache=False)
    assert np.array_equal(info.pts, ref.pts) and np.array_equal(info.keyframes, ref.keyframes)
    got = ringload.read_frames(info.path, [0, 5, 17], size=(32, 32))
    want = ringload.read_frames(local_videos[1], [0, 5, 17], size=(32, 32))
    assert np.array_equal(got.data.numpy(), want.data.numpy())


def test_index_file_of_shards_keeps_each_members_byte_range(shard_data, local_videos, tmp_path):
    from ringload._indexfile import IndexFile
    from ringload._indexfile_build import build_index
    from ringload._source import resolve_source

    shards, _, _ = shard_data
    out = tmp_path / "shards.ringindex"
    build_index(resolve_source(shards), str(out), workers=1)
    idx = IndexFile.open(str(out))
    try:
        # A reader that ignored the ranges would decode whole shards: such a reader must refuse the file.
        assert "members" in idx.header["required"]
        assert all(idx.info(i).data_offset > 0 for i in range(len(idx)))
    finally:
        idx.close()
    ref, _ = _batches(local_videos, **MODES["clips-strict"])
    got, _ = _batches(str(out), **MODES["clips-strict"])
    assert_same_batches(ref, got)


def test_cli_indexes_a_bucket_folder_of_shards(shard_data, s3_server, tmp_path):
    from helpers import console_script

    from ringload._indexfile import IndexFile

    _, urls, labels = shard_data
    out = tmp_path / "bucket.ringindex"
    opts = json.dumps(s3_server.storage_options())
    run = subprocess.run([*console_script(), "index", "s3://ringload-shards/", "--storage-options", opts, "--out", str(out),
                          "--no-progress"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    idx = IndexFile.open(str(out))
    try:
        assert len(idx) == len(labels)
        assert all(p.startswith("tar://") and "::s3://ringload-shards/" in p for p in idx.paths())
    finally:
        idx.close()
