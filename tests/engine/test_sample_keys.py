"""``Batch.sample_keys``: augmentations are keyed by the sample, not by its frames (issue 12)."""

import numpy as np

import ringload
from ringload import _rng, augment


def test_segments_are_keyed_by_their_sample_and_augment_reads_the_key(engine_videos):
    with ringload.VideoLoader(engine_videos, sample="segments", num_segments=3, batch_size=4, size=(16, 16),
                              sampling="sequential", num_workers=1, seed=3) as loader:
        b = next(iter(loader))
    # A segment sample is (video, 0); its first frame is anywhere in the first part.
    want = _rng.sample_keys(b.video_index.numpy(), np.zeros(4, dtype=np.int64))
    assert np.array_equal(b.sample_keys.numpy().astype(np.uint64), want)
    assert np.array_equal(augment.keys_for_batch(b), want)
    assert np.any(b.frame_index[:, 0].numpy() != 0)


def test_clips_are_keyed_by_video_and_start(engine_videos):
    with ringload.VideoLoader(engine_videos, sample="clips", clip_len=3, frame_stride=2, batch_size=5, size=(16, 16),
                              sampling="strict", num_workers=1, seed=3) as loader:
        b = next(iter(loader))
    want = _rng.sample_keys(b.video_index.numpy(), b.frame_index[:, 0].numpy())
    assert np.array_equal(augment.keys_for_batch(b), want)
