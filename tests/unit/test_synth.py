"""ringload.synth.make_video: frame count, GOP structure, B-frames, determinism, realism."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import av
import numpy as np
import pytest
from av.video.frame import PictureType
from helpers import REPO

from ringload.errors import ConfigError
from ringload.synth import av1_encoder, make_video


def _packets(path):
    with av.open(str(path)) as c:
        return [(p.is_keyframe, p.pts, p.dts) for p in c.demux(c.streams.video[0]) if p.size]


def _decode(path):
    with av.open(str(path)) as c:
        return [(f.to_ndarray(), PictureType(f.pict_type).name) for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def h264_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "cam.mp4"
    return make_video(path, width=320, height=240, fps=30, seconds=2, gop=10, bframes=2, seed=3)


def test_frame_count_and_size(h264_video):
    frames = _decode(h264_video)
    assert len(frames) == 60
    with av.open(str(h264_video)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height) == (320, 240)
        assert s.codec_context.pix_fmt == "yuv420p"
        assert float(s.average_rate) == pytest.approx(30.0)


def test_gop_is_exact(h264_video):
    keys = [i for i, (k, _, _) in enumerate(_packets(h264_video)) if k]
    assert keys == list(range(0, 60, 10))


def test_bframes_present_when_asked(h264_video, tmp_path):
    types = [t for _, t in _decode(h264_video)]
    assert "B" in "".join(types)
    # Presentation order differs from decode order only with B-frames.
    pts = [p for _, p, _ in _packets(h264_video)]
    assert pts != sorted(pts)
    none = make_video(tmp_path / "nob.mp4", width=160, height=120, fps=30, seconds=1, gop=10, bframes=0)
    assert "B" not in "".join(t for _, t in _decode(none))


def test_same_seed_same_frames_other_seed_differs(h264_video, tmp_path):
    again = make_video(tmp_path / "again.mp4", width=320, height=240, fps=30, seconds=2, gop=10, bframes=2, seed=3)
    other = make_video(tmp_path / "other.mp4", width=320, height=240, fps=30, seconds=2, gop=10, bframes=2, seed=4)

    def digest(path):
        return [hashlib.sha1(a.tobytes()).hexdigest() for a, _ in _decode(path)]

    assert digest(again) == digest(h264_video)
    assert digest(other) != digest(h264_video)


_ENCODE_ON_ONE_CPU = """
import os, sys
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from ringload.synth import make_video
make_video(sys.argv[1], width=320, height=240, fps=30, seconds=2, gop=10, bframes=2, codec=sys.argv[2], seed=3)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to change the encoder's CPU count")
@pytest.mark.parametrize("codec", ["h264", "hevc", "vp9"])
def test_same_seed_same_bytes_whatever_cpus_the_process_may_use(tmp_path, codec):
    # Encoders size their thread pools from the CPUs they may use, and x264's output
    # depends on that count: the same seed must give the same file on any machine.
    ext = ".webm" if codec == "vp9" else ".mp4"
    here = make_video(tmp_path / f"here{ext}", width=320, height=240, fps=30, seconds=2, gop=10, bframes=2,
                      codec=codec, seed=3)
    one = tmp_path / f"one{ext}"
    subprocess.run([sys.executable, "-c", _ENCODE_ON_ONE_CPU, str(one), codec], check=True, cwd=REPO, timeout=120)

    def packets(path):
        with av.open(str(path)) as c:
            return [bytes(p) for p in c.demux(video=0) if p.size]

    assert packets(one) == packets(here)


def test_not_flat_and_moving(h264_video):
    frames = [a for a, _ in _decode(h264_video)]
    luma = np.stack([f[:240] for f in frames]).astype(np.float32)
    assert luma.std(axis=(1, 2)).min() > 15  # textured, not a flat colour
    # Consecutive frames differ (camera motion and noise), but are related (not random).
    diffs = np.abs(np.diff(luma, axis=0)).mean(axis=(1, 2))
    assert diffs.min() > 0.3
    assert diffs.mean() > 1.5
    assert diffs.max() < 60.0
    # 320x240 at 30 fps: a camera-like stream lands between 0.2 and 5 Mbit/s.
    bits_per_second = h264_video.stat().st_size * 8 / 2
    assert 2e5 < bits_per_second < 5e6


@pytest.mark.parametrize("codec", ["hevc", "vp9", "av1"])
def test_other_codecs(codec, tmp_path):
    if codec == "av1" and av1_encoder() is None:
        with pytest.raises(ConfigError, match="av1"):
            make_video(tmp_path / "x.mp4", width=64, height=64, fps=30, seconds=1, gop=10, bframes=0, codec=codec)
        return
    ext = ".webm" if codec == "vp9" else ".mp4"
    path = make_video(tmp_path / f"x{ext}", width=160, height=128, fps=30, seconds=1, gop=10, bframes=2, codec=codec)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name in {"hevc", "vp9", "av1", "libdav1d", "libaom-av1"}
    frames = _decode(path)
    assert len(frames) == 30
    keys = [i for i, (k, _, _) in enumerate(_packets(path)) if k]
    assert keys == [0, 10, 20]
    if codec == "hevc":
        assert "B" in "".join(t for _, t in frames)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(width=321, height=240), "width=321"),
        (dict(width=320, height=239), "height=239"),
        (dict(gop=0), "gop"),
        (dict(codec="mpeg2"), "codec"),
        (dict(seconds=0), "seconds"),
    ],
)
def test_bad_arguments(kwargs, match, tmp_path):
    args = dict(width=320, height=240, fps=30, seconds=1, gop=10, bframes=2)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        make_video(tmp_path / "bad.mp4", **args)
    assert not list(tmp_path.iterdir())
