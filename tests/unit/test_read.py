"""Acceptance: for every real test video, probe() counts the frames that decode and
read_frames() returns exactly the frames of a sequential decode (pixels and timestamps)."""

import random

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

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


def _assert_reads_match(path, stream, private_index_cache, seed=0):
    info = probe(path, stream=stream, cache=private_index_cache)
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
        # As coded: the reference is PyAV's own frames (tests/test_orientation.py turns them).
        got = ringload.read_frames(path, part, stream=stream, orientation="coded")
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
def test_probe_and_read_match_sequential_decode(name, private_index_cache, videos_dir):
    path = videos_dir / name
    info = _assert_reads_match(path, None, private_index_cache)
    assert info.num_frames == DECODED[name]
    assert info.stream == DEFAULT_STREAM.get(name, 0)


@pytest.mark.parametrize("name,stream", sorted(OTHER_STREAMS))
def test_other_video_streams_can_be_chosen(name, stream, private_index_cache, videos_dir):
    info = _assert_reads_match(videos_dir / name, stream, private_index_cache, seed=5)
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


# ---------------------------------------------------------------------- GOP accounting


def _encode(path, *, n=60, gop=10, bframes=2, size=(64, 48), open_gop=False):
    """A tiny H.264 video with a fixed GOP and B-frames, each frame a different picture."""
    w, h = size
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:open-gop={int(open_gop)}"
        st.codec_context.options = {"x264-params": params, "loglevel": "error"}
        rng = np.random.default_rng(0)
        for i in range(n):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img[: h // 2] = (i * 4) % 256
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode(None):
            c.mux(pkt)


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("gop") / "gop10.mp4"
    _encode(path)
    return path


def test_each_gop_decoded_at_most_once(gop_video, private_index_cache):
    info = probe(gop_video, cache=private_index_cache)
    assert info.num_frames == 60 and info.keyframes.tolist() == [0, 10, 20, 30, 40, 50]
    # Two frames far apart: a seek to each one's keyframe, not a decode through the gap.
    got = ringload.read_frames(gop_video, [45, 3])
    assert got.decoded_frames <= (3 - 0 + 1) + (45 - 40 + 1) + 2
    # Unsorted, repeated indices inside one GOP: that GOP once.
    got = ringload.read_frames(gop_video, [27, 21, 27, 25])
    assert got.decoded_frames <= 10
    assert got.indices.tolist() == [27, 21, 27, 25]
    assert torch_equal(got.data[0], got.data[2])
    # Every frame in random order: each GOP once, so at most every frame once.
    order = list(range(60))
    random.Random(3).shuffle(order)
    got = ringload.read_frames(gop_video, order)
    assert got.decoded_frames <= 60
    with av.open(str(gop_video)) as c:
        ref = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    for k, i in enumerate(order):
        assert np.array_equal(got.data[k].permute(1, 2, 0).numpy(), ref[i])


def torch_equal(a, b):
    return bool((a == b).all())


def test_open_gop_leading_frames(tmp_path, private_index_cache):
    """Open GOPs: B-frames after a keyframe in decode order that show before it and
    reference the previous GOP. Every frame, alone or all at once, equals the sequential decode."""
    path = tmp_path / "open_gop.mp4"
    _encode(path, open_gop=True, bframes=3)
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        ref = [f.to_ndarray(format="rgb24") for f in c.decode(st)]
    with av.open(str(path)) as c:
        packets = [(p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]
    key_pts = [pts for pts, key in packets if key]
    after_key = [packets[i + 1][0] for i, (pts, key) in enumerate(packets[:-1]) if key and i > 0]
    assert any(a < k for a, k in zip(after_key, key_pts[1:])), "the encoder made no leading frames"
    info = probe(path, cache=private_index_cache)
    assert info.num_frames == 60 and len(info.keyframes) == 6
    order = list(range(60))
    random.Random(0).shuffle(order)
    for i in order[:25]:
        got = ringload.read_frames(path, [i])
        assert np.array_equal(got.data[0].permute(1, 2, 0).numpy(), ref[i]), i
    got = ringload.read_frames(path, order)
    assert got.decoded_frames <= 60
    for k, i in enumerate(order):
        assert np.array_equal(got.data[k].permute(1, 2, 0).numpy(), ref[i]), i


def test_reader_stays_warm_for_sequential_runs(gop_video, private_index_cache):
    from ringload._decode import VideoReader

    info = probe(gop_video, cache=private_index_cache)
    seen = []
    with VideoReader(gop_video, info) as reader:
        reader.decode(range(12, 16), lambda pos, f: seen.append(f.pts))
        before = reader.decoded_frames
        reader.decode(range(16, 24), lambda pos, f: seen.append(f.pts))  # continues, no seek back to 10
        assert reader.decoded_frames - before <= 8 + 2
        reader.decode([5], lambda pos, f: seen.append(f.pts))  # backwards: seeks
    assert seen == [int(info.pts[i]) for i in [*range(12, 24), 5]]


def test_out_of_range_and_empty(gop_video):
    with pytest.raises(ringload.FrameIndexError, match="gop10.mp4") as exc:
        ringload.read_frames(gop_video, [0, 60])
    assert "60 frames" in str(exc.value)
    with pytest.raises(ringload.FrameIndexError):
        ringload.read_frames(gop_video, [-1])
    empty = ringload.read_frames(gop_video, [])
    assert tuple(empty.data.shape) == (0, 3, 48, 64) and tuple(empty.pts_seconds.shape) == (0,)


@pytest.fixture(scope="module")
def gop_reference(gop_video):
    with av.open(str(gop_video)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


@settings(max_examples=30)
@given(calls=hst.lists(hst.lists(hst.integers(0, 59), min_size=1, max_size=12), min_size=1, max_size=4))
def test_reader_any_call_sequence_is_exact(calls, gop_video, gop_reference, private_index_cache):
    """One warm reader, any sequence of calls (unsorted, repeated, backwards): exact frames,
    each position once, and no call decodes more frames than the file has."""
    from ringload._decode import VideoReader

    info = probe(gop_video, cache=private_index_cache)
    with VideoReader(gop_video, info) as reader:
        for indices in calls:
            got = {}

            def sink(pos, frame, got=got):
                assert pos not in got
                got[pos] = frame.to_ndarray(format="rgb24")

            before = reader.decoded_frames
            reader.decode(indices, sink)
            assert sorted(got) == list(range(len(indices)))
            for pos, i in enumerate(indices):
                assert np.array_equal(got[pos], gop_reference[i])
            assert reader.decoded_frames - before <= 60


def test_index_types(gop_video):
    a = ringload.read_frames(gop_video, np.array([3, 1], dtype=np.uint16))
    b = ringload.read_frames(gop_video, (3.0, 1.0))
    c = ringload.read_frames(gop_video, range(3, 0, -2))
    assert a.indices.tolist() == b.indices.tolist() == c.indices.tolist() == [3, 1]
    assert bool((a.data == b.data).all()) and bool((a.data == c.data).all())
    with pytest.raises(ringload.ConfigError, match="integers"):
        ringload.read_frames(gop_video, [1.5])
    with pytest.raises(ringload.ConfigError, match="integers"):
        ringload.read_frames(gop_video, ["3"])


def test_count_rule_reads_by_position_from_the_start(gop_video, private_index_cache):
    """Streams without usable timestamps are read by counting frames from the start."""
    import dataclasses

    from ringload._decode import VideoReader

    info = probe(gop_video, cache=private_index_cache)
    counted = dataclasses.replace(info, timestamps="count", keyframes=np.array([0]))
    with av.open(str(gop_video)) as c:
        ref = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    got = {}
    with VideoReader(gop_video, counted) as reader:
        reader.decode([41, 7, 59], lambda pos, f: got.__setitem__(pos, f.to_ndarray(format="rgb24")))
        reader.decode([2], lambda pos, f: got.__setitem__(3, f.to_ndarray(format="rgb24")))
    for pos, i in enumerate([41, 7, 59, 2]):
        assert np.array_equal(got[pos], ref[i]), i


# ---------------------------------------------------------------------- conversion


CONVERT_FILES = ["sowt-with-video.mov", "cockatoo.mp4", "roadtrip-vp92-10bit.webm", "bear-vp9-odd-dimensions.webm",
                 "trim_optimization_failure.mp4"]


@pytest.mark.parametrize("name", CONVERT_FILES)
def test_convert_into_crop_equals_cropping_the_full_conversion(name, videos_dir):
    from ringload._decode import convert_into

    with av.open(str(videos_dir / name)) as c:
        frame = next(c.decode(c.streams.video[0]))
    w, h = frame.width, frame.height
    full = frame.to_ndarray(format="rgb24")
    for crop in [(0, 0, w, h), (2, 4, w // 2, h // 2), (1, 3, w // 2 + 1, h // 2 + 1), (w - 33, h - 21, 33, 21)]:
        out = np.empty((crop[3], crop[2], 3), np.uint8)
        convert_into(frame, out, crop=crop)
        x, y, cw, ch = crop
        assert np.array_equal(out, full[y : y + ch, x : x + cw]), crop


@pytest.mark.parametrize("name", CONVERT_FILES)
def test_convert_into_resize(name, videos_dir):
    from av.video.reformatter import Interpolation

    from ringload._decode import convert_into

    with av.open(str(videos_dir / name)) as c:
        frame = next(c.decode(c.streams.video[0]))
    out = np.empty((50, 70, 3), np.uint8)
    convert_into(frame, out, size=(50, 70))
    assert np.array_equal(out, frame.to_ndarray(format="rgb24", width=70, height=50, interpolation=Interpolation.AREA))
    # Crop then resize: close to resizing the cropped full-resolution RGB.
    w, h = frame.width, frame.height
    crop = ((w // 8) * 2, (h // 8) * 2, (w // 4) * 2, (h // 4) * 2)
    convert_into(frame, out, crop=crop, size=(50, 70))
    x, y, cw, ch = crop
    rgb = np.ascontiguousarray(frame.to_ndarray(format="rgb24")[y : y + ch, x : x + cw])
    ref = av.VideoFrame.from_ndarray(rgb, format="rgb24").to_ndarray(
        format="rgb24", width=70, height=50, interpolation=Interpolation.AREA
    )
    assert np.abs(out.astype(int) - ref).mean() < 2.0


def test_convert_into_rejects_bad_arguments(videos_dir):
    from ringload._decode import convert_into

    with av.open(str(videos_dir / "carphone_pristine.mp4")) as c:
        frame = next(c.decode(c.streams.video[0]))
    with pytest.raises(ringload.ConfigError, match="out has shape"):
        convert_into(frame, np.empty((10, 10, 3), np.uint8))
    with pytest.raises(ringload.ConfigError, match="does not fit"):
        convert_into(frame, np.empty((10, 10, 3), np.uint8), crop=(170, 0, 10, 10))
    with pytest.raises(ringload.ConfigError, match="size"):
        ringload.read_frames(videos_dir / "carphone_pristine.mp4", [0], size=(0, 5))
    small = ringload.read_frames(videos_dir / "carphone_pristine.mp4", [0, 119], size=(32, 40))
    assert tuple(small.data.shape) == (2, 3, 32, 40)
