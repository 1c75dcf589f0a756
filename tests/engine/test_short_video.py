"""Videos shorter than one sample (issue 12): ``short_video=...``, never silent.

engine_videos have 75, 50, 50 and 60 frames (last pts 2.96, 1.96, 2.45, 1.97 s): clips of 16 frames
every 4 (61 frames) fit only the first; 18 frames at 8 fps (2.125 s) fit the first and third.
"""

import logging

import numpy as np
import pytest
from helpers import check_exact, collect

import ringload
from ringload import ConfigError
from ringload.probe import probe

KW = dict(sample="clips", clip_len=16, frame_stride=4, batch_size=4, size=(24, 24), crop="none", sampling="strict",
          seed=2, num_workers=1)


def frames_by_video(batches):
    out = {}
    for b in batches:
        for v, f in zip(b["video"].tolist(), b["frame"].tolist()):
            out.setdefault(v, []).append(f)
    return out


def test_default_repeats_the_last_frame_says_so_and_counts_it(engine_videos, caplog):
    lengths = [probe(p).num_frames for p in engine_videos]
    with caplog.at_level(logging.WARNING, logger="ringload"):
        with ringload.VideoLoader(engine_videos, **KW) as loader:
            batches = collect(loader)
            stats = loader.stats()
    warned = [r.getMessage() for r in caplog.records if "short_video" in r.getMessage()]
    assert len(warned) == 1 and "3 of 4 videos" in warned[0] and "short_video='repeat_last'" in warned[0]
    assert stats["short_videos"] == 3 and stats["short_video"] == "repeat_last"
    got = frames_by_video(batches)
    assert sorted(got) == [0, 1, 2, 3]
    for v in (1, 2, 3):
        assert got[v] == [np.minimum(np.arange(16) * 4, lengths[v] - 1).tolist()]
    assert check_exact(batches, engine_videos, (24, 24), clip_axis=True) == 16 * sum(len(x) for x in got.values())


def test_wrap_starts_the_video_over(engine_videos, caplog):
    lengths = [probe(p).num_frames for p in engine_videos]
    with caplog.at_level(logging.WARNING, logger="ringload"):
        with ringload.VideoLoader(engine_videos, short_video="wrap", **KW) as loader:
            batches = collect(loader)
    assert any("short_video='wrap'" in r.getMessage() for r in caplog.records)
    got = frames_by_video(batches)
    for v in (1, 2, 3):
        assert got[v] == [(np.arange(16) * 4 % lengths[v]).tolist()]
    check_exact(batches, engine_videos, (24, 24), clip_axis=True)


def test_skip_leaves_them_out_with_a_warning(engine_videos, caplog):
    with caplog.at_level(logging.WARNING, logger="ringload"):
        with ringload.VideoLoader(engine_videos, short_video="skip", **KW) as loader:
            got = frames_by_video(collect(loader))
            stats = loader.stats()
    assert sorted(got) == [0] and stats["short_videos"] == 3
    assert any("3 of 4 videos" in r.getMessage() and "short_video='skip'" in r.getMessage() for r in caplog.records)


def test_error_refuses_naming_the_count_and_the_setting(engine_videos):
    with pytest.raises(ConfigError, match=r"3 of 4 videos.*short_video"):
        ringload.VideoLoader(engine_videos, short_video="error", **KW)
    with pytest.raises(ConfigError, match="short_video"):
        ringload.VideoLoader(engine_videos, short_video="loop", **KW)


@pytest.mark.parametrize("policy", ["repeat_last", "wrap"])
def test_fps_clips_follow_the_policy_by_timestamp(engine_videos, policy):
    kw = dict(KW, frame_stride=1, fps=8.0, clip_len=18)  # 2.125 s: b and d are short
    with ringload.VideoLoader(engine_videos, short_video=policy, **kw) as loader:
        batches = collect(loader)
        assert loader.stats()["short_videos"] == 2
    got = frames_by_video(batches)
    assert sorted(got) == [0, 1, 2, 3]
    for v in (1, 3):
        info = probe(engine_videos[v])
        f = np.array(got[v][0])
        assert np.all(np.diff(f)[: 7] > 0)  # the first second plays forward
        if policy == "repeat_last":
            assert f[-1] == info.num_frames - 1 and np.all(np.diff(f) >= 0)
        else:
            assert np.any(np.diff(f) < 0) and f[-1] < info.num_frames - 1  # starts over
    check_exact(batches, engine_videos, (24, 24), clip_axis=True)


def test_nothing_is_said_when_no_video_is_short(engine_videos, caplog):
    with caplog.at_level(logging.WARNING, logger="ringload"):
        with ringload.VideoLoader(engine_videos, **dict(KW, clip_len=4)) as loader:
            assert loader.stats()["short_videos"] == 0
    assert not [r for r in caplog.records if "short_video" in r.getMessage()]
