"""probe(): fields, stream choice, timestamp rules and the on-disk cache."""

import json
import multiprocessing as mp
import os
import pathlib
import sys
from fractions import Fraction

import numpy as np
import pytest

import ringload
from ringload.probe import CACHE_FORMAT, VideoInfo, _fill, _timestamp_rule, _vp8_shown, _vp9_shown, probe

# (file) -> (width, height, codec, pix_fmt, rotation, fps from SOURCES.md)
FIELDS = {
    "bear-vp9-odd-dimensions.webm": (161, 121, "vp9", "yuv420p", 0, 29.97),
    "roadtrip-vp92-10bit.webm": (426, 240, "vp9", "yuv420p10le", 0, 23.976),
    "cockatoo.mp4": (1280, 720, "h264", "yuv444p", 0, 20.0),
    "portrait_4k60.mp4": (3840, 2160, "h264", "yuvj420p", -90, 60.058),
    "dolbyVision-hdr.MOV": (1280, 720, "hevc", "yuv420p10le", -90, 30.0),
    "mv_with_2_top_shots.mp4": (1440, 1080, "hevc", "yuvj420p", 90, 29.877),
    "androidx_sample.flv": (1080, 720, "h264", "yuv420p", 0, 30.30),
    "bbb_176x144_128kbps_15fps_h263.3gp": (176, 144, "h263", "yuv420p", 0, 15.0),
    "mmaction2_test.avi": (320, 240, "mpeg4", "yuv420p", 0, 25.0),
    "sample_av1.mp4": (1080, 720, "av1", "yuv420p", 0, 29.97),
}


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_fields(name, videos_dir, cache):
    w, h, codec, pix_fmt, rot, fps = FIELDS[name]
    info = probe(videos_dir / name, cache=cache)
    assert (info.width, info.height, info.pix_fmt, info.rotation) == (w, h, pix_fmt, rot)
    assert info.codec == codec  # the codec, not the decoder (AV1 decoders are named after a library: libdav1d)
    assert isinstance(info.decoder, str) and info.decoder
    # The average over the decoded timestamps, not the header's claim (FLV says 1000).
    assert info.fps == pytest.approx(fps, rel=0.03)
    assert isinstance(info.time_base, Fraction)
    assert info.path == os.path.abspath(videos_dir / name)
    for arr in (info.pts, info.pts_seconds, info.keyframes):
        assert not arr.flags.writeable
    assert info.duration_seconds == pytest.approx(info.num_frames / info.fps, rel=0.1)


def test_info_pickles_with_read_only_arrays(videos_dir, cache):
    import pickle

    info = probe(videos_dir / "bikes.mp4", cache=cache)
    back = pickle.loads(pickle.dumps(info))
    assert np.array_equal(back.pts, info.pts) and np.array_equal(back.keyframes, info.keyframes)
    assert (back.num_frames, back.time_base, back.timestamps) == (info.num_frames, info.time_base, info.timestamps)
    with pytest.raises(ValueError):
        back.pts[0] = 5
    with pytest.raises(AttributeError):
        back.num_frames = 3


def test_public_names():
    import ringload.probe  # noqa: F401  (importing the module must not rebind the name)

    assert ringload.probe is probe and ringload.VideoInfo is VideoInfo
    assert {"probe", "VideoInfo", "read_frames", "Frames"} <= set(ringload.__all__)


def test_default_stream_is_the_best_video_stream(videos_dir, cache):
    assert probe(videos_dir / "nasa_13013.mp4", cache=cache).stream == 3  # 390 frames beat 325
    assert probe(videos_dir / "mv_with_2_top_shots.mp4", cache=cache).stream == 0  # not the 2-frame stills
    two = probe(videos_dir / "mv_with_2_top_shots.mp4", stream=1, cache=cache)
    assert (two.stream, two.num_frames, two.width, two.height) == (1, 2, 2048, 1536)


def test_attached_picture_is_not_the_video(tmp_path):
    """Cover art (a one-frame stream with the attached_pic disposition) is not a video."""
    import av

    path = tmp_path / "song_with_cover.mp4"
    with av.open(str(path), "w") as c:
        audio = c.add_stream("aac", rate=8000)
        cover = c.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        for pkt in cover.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
            c.mux(pkt)
        for pkt in cover.encode(None):
            c.mux(pkt)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for pkt in [*audio.encode(frame), *audio.encode(None)]:
            c.mux(pkt)
    with pytest.raises(ringload.NoVideoStreamError, match="attached picture") as exc:
        probe(path, cache=False)
    assert str(path) in str(exc.value)


def test_vfr_timestamps_are_exact(videos_dir, cache):
    info = probe(videos_dir / "mv_with_2_top_shots.mp4", cache=cache)
    steps = np.diff(info.pts_seconds)
    assert steps.min() < 0.034 < 0.04 < steps.max()  # really variable (33-42 ms intervals)


