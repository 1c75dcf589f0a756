"""``VideoLoader(weights=..., balance=...)``: weighted and class-balanced epochs (issue 12)."""

import collections

import numpy as np
import pytest
from helpers import assert_same_batches, collect

import ringload
from ringload import ConfigError

KW = dict(batch_size=3, size=(24, 24), crop="random_resized", hflip=True, seed=5, sample="clips", clip_len=3,
          clips_per_video=2)


def videos_of(batches) -> collections.Counter:
    return collections.Counter(v for b in batches for v in b["video"].tolist())


@pytest.mark.parametrize("sampling", ["strict", "bounded"])
def test_weighted_resume_is_bitwise_and_zero_weights_exclude(engine_videos, sampling):
    kw = dict(KW, sampling=sampling, weights=[1.0, 0.0, 2.5, 0.5])
    with ringload.VideoLoader(engine_videos, num_workers=2, **kw) as loader:
        ref = collect(loader)
        stats = loader.stats()
        plan = loader._plan()
    seen = videos_of(ref)
    assert 1 not in seen, "a video of weight 0 was sampled"
    assert dict(seen) == {v: int(c) for v, c in enumerate(plan.slot_counts) if c}
    assert stats["weighted"] and stats["epoch_samples"] == sum(seen.values())
    assert len(ref) == -(-stats["epoch_samples"] // 3)
    assert stats["expected_epoch_samples"] == pytest.approx(8.0)  # 2 clips x 4 videos: weights have mean 1
    with ringload.VideoLoader(engine_videos, num_workers=1, **kw) as loader:
        head = collect(loader, limit=2)
        state = loader.state_dict()
    with ringload.VideoLoader(engine_videos, num_workers=3, **kw) as loader:
        loader.load_state_dict(state)
        tail = collect(loader)
    assert_same_batches(head + tail, ref)
    with ringload.VideoLoader(engine_videos, num_workers=1, **dict(kw, weights=[1.0, 0.0, 2.5, 0.6])) as other:
        with pytest.raises(ConfigError, match="weights"):
            other.load_state_dict(state)


def test_balanced_manifest_two_ranks_are_one_global_epoch(engine_videos, tmp_path):
    man = tmp_path / "train.csv"
    rows = [f"{p},{c},{w}" for p, c, w in zip(engine_videos, ["cat", "cat", "cat", "dog"], [1, 1, 1, 1])]
    man.write_text("path,label,weight\n" + "\n".join(rows) + "\n")
    kw = dict(KW, sampling="strict", crop="center", hflip=False, balance="repeat_factor", balance_threshold=0.5)
    with ringload.VideoLoader(str(man), num_workers=1, **kw) as whole:
        everything = collect(whole)
        plan = whole._plan()
        assert whole.stats()["balance"] == "repeat_factor"
    # dog: f = 1/4, r = sqrt(0.5 / 0.25); cat: f = 3/4, r = 1.
    assert np.allclose(plan.repeat_factors, [1, 1, 1, np.sqrt(2)])
    parts, lens = [], []
    for r in range(2):
        with ringload.VideoLoader(str(man), num_workers=1, rank=r, world_size=2, **kw) as loader:
            lens.append(len(loader))
            parts.append(collect(loader))
    assert lens[0] == lens[1]

    def samples(batches):
        return collections.Counter((v, f[0]) for b in batches for v, f in zip(b["video"].tolist(), b["frame"].tolist()))

    a, b = samples(parts[0]), samples(parts[1])
    assert not set(a) & set(b)
    assert a + b == samples(everything)
    with pytest.raises(ConfigError, match="weights.*weight' column"):
        ringload.VideoLoader(str(man), weights=[1, 1, 1, 1], **kw)
    with pytest.raises(ConfigError, match="weight' column.*clips_per_video"):
        ringload.VideoLoader(str(man), **dict(KW, clips_per_video=None))
    # weights=False ignores the column: the plain per-video epoch.
    with ringload.VideoLoader(str(man), num_workers=1, weights=False, **dict(KW, sampling="strict")) as plain:
        assert not plain.stats()["weighted"] and plain.stats()["epoch_samples"] == 8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=[1, 1, 1, 1], clips_per_video=None), "weights.*clips_per_video"),
        (dict(weights=[1, 1, 1, 1], sampling="sequential"), "weights.*strict"),
        (dict(weights=[0, 0, 0, 0]), "weights"),
        (dict(weights=[1, -1, 1, 1]), "weights"),
        (dict(weights=[1, 1]), "weights"),
        (dict(balance="repeat_factor"), "balance.*labels"),
        (dict(balance="repeat_factor", clips_per_video=None), "balance.*clips_per_video"),
        (dict(balance_threshold=0.1), "balance_threshold"),
        (dict(balance="frequency", balance_power=-1), "balance_power"),
        (dict(sample="segments", clip_len=1, num_segments=2, clips_per_video=None, balance="frequency"), "segments"),
    ],
)
def test_bad_weighted_settings_are_config_errors_naming_them(engine_videos, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ringload.VideoLoader(engine_videos, **dict(KW, **kwargs))


def test_an_index_file_keeps_the_manifest_weights(engine_videos, tmp_path):
    from ringload._indexfile_build import build_index
    from ringload._source import resolve_source

    man = tmp_path / "w.jsonl"
    man.write_text("".join(f'{{"path": "{p}", "weight": {w}}}\n' for p, w in zip(engine_videos, [1, 0, 3, 0.5])))
    out = tmp_path / "w.ringindex"
    build_index(resolve_source(str(man)), str(out), workers=1)
    np.testing.assert_array_equal(resolve_source(str(out)).weights, [1, 0, 3, 0.5])
    with ringload.VideoLoader(str(out), num_workers=1, **dict(KW, sampling="strict")) as loader:
        assert np.allclose(loader._plan().repeat_factors, np.array([1, 0, 3, 0.5]) / 1.125)
        assert 1 not in videos_of(collect(loader))
