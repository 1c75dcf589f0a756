import pytest
from helpers import assert_same_batches, collect

import ringload
from ringload import ConfigError

KW = dict(batch_size=6, size=(24, 24), crop="random_resized", hflip=True, sampling="bounded", chunk_len=8, seed=21)


def test_resume_mid_epoch_is_bitwise_identical(engine_videos):
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        ref0 = collect(loader)
        assert loader.state_dict()["next_batch"] == len(loader)
        loader.set_epoch(1)
        ref1 = collect(loader)
    assert len(ref0) > 6
    # Stop after 4 batches of epoch 0, resume in a new loader with another worker count.
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        head = collect(loader, limit=4)
        state = loader.state_dict()
    assert state["epoch"] == 0 and state["next_batch"] == 4
    with ringload.VideoLoader(engine_videos, num_workers=3, **KW) as loader:
        loader.load_state_dict(state)
        tail = collect(loader)
        # After the pass, the loader stands at the end of epoch 0; the next epoch follows.
        loader.set_epoch(1)
        e1_head = collect(loader, limit=2)
        state1 = loader.state_dict()
    assert_same_batches(head + tail, ref0)
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        loader.load_state_dict(state1)
        e1_tail = collect(loader)
    assert_same_batches(e1_head + e1_tail, ref1)


def test_a_new_pass_after_a_break_is_whole_and_only_load_state_dict_resumes(engine_videos):
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        loader.set_epoch(0)
        ref = collect(loader)
        first = collect(loader, limit=3)
        state = loader.state_dict()
        again = collect(loader)  # a fresh, whole pass (DataLoader's rule), not batch 3 onwards
        loader.load_state_dict(state)
        rest = collect(loader)  # the saved position: batch 3 onwards
    assert_same_batches(again, ref)
    assert_same_batches(first + rest, ref)


def test_state_from_other_settings_is_refused(engine_videos):
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        state = loader.state_dict()
    with ringload.VideoLoader(engine_videos, num_workers=1, **{**KW, "seed": 22}) as other:
        with pytest.raises(ConfigError, match="other settings"):
            other.load_state_dict(state)
        with pytest.raises(ConfigError, match="state_dict"):
            other.load_state_dict({"epoch": 1})
