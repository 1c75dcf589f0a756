import json
import logging
import math
import os

import time

import numpy as np
import pytest
from helpers import assert_same_batches, check_exact, collect, wait_gone

import ringload
from ringload import ConfigError
from ringload._samples import _clip_frames, _fps_starts, random_resized_boxes


def test_exact_frames_every_sample_once(engine_videos):
    from ringload.probe import probe

    size = (40, 56)
    with ringload.VideoLoader(
        engine_videos, batch_size=16, size=size, crop="none", sampling="strict", drop_last=False, num_workers=2, seed=3
    ) as loader:
        batches = collect(loader)
        stats = loader.stats()
    total = sum(probe(p).num_frames for p in engine_videos)
    assert len(batches) == math.ceil(total / 16)
    seen = [(v, f) for b in batches for v, f in zip(b["video"].tolist(), b["frame"].tolist())]
    assert len(seen) == total and len(set(seen)) == total
    assert batches[0]["frames"].shape == (16, 3, 40, 56) and batches[0]["frames"].dtype == np.uint8
    assert check_exact(batches, engine_videos, size) == total
    assert stats["images_per_s"] > 0 and stats["ring_bytes"] == stats["num_slots"] * stats["slot_bytes"]
    assert stats["decoded_frames"] >= total


def test_exact_frames_real_videos(videos_dir):
    names = ["mmaction2_test.avi", "bear-vp9-odd-dimensions.webm", "chaplin.mp4", "roadtrip-vp92-10bit.webm", "decord_corrupted.mp4"]
    paths = [str(videos_dir / n) for n in names]
    size = (36, 48)
    with ringload.VideoLoader(paths, batch_size=24, size=size, crop="none", sampling="strict", num_workers=2, seed=1) as loader:
        batches = collect(loader, limit=6)
    assert check_exact(batches, paths, size) == 6 * 24
    # decord_corrupted.mp4: only the 28 frames that decode are ever sampled.
    for b in batches:
        assert (b["frame"][b["video"] == 4] < 28).all()


def test_same_batches_for_any_worker_count_with_crops_and_flips(engine_videos):
    kw = dict(batch_size=12, size=(32, 32), crop="random_resized", scale=(0.3, 1.0), hflip=True, sampling="bounded", seed=11)
    with ringload.VideoLoader(engine_videos, num_workers=1, **kw) as one:
        a = collect(one, limit=8)
    with ringload.VideoLoader(engine_videos, num_workers=3, prefetch_batches=2, **kw) as three:
        b = collect(three, limit=8)
    assert_same_batches(a, b)
    # Another seed gives other batches.
    with ringload.VideoLoader(engine_videos, num_workers=2, **{**kw, "seed": 12}) as other:
        c = collect(other, limit=2)
    assert not np.array_equal(a[0]["video"], c[0]["video"]) or not np.array_equal(a[0]["frames"], c[0]["frames"])


def test_strict_batches_are_the_same_for_a_deep_and_a_shallow_window(engine_videos):
    # A deep window shares GOP walks between many batches; it changes when frames are
    # decoded, never what a batch holds.
    kw = dict(batch_size=8, size=(24, 32), crop="random_resized", hflip=True, sampling="strict", seed=3, num_workers=2)
    with ringload.VideoLoader(engine_videos, prefetch_batches=2, **kw) as shallow:
        a = collect(shallow, limit=6)
        assert shallow.stats()["window_batches"] == 2
    with ringload.VideoLoader(engine_videos, prefetch_batches=40, **kw) as deep:
        b = collect(deep, limit=6)
        assert deep.stats()["window_batches"] == 40
    assert_same_batches(a, b)


def test_hflip_mirrors_exactly_the_drawn_samples(engine_videos):
    kw = dict(batch_size=16, size=(24, 40), crop="center", sampling="strict", seed=5, num_workers=2)
    with ringload.VideoLoader(engine_videos, hflip=False, **kw) as plain:
        a = collect(plain, limit=3)
    with ringload.VideoLoader(engine_videos, hflip=True, **kw) as flipped:
        b = collect(flipped, limit=3)
    flips = 0
    for x, y in zip(a, b):
        assert np.array_equal(x["video"], y["video"]) and np.array_equal(x["frame"], y["frame"])
        for r in range(len(x["video"])):
            if np.array_equal(x["frames"][r], y["frames"][r]):
                continue
            assert np.array_equal(x["frames"][r][:, :, ::-1], y["frames"][r])
            flips += 1
    assert 8 <= flips <= 40  # about half of 48


