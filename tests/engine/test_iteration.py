"""Iteration like DataLoader: every iter() is a fresh whole pass; set_epoch pins the epoch;
load_state_dict resumes exactly once; settings that would be ignored are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import assert_same_batches, collect

import ringload
from ringload import ConfigError, LoaderStateError

from helpers import REPO as _REPO

REPO = str(_REPO)
KW = dict(batch_size=8, size=(24, 32), crop="random_resized", hflip=True, sampling="strict", seed=5, prefetch_batches=2)


@pytest.fixture(scope="module")
def refs(engine_videos):
    """Whole passes of epochs 0, 1 and 2, each from set_epoch."""
    out = {}
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        for e in range(3):
            loader.set_epoch(e)
            out[e] = collect(loader)
    return out


def test_each_pass_without_set_epoch_takes_the_next_epoch(engine_videos, refs):
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        first, second = collect(loader), collect(loader)
        assert loader.epoch == 1
    assert_same_batches(first, refs[0])
    assert_same_batches(second, refs[1])  # reshuffled, like DataLoader(shuffle=True)


def test_set_epoch_pins_every_pass_until_the_next_set_epoch(engine_videos, refs):
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        loader.set_epoch(2)
        assert_same_batches(collect(loader), refs[2])
        assert_same_batches(collect(loader), refs[2])


def test_a_peek_or_a_break_never_eats_training_batches(engine_videos, refs):
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        peek = next(iter(loader))
        assert np.array_equal(peek.frame_index.numpy(), refs[0][0]["frame"])
        assert_same_batches(collect(loader), refs[1])  # a whole pass, the next epoch
        collect(loader, limit=3)  # epoch 2, left after 3 batches
        loader.set_epoch(0)
        next(iter(loader))
        assert_same_batches(collect(loader), refs[0])  # pinned: the whole of epoch 0 again


def test_load_state_dict_resumes_once_then_the_next_epoch_follows(engine_videos, refs):
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        collect(loader)  # epoch 0
        collect(loader, limit=4)  # 4 batches of epoch 1
        state = loader.state_dict()
    assert (state["epoch"], state["next_batch"]) == (1, 4)
    with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
        loader.load_state_dict(state)
        assert_same_batches(collect(loader), refs[1][4:])
        assert_same_batches(collect(loader), refs[2])


def test_set_epoch_of_the_resumed_epoch_keeps_the_position(engine_videos, refs):
    # A DDP loop calls set_epoch(epoch) every epoch, also right after restoring a checkpoint.
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        loader.set_epoch(1)
        collect(loader, limit=5)
        state = loader.state_dict()
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        loader.load_state_dict(state)
        loader.set_epoch(1)
        assert_same_batches(collect(loader), refs[1][5:])
        assert_same_batches(collect(loader), refs[1])  # still pinned
        loader.load_state_dict(state)
        loader.set_epoch(2)  # another epoch: the saved position no longer applies
        assert_same_batches(collect(loader), refs[2])


def test_a_state_saved_after_a_whole_pass_resumes_with_the_next_epoch(engine_videos, refs):
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        collect(loader)
        state = loader.state_dict()
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        loader.load_state_dict(state)
        assert_same_batches(collect(loader), refs[1])


def test_two_live_iterators_the_older_one_says_what_happened(engine_videos):
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        it1 = iter(loader)
        it2 = iter(loader)
        with pytest.raises(LoaderStateError, match="superseded") as err:
            next(it1)
        assert "one pass at a time" in str(err.value)
        assert len(next(it2)) == KW["batch_size"]


def test_no_silent_empty_epoch_and_drop_last_defaults_to_false(engine_videos):
    total = sum(ringload.probe(p).num_frames for p in engine_videos)
    with pytest.raises(ConfigError, match="batch_size") as err:
        ringload.VideoLoader(engine_videos, **dict(KW, batch_size=total + 1, drop_last=True))
    assert "drop_last" in str(err.value)
    with ringload.VideoLoader(engine_videos, num_workers=1, **dict(KW, batch_size=total + 1)) as loader:
        assert loader.config.drop_last is False
        assert len(loader) == 1
        assert len(next(iter(loader))) == total


def test_conflicting_clip_settings_are_refused(engine_videos):
    with pytest.raises(ConfigError, match="fps") as err:
        ringload.VideoLoader(engine_videos, sample="clips", clip_len=8, fps=4, frame_stride=2, size=(16, 16))
    assert "frame_stride" in str(err.value)


def test_a_state_from_other_settings_names_what_differs(engine_videos):
    with ringload.VideoLoader(engine_videos, num_workers=1, **dict(KW, batch_size=4)) as loader:
        state = loader.state_dict()
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        with pytest.raises(ConfigError, match="batch_size") as err:
            loader.load_state_dict(state)
    assert "4" in str(err.value) and "8" in str(err.value)


def test_dataset_names_a_user_tries_first(engine_videos, tmp_path):
    rows = ["path,label"] + [f"{p},{'cat' if i % 2 else 'dog'}" for i, p in enumerate(engine_videos)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    with ringload.VideoLoader(str(manifest), num_workers=1, **KW) as loader:
        assert loader.paths == [os.path.abspath(p) for p in engine_videos]
        assert loader.num_videos == len(engine_videos)
        assert loader.classes == ["cat", "dog"] and loader.num_classes == 2
    with ringload.VideoLoader(engine_videos, num_workers=1, **KW) as loader:
        assert loader.classes is None and loader.num_classes == 0


def test_a_bad_file_error_says_how_to_go_on(engine_videos, tmp_path):
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(ringload.VideoError) as err:
        ringload.VideoLoader([*engine_videos, str(bad)], num_workers=1, **KW)
    msg = str(err.value)
    assert str(bad) in msg and "on_error='skip'" in msg and "ringload index" in msg


_NO_GUARD = textwrap.dedent(
    """
    import json, sys
    import ringload
    loader = ringload.VideoLoader(json.loads(sys.argv[1]), batch_size=4, size=(16, 16), num_workers=2)
    next(iter(loader))
    """
)


def test_a_script_without_the_main_guard_gets_one_short_error(engine_videos, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_NO_GUARD)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(script), __import__("json").dumps(engine_videos)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode != 0
    err = proc.stderr
    assert 'if __name__ == "__main__":' in err
    assert "An attempt has been made to start a new process" not in err  # multiprocessing's own traceback
    assert len(err.splitlines()) < 40, err


def test_a_script_without_the_main_guard_on_files_not_yet_indexed_gets_the_same_error(engine_videos, tmp_path):
    # With no index cached, more than 8 files are indexed first, by spawned processes (with
    # 2 or more cores): each of them re-ran the script and died, and every file was reported
    # unusable ("no video in source has a full sample"), hiding the cause.
    names = []
    for i in range(3):
        for p in engine_videos:
            names.append(str(tmp_path / f"{i}-{os.path.basename(p)}"))
            os.symlink(p, names[-1])
    script = tmp_path / "train.py"
    script.write_text(_NO_GUARD)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RINGLOAD_CACHE_DIR=str(tmp_path / "fresh-cache"))
    proc = subprocess.run(
        [sys.executable, str(script), __import__("json").dumps(names)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode != 0
    err = proc.stderr
    assert 'if __name__ == "__main__":' in err, err
    assert "unusable" not in err and "full sample" not in err, err
    assert len(err.splitlines()) < 40, err
