"""Per-video epochs (issue 12): ``plan_epoch(..., clips_per_video=k)``.

Statistical tests use fixed seeds, so each passes or fails deterministically; family-wise
alpha = 1e-3 (Bonferroni), as in test_plan.py.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_plan import FAMILY_ALPHA, chi2_quantile, chi2_stat
from test_plan import settings_kw as base_settings_kw

from ringload import ConfigError, Plan, plan_epoch

# test_plan's strategies, plus the number of clips per video.
settings_kw = dict(base_settings_kw, clips_per_video=st.integers(1, 9))


def starts_of(lengths, clip_len, frame_stride):
    return np.maximum(np.asarray(lengths, dtype=np.int64) - (clip_len - 1) * frame_stride, 0)


def union(lengths, world_size, **kw):
    plans = [plan_epoch(lengths, rank=r, world_size=world_size, **kw) for r in range(world_size)]
    rows = [tuple(x) for p in plans for b in p for x in b.tolist()]
    return plans, rows


@given(drop_last=st.booleans(), **settings_kw)
def test_every_usable_video_k_times_distinct_starts_over_disjoint_equal_ranks(lengths, world_size, drop_last, **kw):
    k = kw["clips_per_video"]
    plans, rows = union(lengths, world_size, drop_last=drop_last, **kw)
    assert len({len(p) for p in plans}) == 1, "ranks must have equal batch counts"
    assert all(isinstance(p, Plan) for p in plans)
    n = starts_of(lengths, kw["clip_len"], kw["frame_stride"])
    per_video = collections.defaultdict(list)
    for v, s in rows:
        assert 0 <= s < n[v], f"start {s} of video {v} is not a valid start"
        per_video[v].append(s)
    usable = int((n > 0).sum())
    assert plans[0].total_samples == usable * k
    assert sum(p.num_samples for p in plans) == len(rows)
    if drop_last:
        assert usable * k - len(rows) < world_size * kw["batch_size"]
    else:
        assert len(rows) == usable * k
        assert set(per_video) == set(np.flatnonzero(n > 0).tolist())
        assert all(len(s) == k for s in per_video.values()), "a video is not drawn exactly k times"
    for v, s in per_video.items():
        # Distinct while the video has k starts; otherwise every start before any repeats.
        assert len(set(s)) == min(len(s), n[v]) or kw["mode"] == "sequential"


@given(**settings_kw)
def test_ranks_take_disjoint_parts_of_one_global_epoch(lengths, world_size, **kw):
    _, rows = union(lengths, world_size, drop_last=False, **kw)
    _, whole = union(lengths, 1, drop_last=False, **kw)
    assert collections.Counter(rows) == collections.Counter(whole)
    again = plan_epoch(lengths, rank=world_size - 1, world_size=world_size, **kw)
    last = plan_epoch(list(lengths), rank=world_size - 1, world_size=world_size, **kw)
    assert all(np.array_equal(again[i], last[i]) and np.array_equal(again.chunks(i), last.chunks(i)) for i in range(len(last)))


@given(**settings_kw)
def test_bounded_video_is_one_short_run_spread_over_the_window(lengths, world_size, **kw):
    kw["mode"] = "bounded"
    k = kw["clips_per_video"]
    for r in range(world_size):
        p = plan_epoch(lengths, rank=r, world_size=world_size, drop_last=False, **kw)
        where = collections.defaultdict(list)
        starts = collections.defaultdict(list)
        for b in range(len(p)):
            batch, chunks = p[b], p.chunks(b)
            ext = p.chunk_extent(chunks)
            assert np.array_equal(ext[:, 0], batch[:, 0])
            assert np.all((ext[:, 1] <= batch[:, 1]) & (batch[:, 1] <= ext[:, 2]))
            counts = collections.Counter(chunks.tolist())
            assert max(counts.values(), default=0) <= p.max_per_chunk
            for c, (v, s) in zip(chunks.tolist(), batch.tolist()):
                where[c].append(b)
                starts[v].append(s)
        # As for bounded chunks: within chunk_window batches, but for the few that straddle
        # the wrap from the last batch of a dealing round to the first of the next.
        wide = [c for c, ks in where.items() if max(ks) - min(ks) + 1 > p.chunk_window]
        assert len(wide) <= p.rounds
        w = max(p.chunk_len, k)
        for v, s in starts.items():
            assert max(s) - min(s) < w + 2 * k, "a video's starts are not one short run"


@pytest.mark.parametrize("mode", ["strict", "bounded"])
def test_each_start_is_uniform_over_the_valid_starts(mode):
    # Videos of 7, 23 and 100 valid starts, k = 3 (bounded window 8: the videos get cut).
    # Over 3000 seeds, each of the k starts of each video is uniform: 9 chi-square tests
    # per mode, 2 modes, alpha 1e-3 / 18 each.
    lengths, k, seeds = [7, 23, 100], 3, 3000
    counts = {(v, j): np.zeros(n, dtype=np.int64) for v, n in enumerate(lengths) for j in range(k)}
    for seed in range(seeds):
        p = plan_epoch(lengths, batch_size=sum(lengths), seed=seed, mode=mode, chunk_len=8, clips_per_video=k,
                       drop_last=False)
        j = collections.Counter()
        by_video = collections.defaultdict(list)
        for v, s in p[0].tolist():
            by_video[v].append(s)
        for v, ss in by_video.items():
            # The plan deals a video's samples in a random order: sort by slot via the keyed draws.
            for jj, s in enumerate(ss):
                counts[(v, jj)][s] += 1
            j[v] += len(ss)
        assert all(j[v] == k for v in range(3))
    limit = {n: chi2_quantile(1 - FAMILY_ALPHA / 18, n - 1) for n in lengths}
    for (v, jj), c in counts.items():
        assert chi2_stat(c) < limit[lengths[v]], f"{mode}: video {v} draw {jj} is not uniform"


def test_chi_square_rejects_a_fixed_start():
    c = np.zeros(23, dtype=np.int64)
    c[11] = 3000
    assert chi2_stat(c) > chi2_quantile(1 - FAMILY_ALPHA / 18, 22)


def test_sequential_views_are_uniformly_spaced_and_centred_for_one():
    one = plan_epoch([5, 10, 2, 1], batch_size=10, seed=0, mode="sequential", clips_per_video=1, drop_last=False)
    assert one[0].tolist() == [[0, 2], [1, 4], [2, 0], [3, 0]]
    three = plan_epoch([11, 3, 0], batch_size=10, seed=0, mode="sequential", clips_per_video=3, drop_last=False)
    assert three[0].tolist() == [[0, 0], [0, 5], [0, 10], [1, 0], [1, 1], [1, 2]]
    clips = plan_epoch([20], batch_size=10, seed=0, mode="sequential", clip_len=4, frame_stride=2, clips_per_video=2,
                       drop_last=False)
    assert clips[0].tolist() == [[0, 0], [0, 13]]


def test_more_clips_than_starts_repeats_only_after_every_start():
    p = plan_epoch([4, 30], batch_size=20, seed=3, mode="strict", clip_len=2, clips_per_video=7, drop_last=False)
    rows = p[0].tolist()
    short = sorted(s for v, s in rows if v == 0)
    assert len(short) == 7 and set(short) == {0, 1, 2}
    assert len({s for v, s in rows if v == 1}) == 7


def test_the_epoch_length_is_videos_times_k_and_changes_with_the_epoch():
    a = plan_epoch([50] * 6, batch_size=4, seed=1, mode="strict", clips_per_video=2)
    b = plan_epoch([50] * 6, batch_size=4, seed=1, epoch=1, mode="strict", clips_per_video=2)
    assert a.total_samples == 12 and len(a) == 3
    assert sorted(map(tuple, np.concatenate(list(a)).tolist())) != sorted(map(tuple, np.concatenate(list(b)).tolist()))
    assert "clips_per_video=2" in repr(a)


@pytest.mark.parametrize("value", [0, -1, 2.0, True, 10**6])
def test_bad_clips_per_video_is_a_config_error_naming_it(value):
    with pytest.raises(ConfigError, match="clips_per_video"):
        plan_epoch([10], batch_size=2, seed=0, clips_per_video=value)


def test_plan_pickles():
    import pickle

    p = plan_epoch([50, 70, 3], batch_size=8, seed=1, chunk_len=8, clip_len=4, clips_per_video=5)
    q = pickle.loads(pickle.dumps(p))
    assert all(np.array_equal(p[k], q[k]) and np.array_equal(p.chunks(k), q.chunks(k)) for k in range(len(p)))


@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=8), batch_size=st.integers(1, 7),
       world_size=st.integers(1, 3), clips_per_video=st.integers(1, 5), views=st.integers(1, 3))
def test_evaluation_views_each_once_over_the_ranks_in_file_order(lengths, batch_size, world_size, clips_per_video, views):
    rows = []
    for r in range(world_size):
        p = plan_epoch(lengths, batch_size=batch_size, seed=0, mode="sequential", clip_len=3, rank=r,
                       world_size=world_size, drop_last=False, clips_per_video=clips_per_video, views_per_clip=views)
        for b in range(len(p)):
            rows += [(v, c, w, s) for (v, s), (c, w) in zip(p[b].tolist(), p.views(b).tolist())]
    usable = [v for v, n in enumerate(lengths) if n >= 3]
    want = [(v, c, w) for v in usable for c in range(clips_per_video) for w in range(views)]
    assert [r[:3] for r in rows] == want  # every view once, in file order, no padding duplicates
    starts = {(v, c): s for v, c, _, s in rows}
    assert all(s == starts[(v, c)] for v, c, _, s in rows), "the views of a clip share its start"


def test_views_need_clips_per_video():
    with pytest.raises(ConfigError, match="views_per_clip"):
        plan_epoch([10], batch_size=2, seed=0, views_per_clip=3)
