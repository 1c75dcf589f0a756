"""Bad input: each case raises a typed VideoError that names the file; never a black or stale frame."""

import dataclasses
import shutil

import av
import numpy as np
import pytest

import ringload
from ringload import DecodeError, FrameIndexError, NoVideoStreamError, VideoError, VideoOpenError
from ringload._decode import VideoReader
from ringload.probe import probe


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGLOAD_CACHE_DIR", str(tmp_path / "cache"))


def _raises(exc_type, path, fn=probe):
    with pytest.raises(exc_type) as info:
        fn(path)
    assert isinstance(info.value, VideoError)
    assert str(path) in str(info.value), str(info.value)
    assert info.value.path == str(path)
    return info.value


def test_missing_file(tmp_path):
    err = _raises(VideoOpenError, tmp_path / "nope.mp4")
    assert "no such file" in err.reason
    _raises(VideoOpenError, tmp_path / "nope.mp4", lambda p: ringload.read_frames(p, [0]))


def test_zero_bytes(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    assert "empty" in _raises(VideoOpenError, p).reason


def test_garbage_bytes(tmp_path):
    p = tmp_path / "garbage.mp4"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    _raises(VideoOpenError, p)


def test_directory_is_not_a_video(tmp_path):
    _raises(VideoOpenError, tmp_path)


def test_truncated_mp4_without_its_index(tmp_path, videos_dir):
    p = tmp_path / "trunc.mp4"
    data = (videos_dir / "bikes.mp4").read_bytes()
    p.write_bytes(data[: len(data) // 2])  # the moov box is at the end: cut off
    _raises(VideoOpenError, p)


def test_truncated_matroska_indexes_what_decodes(tmp_path, videos_dir):
    p = tmp_path / "trunc.mkv"
    data = (videos_dir / "flipping_a_pancake.mkv").read_bytes()
    p.write_bytes(data[: len(data) // 2])
    count = 0
    with av.open(str(p)) as c:
        try:
            for _ in c.decode(c.streams.video[0]):
                count += 1
        except av.FFmpegError:
            pass
    info = probe(p)
    assert 0 < info.num_frames == count < 310
    last = ringload.read_frames(p, [info.num_frames - 1])
    assert last.data.shape[0] == 1
    err = _raises(FrameIndexError, p, lambda q: ringload.read_frames(q, [info.num_frames]))
    assert f"{info.num_frames} frames" in err.reason


def test_audio_only(tmp_path):
    p = tmp_path / "tone.wav"
    with av.open(str(p), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate = 8000
        for pkt in s.encode(fr):
            c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    err = _raises(NoVideoStreamError, p)
    assert "no video stream" in err.reason


def test_chosen_stream_must_be_video(videos_dir):
    path = videos_dir / "nasa_13013.mp4"
    with pytest.raises(NoVideoStreamError, match=r"stream 1 is audio"):
        probe(path, stream=1)
    with pytest.raises(NoVideoStreamError, match=r"stream 2 is subtitle"):
        probe(path, stream=2)
    with pytest.raises(NoVideoStreamError, match=r"stream 9 does not exist"):
        probe(path, stream=9)
    with pytest.raises(ringload.ConfigError):
        probe(path, stream=-1)


def test_no_decodable_video_frame(tmp_path, videos_dir):
    """A video stream whose packets are all zeros: not one frame decodes."""
    p = tmp_path / "zeroed.mkv"
    with av.open(str(videos_dir / "flipping_a_pancake.mkv")) as src, av.open(str(p), "w") as dst:
        ist = src.streams.video[0]
        ost = dst.add_stream_from_template(ist)
        for pkt in src.demux(ist):
            if pkt.dts is None:
                continue
            zero = av.Packet(bytes(pkt.size))
            zero.pts, zero.dts, zero.time_base, zero.stream = pkt.pts, pkt.dts, pkt.time_base, ost
            zero.is_keyframe = pkt.is_keyframe
            dst.mux(zero)
    err = _raises(DecodeError, p)
    assert "no frame" in err.reason


def test_corrupted_file_reports_frames_that_decode(videos_dir):
    path = videos_dir / "decord_corrupted.mp4"
    info = probe(path)
    assert info.num_frames == 28  # the header claims 50
    err = _raises(FrameIndexError, path, lambda p: ringload.read_frames(p, [0, 30]))
    assert "frame 30" in err.reason


def test_frames_the_index_promises_but_do_not_decode_raise(videos_dir):
    """A stale index (here: forged to promise the corrupted file's 50 header frames)
    must give DecodeError, never a black or repeated frame."""
    path = videos_dir / "decord_corrupted.mp4"
    info = probe(path)
    step = int(info.pts[1] - info.pts[0])
    pts = np.concatenate([info.pts, info.pts[-1] + step * np.arange(1, 23)])
    forged = dataclasses.replace(
        info, num_frames=len(pts), pts=pts, pts_seconds=pts * float(info.time_base), keyframes=info.keyframes
    )
    got = []
    with VideoReader(path, forged) as reader:
        with pytest.raises(DecodeError) as exc:
            reader.decode([3, 40], lambda pos, frame: got.append(pos))
        assert str(path) in str(exc.value) and "frame 40" in str(exc.value)
        # The reader recovers: frames that do decode still read exactly.
        reader.decode([27], lambda pos, frame: got.append(("again", pos)))
    assert ("again", 0) in got


def test_file_replaced_by_garbage_after_indexing(tmp_path, videos_dir):
    p = tmp_path / "v.mp4"
    shutil.copy(videos_dir / "bikes.mp4", p)
    info = probe(p)
    p.write_bytes(b"\0" * 1000)
    with pytest.raises(VideoOpenError, match="v.mp4"):
        VideoReader(p, info).decode([3], lambda pos, frame: None)