def test_timestamp_rules():
    assert _timestamp_rule([0, 1, 2], [None, None, None])[0] == "pts"
    # AVI with packed B-frames: pts out of order, dts in order, last dts missing.
    rule, ts = _timestamp_rule([1, 2, 4, 3, 5], [1, 2, 3, 4, None])
    assert rule == "dts" and ts.tolist() == [1, 2, 3, 4, 5]
    rule, ts = _timestamp_rule([None, 10, 20, None], [None, None, None, None])
    assert rule == "pts" and ts.tolist() == [0, 10, 20, 30]
    assert _timestamp_rule([3, 3, 3], [None, None, None])[0] == "count"
    assert _fill([None, None]) is None


def test_vp8_vp9_shown_frame_bits():
    assert _vp8_shown(bytes([0x10, 0, 0])) == 1 and _vp8_shown(bytes([0x00, 0, 0])) == 0
    # VP9 profile 0: frame_marker=10, profile bits 00, show_existing 0, frame_type, show_frame
    assert _vp9_shown(bytes([0b10000010])) == 1
    assert _vp9_shown(bytes([0b10000000])) == 0
    assert _vp9_shown(bytes([0b10001000])) == 1  # show_existing_frame
    # A superframe of a hidden frame (1 byte) and a shown one (1 byte).
    marker = 0b11000001  # 2 frames, 1 byte per size
    sf = bytes([0b10000000, 0b10000010, marker, 1, 1, marker])
    assert _vp9_shown(sf) == 1


def test_cache_hit_costs_no_decoding(videos_dir, cache, monkeypatch):
    path = videos_dir / "bikes.mp4"
    first = probe(path, cache=cache)
    files = list(pathlib.Path(cache).rglob("*.json"))
    assert len(files) == 1
    entry = json.loads(files[0].read_text())
    assert entry["format"] == CACHE_FORMAT and entry["num_frames"] == first.num_frames

    def boom(*a, **k):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(sys.modules["ringload.probe"], "_build", boom)
    again = probe(path, cache=cache)
    assert again.num_frames == first.num_frames
    assert np.array_equal(again.pts, first.pts) and np.array_equal(again.keyframes, first.keyframes)
    assert np.array_equal(again.pts_seconds, first.pts_seconds)
    assert (again.time_base, again.fps, again.rotation, again.codec) == (first.time_base, first.fps, first.rotation, first.codec)
    # Another stream, or no cache at all, is not a hit.
    with pytest.raises(AssertionError, match="cache was not used"):
        probe(path, stream=0, cache=cache)
    with pytest.raises(AssertionError, match="cache was not used"):
        probe(path, cache=False)


def test_cache_invalidated_by_change_and_corruption(tmp_path, videos_dir, cache, caplog):
    import shutil

    path = tmp_path / "v.mkv"
    shutil.copy(videos_dir / "flipping_a_pancake.mkv", path)
    n = probe(path, cache=cache).num_frames
    (entry,) = pathlib.Path(cache).rglob("*.json")
    entry.write_text('{"format": 1, "pts": [1, 2')  # torn write from a crashed process
    assert probe(path, cache=cache).num_frames == n
    assert "ignoring unreadable index cache entry" in caplog.text
    json.loads(entry.read_text())  # rebuilt, valid again
    # A changed file (size and mtime) gets a new entry.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    os.utime(path, ns=(1, 1))
    assert probe(path, cache=cache).num_frames < n
    assert len(list(pathlib.Path(cache).rglob("*.json"))) == 2
    assert not list(pathlib.Path(cache).rglob(".tmp-*"))


def test_cache_location(videos_dir, tmp_path, monkeypatch):
    path = videos_dir / "carphone_pristine.mp4"
    monkeypatch.delenv("RINGLOAD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    probe(path)
    assert list((tmp_path / "xdg" / "ringload").rglob("*.json"))
    monkeypatch.setenv("RINGLOAD_CACHE_DIR", str(tmp_path / "env"))
    probe(path)
    assert list((tmp_path / "env").rglob("*.json"))
    with pytest.raises(ringload.ConfigError):
        probe(path, cache=3)


def test_unwritable_cache_still_probes(videos_dir, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    info = probe(videos_dir / "carphone_pristine.mp4", cache=blocker / "sub")
    assert info.num_frames == 120
    assert "cannot write index cache" in caplog.text


def _probe_in_child(args):
    path, cache = args
    from ringload.probe import probe

    return probe(path, cache=cache).num_frames


def test_concurrent_processes_share_one_cache(videos_dir, cache):
    path = str(videos_dir / "chaplin.mp4")
    with mp.get_context("spawn").Pool(3) as pool:
        counts = pool.map(_probe_in_child, [(path, str(cache))] * 6, chunksize=1)
    assert counts == [241] * 6
    files = list(pathlib.Path(cache).rglob("*"))
    assert [f for f in files if f.is_file()] and not [f for f in files if f.name.startswith(".tmp-")]
    assert probe(path, cache=cache).num_frames == 241