def _reference_rrc(W, H, draws, scale, ratio):
    """torchvision RandomResizedCrop.get_params, scalar, fed with the same uniforms."""
    area = W * H
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for a in range(10):
        u = draws[4 * a : 4 * a + 4]
        target_area = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= W and 0 < h <= H:
            i = int(u[2] * (H - h + 1))
            j = int(u[3] * (W - w + 1))
            return j, i, w, h
    in_ratio = W / H
    if in_ratio < min(ratio):
        w = W
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = H
        w = int(round(h * max(ratio)))
    else:
        w, h = W, H
    return (W - w) // 2, (H - h) // 2, w, h


def test_random_resized_boxes_match_torchvision_algorithm():
    rng = np.random.default_rng(0)
    n = 500
    W = rng.integers(16, 2000, n)
    H = rng.integers(16, 2000, n)
    u = rng.random((n, 40))
    for scale, ratio in [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (3 / 4, 4 / 3)), ((0.99, 1.0), (3.0, 4.0))]:
        got = random_resized_boxes(W, H, u, scale, ratio)
        for r in range(n):
            assert tuple(got[r]) == _reference_rrc(int(W[r]), int(H[r]), u[r], scale, ratio)
    # Extreme ratio forces the fallback on some frames.
    got = random_resized_boxes(np.array([100]), np.array([10]), np.full((1, 40), 0.5), (0.99, 1.0), (0.1, 0.2))
    assert tuple(got[0]) == _reference_rrc(100, 10, np.full(40, 0.5), (0.99, 1.0), (0.1, 0.2))


def test_clips_and_segments(engine_videos):
    size = (24, 32)
    with ringload.VideoLoader(
        engine_videos, sample="clips", clip_len=4, frame_stride=2, batch_size=6, size=size, crop="none",
        sampling="bounded", num_workers=2, seed=2,
    ) as clips:
        cb = collect(clips, limit=3)
    assert cb[0]["frames"].shape == (6, 4, 3, 24, 32)
    for b in cb:
        assert (np.diff(b["frame"], axis=1) == 2).all()
    check_exact(cb, engine_videos, size, clip_axis=True)

    from ringload.probe import probe

    n = [probe(p).num_frames for p in engine_videos]
    with ringload.VideoLoader(
        engine_videos, sample="segments", num_segments=3, batch_size=2, size=size, crop="none", sampling="strict",
        num_workers=2, drop_last=False,
    ) as seg:
        sb = collect(seg)
    assert sorted(v for b in sb for v in b["video"].tolist()) == list(range(len(engine_videos)))
    for b in sb:
        for v, f in zip(b["video"].tolist(), b["frame"]):
            parts = np.arange(4) * n[v] // 3
            assert ((f >= parts[:3]) & (f < parts[1:])).all()
    check_exact(sb, engine_videos, size, clip_axis=True)


def test_fps_clips_pick_frames_by_timestamp():
    # Variable frame rate: 10 frames at 0.1 s, then 10 at 0.05 s.
    pts = np.concatenate([np.arange(10) * 0.1, 1.0 + np.arange(10) * 0.05])
    assert _clip_frames(pts, 0, 5, 10.0).tolist() == [0, 1, 2, 3, 4]
    assert _clip_frames(pts, 8, 4, 10.0).tolist() == [8, 9, 10, 12]
    assert _clip_frames(pts, 10, 3, 20.0).tolist() == [10, 11, 12]
    # A start is valid when its clip's last time is at or before the last frame's pts (1.45 s).
    assert _fps_starts(pts, 4, 10.0) == 14  # pts[13] = 1.15 <= 1.45 - 0.3 + eps < pts[14]


def test_fps_clips_in_loader(engine_videos):
    with ringload.VideoLoader(
        engine_videos[:2], sample="clips", clip_len=3, fps=12.5, batch_size=4, size=(16, 16), crop="none",
        sampling="strict", num_workers=1,
    ) as loader:
        b = collect(loader, limit=2)
    for x in b:
        assert (np.diff(x["frame"], axis=1) == 2).all()  # both videos are 25 fps
        assert np.allclose(np.diff(x["pts"], axis=1), 0.08)


