"""``VideoLoader(samples=...)`` (issue 12): the user's own order, decoded, checked and resumed.

engine_videos have 75, 50, 50 and 60 frames."""

import numpy as np
import pytest
from helpers import assert_same_batches, check_exact, collect

import ringload
from ringload import ConfigError

KW = dict(batch_size=5, size=(16, 16), crop="random_resized", hflip=True, seed=7, num_workers=1)
LENGTHS = [75, 50, 50, 60]


def a_list(n=23, seed=0, clip_span=1):
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 4, size=n)
    s = rng.integers(0, np.array(LENGTHS)[v] - clip_span + 1)
    return np.stack([v, s], axis=1)


def test_a_sample_list_is_decoded_in_its_order_and_resumes_bitwise(engine_videos):
    lst = a_list()
    lst[3] = lst[0]  # a repeat is kept
    with ringload.VideoLoader(engine_videos, samples=lst, **KW) as loader:
        assert len(loader) == 5 and loader.stats()["sampling"] == "samples"
        ref = collect(loader)
        loader.set_epoch(3)  # a fixed list is every epoch's
        again = collect(loader)
    got = np.concatenate([np.stack([b["video"], b["frame"]], axis=1) for b in ref])
    np.testing.assert_array_equal(got, lst)
    assert [len(b["video"]) for b in ref] == [5, 5, 5, 5, 3]
    assert np.array_equal(again[0]["video"], ref[0]["video"]) and not all(
        np.array_equal(x["frames"], y["frames"]) for x, y in zip(ref, again))  # other epoch: other crops and flips
    with ringload.VideoLoader(engine_videos, samples=lst, **KW) as loader:
        head = collect(loader, limit=2)
        state = loader.state_dict()
    with ringload.VideoLoader(engine_videos, samples=lst, **{**KW, "num_workers": 2}) as loader:
        loader.load_state_dict(state)
        tail = collect(loader)
    assert_same_batches(head + tail, ref)
    # Another list is another loader: its state does not resume this one.
    with ringload.VideoLoader(engine_videos, samples=lst[::-1].copy(), **KW) as loader:
        with pytest.raises(ConfigError, match="samples: saved"):
            loader.load_state_dict(state)


def test_listed_clips_are_exact_frames(engine_videos):
    lst = a_list(n=9, seed=1, clip_span=7)
    kw = dict(KW, sample="clips", clip_len=4, frame_stride=2, crop="none", hflip=False)
    with ringload.VideoLoader(engine_videos, samples=lst, **kw) as loader:
        batches = collect(loader)
    first = np.concatenate([b["frame"][:, 0] for b in batches])
    np.testing.assert_array_equal(first, lst[:, 1])
    assert check_exact(batches, engine_videos, (16, 16), clip_axis=True) == 4 * len(lst)


def test_a_callable_gives_each_epoch_its_list_and_resume_checks_it(engine_videos):
    def per_epoch(epoch):
        return a_list(n=12, seed=epoch)

    kw = dict(KW, crop="none", hflip=False)
    with ringload.VideoLoader(engine_videos, samples=per_epoch, **kw) as loader:
        e0 = collect(loader)
        e1 = collect(loader)
        assert loader.epoch == 1
    for e, batches in ((0, e0), (1, e1)):
        got = np.concatenate([np.stack([b["video"], b["frame"]], axis=1) for b in batches])
        np.testing.assert_array_equal(got, per_epoch(e))
    check_exact(e0 + e1, engine_videos, (16, 16))
    with ringload.VideoLoader(engine_videos, samples=per_epoch, **kw) as loader:
        loader.set_epoch(1)
        head = collect(loader, limit=1)
        state = loader.state_dict()
    with ringload.VideoLoader(engine_videos, samples=per_epoch, **kw) as loader:
        loader.load_state_dict(state)
        tail = collect(loader)
    assert_same_batches(head + tail, e1)
    # A callable that gives another list for the saved epoch cannot resume it.
    with ringload.VideoLoader(engine_videos, samples=lambda e: per_epoch(e + 1), **kw) as loader:
        with pytest.raises(ConfigError, match=r"samples\(1\) returns another list"):
            loader.load_state_dict(state)


def test_ranks_share_a_list_like_sequential_mode(engine_videos):
    lst = a_list(n=13, seed=2)
    parts = []
    for rank in range(2):
        with ringload.VideoLoader(engine_videos, samples=lst, rank=rank, world_size=2, **{**KW, "num_workers": 0}) as loader:
            parts.append(collect(loader))
    assert len(parts[0]) == len(parts[1]) == 2
    got = np.concatenate([np.stack([b["video"], b["frame"]], axis=1) for p in parts for b in p])
    np.testing.assert_array_equal(got, lst)


def test_a_plan_object_is_this_ranks_batches(engine_videos):
    plan = ringload.plan_epoch(LENGTHS, batch_size=5, seed=1, epoch=4, mode="strict", drop_last=False)
    with ringload.VideoLoader(engine_videos, samples=plan, **{**KW, "num_workers": 0}) as loader:
        assert len(loader) == len(plan)
        batches = collect(loader, limit=3)
    for k, b in enumerate(batches):
        np.testing.assert_array_equal(np.stack([b["video"], b["frame"]], axis=1), plan[k])


def test_samples_are_checked_and_exclude_plan_settings(engine_videos):
    with pytest.raises(ConfigError, match=r"samples\[1\] = \(1, 50\): start 50 is outside the valid starts of video 1"):
        ringload.VideoLoader(engine_videos, samples=[(0, 0), (1, 50)], **KW)
    with pytest.raises(ConfigError, match=r"samples\(0\)\[0\] = \(7, 0\): video 7 is out of range"):
        ringload.VideoLoader(engine_videos, samples=lambda e: [(7, 0)], **KW)
    with pytest.raises(ConfigError, match="clips_per_video=2 shapes a plan"):
        ringload.VideoLoader(engine_videos, samples=[(0, 0)], clips_per_video=2, **KW)
    with pytest.raises(ConfigError, match="min_effective_batch=2 shapes a plan"):
        ringload.VideoLoader(engine_videos, samples=[(0, 0)], min_effective_batch=2, **KW)
    # A clip's start must leave room for the clip (60 frames, span 7: starts 0 to 53).
    with pytest.raises(ConfigError, match="start 54 is outside the valid starts of video 3"):
        ringload.VideoLoader(engine_videos, samples=[(3, 54)], sample="clips", clip_len=4, frame_stride=2,
                             **{**KW, "num_workers": 0})


def test_a_sample_list_over_trimmed_rows(engine_videos, tmp_path):
    import pathlib

    folder = pathlib.Path(engine_videos[0]).parent
    man = tmp_path / "m.jsonl"
    man.write_text(f'{{"path": "{folder / "a.mp4"}", "start": 2.0, "text": "late"}}\n'
                   f'{{"path": "{folder / "b.mp4"}", "end": 1.0, "text": "early"}}\n')
    with ringload.VideoLoader(str(man), samples=[(0, 0), (1, 3), (0, 24)], **{**KW, "num_workers": 0}) as loader:
        batch = next(iter(loader))
    assert batch.video_index.tolist() == [0, 1, 0]
    assert batch.frame_index.tolist() == [50, 3, 74]  # a.mp4's row starts at frame 50 (2.0 s)
    assert batch.meta == {"text": ["late", "early", "late"]}
