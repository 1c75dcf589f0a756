"""Acceptance: for every real test video, probe() counts the frames that decode and
read_frames() returns exactly the frames of a sequential decode (pixels and timestamps)."""

import random

import av
import numpy as np
import pytest

import ringload
from ringload.probe import probe

# Decoded frame counts of the default (best) video stream, from ../shared/videos/SOURCES.md
# (PyAV 18.1). nasa_13013.mp4 defaults to its larger, longer stream 3.
DECODED = {
    "nasa_13013.mp4": 390,
    "mmaction2_test.avi": 164,
    "mmaction2_test.mp4": 300,
    "bear-vp9-odd-dimensions.webm": 30,
    "roadtrip-vp92-10bit.webm": 72,
    "hdr10-av1.mp4": 127,
    "sample_av1.mp4": 30,
    "dolbyVision-hdr.MOV": 4,
    "mv_with_2_top_shots.mp4": 53,
    "portrait_4k60.mp4": 18,
    "sample_rotate_and_reflect.mp4": 30,
    "bbb_2500ms.ts": 58,
    "hls_cea608_sd-hls0000000000.ts": 58,
    "androidx_sample.flv": 30,
    "bbb_176x144_128kbps_15fps_h263.3gp": 15,
    "sowt-with-video.mov": 100,
    "sample_fragmented.mp4": 30,
    "trim_optimization_failure.mp4": 167,
    "sample_with_increasing_timestamps_320w_240h.mp4": 932,
    "big_buck_bunny_0_30.webm": 720,
    "chaplin.mp4": 241,
    "cockatoo.mp4": 280,
    "bikes.mp4": 250,
    "carphone_pristine.mp4": 120,
    "flipping_a_pancake.mkv": 310,
    "decord_corrupted.mp4": 28,
}

# Non-default video streams: (file, stream) -> decoded frames.
OTHER_STREAMS = {("nasa_13013.mp4", 0): 325, ("mv_with_2_top_shots.mp4", 1): 2}

DEFAULT_STREAM = {"nasa_13013.mp4": 3}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("index-cache")


def test_every_video_is_listed(videos_dir):
    present = sorted(p.name for p in videos_dir.iterdir() if p.suffix != ".md")
    assert present == sorted(DECODED)


def _check_indices(n, keyframes, seed):
    rng = random.Random(seed)
    idx = {0, n - 1}
    for k in keyframes:
        idx.update({max(0, int(k) - 1), int(k)})
    idx.update(rng.randrange(n) for _ in range(20))
    return idx


def _reference(path, stream, checked):
    """Plain PyAV sequential decode: frame count, timestamps of every frame, RGB of the checked ones."""
    frames, pts, dts = {}, [], []
    with av.open(str(path)) as c:
        st = [s for s in c.streams if s.index == stream][0]
        try:
            for i, fr in enumerate(c.decode(st)):
                pts.append(fr.pts)
                dts.append(fr.dts)
                if i in checked:
                    frames[i] = fr.to_ndarray(format="rgb24")
        except av.InvalidDataError:
            pass  # decord_corrupted.mp4: what decodes before the error is the video
        tb = st.time_base
    # Presentation timestamps as FFmpeg's best effort would give them: the pts where they
    # increase, else (AVI with packed B-frames, whose pts are decode-order) the dts.
    use = pts if all(p is not None for p in pts) and all(b > a for a, b in zip(pts, pts[1:])) else dts
    return len(pts), use, frames, tb


def _assert_reads_match(path, stream, cache_dir, seed=0):
    info = probe(path, stream=stream, cache=cache_dir)
    n = info.num_frames
    assert n > 0
    checked = _check_indices(n, info.keyframes, seed)
    count, ref_ts, ref_frames, tb = _reference(path, info.stream, checked)
    assert n == count, f"{path.name}: probe says {n} frames, a sequential decode gives {count}"
    assert info.time_base == tb
    assert info.pts.dtype == np.int64 and info.pts_seconds.dtype == np.float64
    # Every frame's timestamp equals the decoder's (where the decoder gives one).
    for i, t in enumerate(ref_ts):
        if t is not None:
            assert info.pts[i] == t, f"{path.name}: frame {i} pts {info.pts[i]} != decoded {t}"
    assert np.all(np.diff(info.pts) > 0)
    np.testing.assert_allclose(info.pts_seconds, info.pts * float(tb), rtol=0, atol=1e-9)
    assert np.all(np.diff(info.keyframes) > 0) and info.keyframes.min() >= 0 and info.keyframes.max() < n

    order = sorted(checked)
    random.Random(seed + 1).shuffle(order)
    order = order + order[:3]  # repeats are allowed and served from the same decode
    # Read in chunks so that 4K files hold few frames at a time.
    chunk = 9 if info.width * info.height > 4_000_000 else len(order)
    for s in range(0, len(order), chunk):
        part = order[s : s + chunk]
        got = ringload.read_frames(path, part, stream=stream)
        assert got.data.shape == (len(part), 3, info.height, info.width)
        assert got.data.dtype.is_floating_point is False and str(got.data.dtype) == "torch.uint8"
        assert got.indices.tolist() == part
        for k, i in enumerate(part):
            frame = got.data[k].permute(1, 2, 0).numpy()
            assert np.array_equal(frame, ref_frames[i]), f"{path.name}: frame {i} differs from the sequential decode"
            assert got.pts_seconds[k].item() == info.pts_seconds[i]
        if chunk == len(order):
            # One call over the whole file: every GOP is decoded at most once.
            assert got.decoded_frames <= n, f"{path.name}: decoded {got.decoded_frames} frames for a {n}-frame file"
    return info


@pytest.mark.parametrize("name", sorted(DECODED))
def test_probe_and_read_match_sequential_decode(name, cache_dir, videos_dir):
    path = videos_dir / name
    info = _assert_reads_match(path, None, cache_dir)
    assert info.num_frames == DECODED[name]
    assert info.stream == DEFAULT_STREAM.get(name, 0)


@pytest.mark.parametrize("name,stream", sorted(OTHER_STREAMS))
def test_other_video_streams_can_be_chosen(name, stream, cache_dir, videos_dir):
    info = _assert_reads_match(videos_dir / name, stream, cache_dir, seed=5)
    assert info.stream == stream
    assert info.num_frames == OTHER_STREAMS[(name, stream)]


def test_corrupted_tail_reads_up_to_the_last_decodable_frame(videos_dir):
    path = videos_dir / "decord_corrupted.mp4"
    got = ringload.read_frames(path, [27, 0, 26])
    assert got.data.shape[0] == 3
    with pytest.raises(ringload.FrameIndexError, match="decord_corrupted.mp4"):
        ringload.read_frames(path, [5, 28])
    with pytest.raises(ringload.FrameIndexError, match="decord_corrupted.mp4"):
        ringload.read_frames(path, [49])