def test_decoders_are_spawned_without_torch(engine_videos):
    with ringload.VideoLoader(engine_videos, batch_size=4, size=(16, 16), num_workers=2) as loader:
        next(iter(loader))
        # The first batch can come from one decoder while the other is still starting: wait
        # (bounded) for both handshakes rather than race them.
        deadline = time.monotonic() + 60
        while not all(d["ready"] for d in loader.stats()["decoders"]):
            assert time.monotonic() < deadline, f"decoders not ready after 60 s: {loader.stats()['decoders']}"
            time.sleep(0.05)
        decs = loader.stats()["decoders"]
        pids = loader.stats()["decoder_pids"]
        assert len(decs) == 2 and all(d["ready"] for d in decs)
        assert all(d["torch_loaded"] is False for d in decs)
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert b"multiprocessing.spawn" in f.read()  # spawned, never forked
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
            assert "libtorch" not in maps and "libcuda" not in maps
    assert wait_gone(pids) == []


def test_labels_from_manifest_and_paths(engine_videos, tmp_path):
    manifest = tmp_path / "m.jsonl"
    names = ["walk", "run", "walk", "jump"]
    with open(manifest, "w") as f:
        for p, lab in zip(engine_videos, names):
            f.write(json.dumps({"path": p, "label": lab}) + "\n")
    with ringload.VideoLoader(str(manifest), batch_size=8, size=(16, 16), num_workers=1, sampling="strict") as loader:
        b = next(iter(loader))
        classes = loader.source.class_names
    assert b.labels is not None and b.labels.dtype.is_floating_point is False
    for v, lab, path in zip(b.video_index.tolist(), b.labels.tolist(), b.paths):
        assert classes[lab] == names[v]
        assert os.path.samefile(path, engine_videos[v])


def test_len_drop_last_and_short_last_batch(engine_videos):
    from ringload.probe import probe

    total = sum(probe(p).num_frames for p in engine_videos[:2])
    with ringload.VideoLoader(engine_videos[:2], batch_size=7, size=(16, 16), num_workers=1, drop_last=False,
                              sampling="sequential") as loader:
        assert len(loader) == math.ceil(total / 7)
        batches = collect(loader)
    assert len(batches) == math.ceil(total / 7)
    assert sum(len(b["video"]) for b in batches) == total
    assert batches[-1]["frames"].shape[0] == total - 7 * (len(batches) - 1)
    # Sequential: file order.
    order = [(v, f) for b in batches for v, f in zip(b["video"].tolist(), b["frame"].tolist())]
    assert order == sorted(order)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(sample="tubes"), "sample"),
        (dict(crop="random"), "crop"),
        (dict(scale=(0.5, 2.0)), "scale"),
        (dict(fps=10), "fps"),
        (dict(sample="segments"), "num_segments"),
        (dict(rank=1), "world_size"),
        (dict(rank=2, world_size=2), "rank"),
        (dict(on_error="ignore"), "on_error"),
        (dict(size=None), "size"),
        (dict(device="tpu"), "device"),
    ],
)
def test_config_errors_name_the_argument(kwargs, word, engine_videos):
    with pytest.raises(ConfigError, match=word):
        ringload.VideoLoader(engine_videos, **kwargs)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_rss_flat_over_20_epochs(engine_videos):
    with ringload.VideoLoader(engine_videos[1:3], batch_size=8, size=(32, 32), num_workers=2, sampling="strict") as loader:
        pids = [os.getpid(), *loader.stats()["decoder_pids"]]
        samples = []
        for epoch in range(20):
            loader.set_epoch(epoch)
            for _ in loader:
                pass
            samples.append(sum(_rss_kib(p) for p in pids))
        assert loader.stats()["decoder_restarts"] == 0
    # After warm-up (epochs 0-4), growth over the next 15 epochs stays under 8 MiB in total.
    growth = max(samples[5:]) - samples[4]
    assert growth < 8 * 1024, f"RSS grew by {growth} KiB: {samples}"


def test_sequential_decodes_each_frame_about_once(engine_videos):
    from helpers import SPECS
    from ringload.probe import probe

    total = sum(probe(p).num_frames for p in engine_videos)
    with ringload.VideoLoader(engine_videos, batch_size=16, size=(16, 16), num_workers=2, sampling="sequential",
                              drop_last=False) as loader:
        n = len(collect(loader))
        decoded = loader.stats()["decoded_frames"]
    # Warm readers continue from GOP to GOP; at worst a GOP split between two batches (and
    # two decoders) is walked twice, once per batch.
    assert total <= decoded <= total + n * max(s[5] for s in SPECS)


