"""Evaluation views (issue 12): k uniformly spaced clips x 3 crops per video, each once."""

import numpy as np
import pytest
import torch

import ringload
from ringload import ConfigError
from ringload.probe import probe

SIZE = (32, 32)
KW = dict(sample="clips", clip_len=4, frame_stride=2, sampling="sequential", clips_per_video=2, crop="three", size=SIZE,
          batch_size=5, num_workers=2, seed=1)


def rows(loader):
    out = []
    for b in loader:
        for i in range(len(b)):
            out.append((int(b.video_index[i]), int(b.clip_index[i]), int(b.crop_index[i]), b.frame_index[i].tolist(),
                        b.frames[i].contiguous().numpy()))
    return out


def three_boxes(width, height, size):
    """Left, centre, right (x, y, w, h): the largest box of size's aspect, along the long side."""
    oh, ow = size
    if width * oh > height * ow:
        w, h = round(height * ow / oh), height
        return [(x - x % 2, 0, w - w % 2, h - h % 2) for x in (0, (width - w) // 2, width - w)]
    w, h = width, round(width * oh / ow)
    return [(0, y - y % 2, w - w % 2, h - h % 2) for y in (0, (height - h) // 2, height - h)]


def test_clips_times_crops_each_once_in_order_and_exact(engine_videos):
    with ringload.VideoLoader(engine_videos, **KW) as loader:
        got = rows(loader)
    assert [r[:3] for r in got] == [(v, c, x) for v in range(4) for c in range(2) for x in range(3)]
    for v, c, x, frames, data in got:
        info = probe(engine_videos[v])
        n = info.num_frames - 6
        assert frames[0] == [0, n - 1][c] and frames == [frames[0] + 2 * j for j in range(4)]
        box = three_boxes(info.width, info.height, SIZE)[x]
        ref = ringload.read_frames(engine_videos[v], frames, size=SIZE, crop=box).data.numpy()
        assert np.array_equal(data, ref), f"video {v} clip {c} crop {x} differs from read_frames"
    # The three crops of a clip are different pictures.
    assert not np.array_equal(got[0][4], got[2][4])


def test_two_ranks_see_every_view_exactly_once(engine_videos):
    parts, lens = [], []
    for r in range(2):
        with ringload.VideoLoader(engine_videos, rank=r, world_size=2, **dict(KW, num_workers=1)) as loader:
            lens.append(len(loader))
            parts.append([x[:3] for x in rows(loader)])
    assert lens[0] == lens[1]
    both = parts[0] + parts[1]
    assert sorted(both) == [(v, c, x) for v in range(4) for c in range(2) for x in range(3)]


def test_averaging_scores_per_video_is_one_call():
    scores = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [5.0, 5.0]])
    video = torch.tensor([2, 0, 2, 2])
    videos, mean = ringload.average_per_video(scores, video)
    assert videos.tolist() == [0, 2]
    assert torch.allclose(mean, torch.tensor([[3.0, 2.0], [2.0, 3.0]]))


def test_three_crops_are_for_evaluation_views(engine_videos):
    with pytest.raises(ConfigError, match="crop='three'.*sequential"):
        ringload.VideoLoader(engine_videos, **dict(KW, sampling="strict"))
    with pytest.raises(ConfigError, match="crop='three'.*clips_per_video"):
        ringload.VideoLoader(engine_videos, **dict(KW, clips_per_video=None))


def test_without_views_clip_and_crop_index_are_zero(engine_videos):
    with ringload.VideoLoader(engine_videos, batch_size=4, size=(16, 16), num_workers=1) as loader:
        b = next(iter(loader))
    assert b.clip_index.tolist() == [0] * 4 and b.crop_index.tolist() == [0] * 4


def test_read_frames_crop_is_the_box_resized(engine_videos):
    whole = ringload.read_frames(engine_videos[0], [3]).data[0]
    part = ringload.read_frames(engine_videos[0], [3], crop=(10, 4, 20, 30)).data[0]
    assert torch.equal(part, whole[:, 4:34, 10:30])
    with pytest.raises(ConfigError, match="crop"):
        ringload.read_frames(engine_videos[0], [3], crop=(90, 0, 20, 20))
