"""``VideoLoader(clips_per_video=k)``: k samples of every video per epoch (issue 12)."""

import collections

import numpy as np
import pytest
from helpers import assert_same_batches, check_exact, collect

import ringload
from ringload import ConfigError

KW = dict(batch_size=3, size=(24, 24), crop="random_resized", hflip=True, seed=5, clips_per_video=2)


@pytest.mark.parametrize("sample, extra", [("clips", dict(clip_len=4, frame_stride=2)), ("clips", dict(clip_len=3, fps=8)),
                                           ("frames", {})])
@pytest.mark.parametrize("sampling", ["strict", "bounded"])
def test_every_video_k_times_exact_and_the_same_for_any_worker_count(engine_videos, sample, extra, sampling):
    kw = dict(KW, sample=sample, sampling=sampling, **extra)
    with ringload.VideoLoader(engine_videos, num_workers=1, **kw) as loader:
        one = collect(loader)
        assert len(loader) == 3  # 4 videos x 2 samples in batches of 3
    with ringload.VideoLoader(engine_videos, num_workers=3, **kw) as loader:
        three = collect(loader)
    assert_same_batches(one, three)
    clip = sample == "clips"
    starts = collections.defaultdict(set)
    for b in one:
        for v, f in zip(b["video"].tolist(), b["frame"].tolist()):
            starts[v].add(f[0] if clip else f)
    assert sorted(starts) == [0, 1, 2, 3] and all(len(s) == 2 for s in starts.values())
    assert sum(len(b["video"]) for b in one) == 8
    # Frames exact: whole frames (no crop, no flip) against read_frames.
    with ringload.VideoLoader(engine_videos, num_workers=2, **dict(kw, crop="none", hflip=False)) as loader:
        plain = collect(loader)
    assert check_exact(plain, engine_videos, (24, 24), clip_axis=clip) == 8 * kw.get("clip_len", 1)


def test_resume_mid_epoch_is_bitwise(engine_videos):
    kw = dict(KW, sample="clips", clip_len=4, sampling="bounded", clips_per_video=5, chunk_len=16)
    with ringload.VideoLoader(engine_videos, num_workers=2, **kw) as loader:
        ref = collect(loader)
    assert len(ref) == 7
    with ringload.VideoLoader(engine_videos, num_workers=1, **kw) as loader:
        head = collect(loader, limit=3)
        state = loader.state_dict()
    with ringload.VideoLoader(engine_videos, num_workers=3, **kw) as loader:
        loader.load_state_dict(state)
        tail = collect(loader)
    assert_same_batches(head + tail, ref)
    with ringload.VideoLoader(engine_videos, num_workers=1, **dict(kw, clips_per_video=4)) as other:
        with pytest.raises(ConfigError, match="clips_per_video"):
            other.load_state_dict(state)


def test_two_ranks_are_disjoint_parts_of_one_global_epoch(engine_videos):
    kw = dict(KW, sample="clips", clip_len=4, sampling="strict", clips_per_video=3, crop="center", hflip=False)
    with ringload.VideoLoader(engine_videos, num_workers=1, **kw) as whole:
        everything = collect(whole)
    parts, lens = [], []
    for r in range(2):
        with ringload.VideoLoader(engine_videos, num_workers=1, rank=r, world_size=2, **kw) as loader:
            lens.append(len(loader))
            parts.append(collect(loader))
    assert lens[0] == lens[1] == 2

    def samples(batches):
        return collections.Counter((v, f[0]) for b in batches for v, f in zip(b["video"].tolist(), b["frame"].tolist()))

    a, b = samples(parts[0]), samples(parts[1])
    assert not set(a) & set(b)
    assert a + b == samples(everything)
    assert sum((a + b).values()) == 12 and all(n == 3 for n in collections.Counter(v for v, _ in a + b).values())


@pytest.mark.parametrize("value", [0, 2.5, 1000])
def test_bad_clips_per_video_is_refused_naming_it(engine_videos, value):
    with pytest.raises(ConfigError, match="clips_per_video"):
        ringload.VideoLoader(engine_videos, sample="clips", clip_len=2, clips_per_video=value)


def test_segments_are_already_one_per_video(engine_videos):
    with pytest.raises(ConfigError, match="clips_per_video.*segments"):
        ringload.VideoLoader(engine_videos, sample="segments", num_segments=3, clips_per_video=2)