def test_fps_clips_on_a_variable_frame_rate_file(videos_dir):
    from ringload.probe import probe

    path = str(videos_dir / "mv_with_2_top_shots.mp4")  # VFR: 33-42 ms frame intervals
    pts = probe(path).pts_seconds
    size = (24, 32)
    with ringload.VideoLoader([path], sample="clips", clip_len=4, fps=10.0, batch_size=4, size=size, crop="none",
                              sampling="strict", num_workers=1, seed=3) as loader:
        batches = collect(loader, limit=3)
    for b in batches:
        for row, times in zip(b["frame"], b["pts"]):
            start = pts[row[0]]
            for j, f in enumerate(row.tolist()):
                # The frame on screen at start + j / fps: the last one shown at or before it.
                assert pts[f] <= start + j / 10.0 + 1e-6
                assert f == len(pts) - 1 or pts[f + 1] > start + j / 10.0 + 1e-6
            assert np.array_equal(times, pts[row])
    check_exact(batches, [path], size, clip_axis=True)


def test_decoders_forgetting_video_indexes_is_invisible(engine_videos, monkeypatch):
    """Decoders keep a bounded cache of index entries read from the mapped file; re-reading is invisible."""
    from ringload import _protocol

    kw = dict(batch_size=8, size=(16, 16), sampling="strict", seed=9, num_workers=1)
    with ringload.VideoLoader(engine_videos, **kw) as loader:
        ref = collect(loader, limit=6)
    init = _protocol.DecoderOptions.__init__
    # max_open, info_cache, threads, orientation, storage
    assert init.__defaults__[:4] == (4, 256, 1, "display")
    monkeypatch.setattr(init, "__defaults__", (4, 1, 1, "display", *init.__defaults__[4:]))
    assert _protocol.DecoderOptions().info_cache == 1
    with ringload.VideoLoader(engine_videos, **kw) as loader:
        got = collect(loader, limit=6)
        assert loader.stats()["failed_samples"] == 0
    assert_same_batches(ref, got)


def test_chunk_len_for_gop_rule():
    from ringload.plan import DEFAULT_CHUNK_LEN, MAX_AUTO_CHUNK_LEN, chunk_len_for_gop

    # Whole GOPs where they fit: 64 rounds up to 70 for GOP 10, 256 down to 250 for GOP 250.
    assert chunk_len_for_gop(10) == 70
    assert chunk_len_for_gop(30) == 120
    assert chunk_len_for_gop(250) == 250
    assert chunk_len_for_gop(300) == MAX_AUTO_CHUNK_LEN
    assert chunk_len_for_gop(29.5) == 118
    assert chunk_len_for_gop(float("nan")) == DEFAULT_CHUNK_LEN
    # The rule's purpose: a four-GOP chunk reads at >= 0.85 of sequential speed in the
    # throughput model C / (C + (G - 1) / 2), wherever no cap binds.
    for gop in (12, 20, 30):
        c = chunk_len_for_gop(gop)
        assert c / (c + (gop - 1) / 2) >= 0.85


def test_bounded_default_chunk_len_follows_the_data_gop(tmp_path):
    from ringload.plan import chunk_len_for_gop
    from ringload.synth import make_video

    paths = []
    for i in range(3):  # enough batches of 8 for a 120-frame chunk to spread over
        paths.append(str(tmp_path / f"g{i}.mp4"))
        make_video(paths[-1], width=64, height=48, fps=30, seconds=12, gop=30, bframes=0, seed=i)
    assert chunk_len_for_gop(30) == 120
    kw = dict(batch_size=32, size=(16, 16), num_workers=1)
    with ringload.VideoLoader(paths, max_per_chunk=16, **kw) as loader:
        assert (loader.stats()["chunk_len"], loader.stats()["max_per_chunk"]) == (120, 16)
    with ringload.VideoLoader(paths, **kw) as loader:
        # Tiny batches: a chunk's whole window fits the default ring at m = 1; the plan then
        # shortens the chunk to what 33 batches of one sample per chunk can hold.
        s = loader.stats()
        assert s["max_per_chunk"] == 1 and "fits the default ring" in s["bounded_rule"]
        assert s["chunk_len"] == loader._plan().chunk_len <= 120
        assert (s["design_effect_bound"], s["effective_batch_size"]) == (1.0, 32.0)
    with ringload.VideoLoader(paths, min_effective_batch=8, **kw) as loader:
        s = loader.stats()
        assert (s["max_per_chunk"], s["design_effect_bound"], s["effective_batch_size"]) == (4, 4.0, 8.0)
    with ringload.VideoLoader(paths, chunk_len=5, **kw) as loader:
        assert loader.stats()["chunk_len"] == 5
    with ringload.VideoLoader(paths, sampling="strict", **kw) as loader:
        assert loader.stats()["chunk_len"] is None


@pytest.mark.parametrize(("seconds", "names"), [(5, 40), (60, 4)])
def test_bounded_defaults_on_the_tables_shapes_are_the_rows_it_picked(tmp_path, seconds, names):
    # docs/sampling.md's table (GOP 30, batch 128 at 224x224, 5 s and 60 s videos) picked
    # C = 120 and M = 4 on both shapes: the rule, fed by the index of such data, must too.
    # (The rule reads the GOP and the output size, not the source's, so small frames do.)
    from ringload.synth import make_video

    src = str(tmp_path / "v.mp4")
    make_video(src, width=64, height=48, fps=30, seconds=seconds, gop=30, bframes=2, seed=seconds)
    paths = []
    for i in range(names):  # enough frames for a chunk's 31 batches of 128
        paths.append(str(tmp_path / f"n{i}.mp4"))
        os.symlink(src, paths[-1])
    with ringload.VideoLoader(paths, batch_size=128, size=(224, 224), num_workers=1) as loader:
        s = loader.stats()
        assert (s["chunk_len"], s["max_per_chunk"]) == (120, 4), s["bounded_rule"]
        assert (s["design_effect_bound"], s["effective_batch_size"]) == (4.0, 32.0)
        assert loader._plan().chunk_len == 120


@pytest.mark.parametrize("sampling", ["strict", "bounded"])
def test_num_workers_0_decodes_in_this_process_with_the_same_batches(engine_videos, sampling):
    kw = dict(batch_size=8, size=(24, 32), crop="random_resized", hflip=True, sampling=sampling, seed=4)
    with ringload.VideoLoader(engine_videos, num_workers=2, **kw) as loader:
        ref = collect(loader)
    with ringload.VideoLoader(engine_videos, num_workers=0, **kw) as loader:
        got = collect(loader)
        st = loader.stats()
    assert st["num_workers"] == 0 and st["decoder_pids"] == [] and st["tasks"] > 0
    assert_same_batches(ref, got)


def test_ring_size_changes_only_when_frames_are_decoded(engine_videos):
    kw = dict(batch_size=8, size=(24, 32), crop="random_resized", hflip=True, sampling="strict", seed=6, num_workers=2)
    with ringload.VideoLoader(engine_videos, prefetch_batches=2, **kw) as loader:
        shallow = collect(loader)
    with ringload.VideoLoader(engine_videos, **kw) as loader:  # the default budget: the whole epoch fits
        deep = collect(loader)
        st = loader.stats()
    from ringload import _engine

    assert st["window_batches"] == _engine.MAX_STRICT_DEPTH > len(deep)  # the whole epoch is in the window
    assert_same_batches(shallow, deep)


def test_a_second_loader_takes_the_cores_the_first_left(engine_videos, caplog):
    from ringload import _engine

    caplog.set_level(logging.WARNING, logger="ringload._engine")
    kw = dict(batch_size=4, size=(16, 16), sampling="strict")
    with ringload.VideoLoader(engine_videos, **kw) as train:
        with ringload.VideoLoader(engine_videos, **dict(kw, sampling="sequential")) as val:
            cores = _engine.usable_cores()
            first, second = train.stats()["num_workers"], val.stats()["num_workers"]
            assert first == cores and second == max(1, cores - first)
            assert val.stats()["decoder_threads"] == max(1, cores // second)
    assert any("other loaders" in r.getMessage() and "num_workers" in r.getMessage() for r in caplog.records)
    with ringload.VideoLoader(engine_videos, **kw) as again:  # the others are closed: all cores again
        assert again.stats()["num_workers"] == _engine.usable_cores()
