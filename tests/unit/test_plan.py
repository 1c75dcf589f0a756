"""Properties of the sampling plan (issue: strict, bounded and sequential epochs).

Statistical tests use fixed seeds, so each passes or fails deterministically; their
significance levels are stated where they are used (family-wise alpha = 1e-3, Bonferroni).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import statistics
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ringload
from ringload import ConfigError, plan_epoch, segment_indices
from ringload import plan as plan_mod

FAMILY_ALPHA = 1e-3


def chi2_quantile(p: float, dof: int) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (good to < 1 % for dof >= 5)."""
    z = statistics.NormalDist().inv_cdf(p)
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2_stat(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def valid_samples(lengths, clip_len=1, frame_stride=1) -> set:
    span = (clip_len - 1) * frame_stride + 1
    return {(v, s) for v, n in enumerate(lengths) for s in range(max(0, n - span + 1))}


def all_ranks(lengths, world_size, **kw):
    return [plan_epoch(lengths, rank=r, world_size=world_size, **kw) for r in range(world_size)]


def digest(plan) -> str:
    h = hashlib.sha256()
    for k in range(len(plan)):
        h.update(plan[k].tobytes())
        h.update(plan.chunks(k).tobytes())
    return h.hexdigest()


settings_kw = dict(
    lengths=st.lists(st.integers(0, 60), min_size=0, max_size=10),
    batch_size=st.integers(1, 12),
    clip_len=st.integers(1, 4),
    frame_stride=st.integers(1, 3),
    world_size=st.integers(1, 4),
    mode=st.sampled_from(["strict", "bounded", "sequential"]),
    chunk_len=st.none() | st.integers(1, 20),
    max_per_chunk=st.none() | st.integers(1, 8),
    seed=st.integers(0, 2**40),
    epoch=st.integers(0, 5),
)


# 1. Ranks partition the epoch ------------------------------------------------------------


@given(drop_last=st.booleans(), **settings_kw)
def test_ranks_are_disjoint_equal_and_cover_every_sample(lengths, world_size, drop_last, **kw):
    plans = all_ranks(lengths, world_size, drop_last=drop_last, **kw)
    b = kw["batch_size"]
    assert len({len(p) for p in plans}) == 1, "ranks must have equal batch counts"
    seen = []
    last_sizes = []
    for p in plans:
        for k in range(len(p)):
            batch = p[k]
            assert batch.dtype == np.int64 and batch.shape[1] == 2
            assert len(batch) == p.batch_len(k)
            if drop_last or k < len(p) - 1:
                assert len(batch) == b
            seen.extend(map(tuple, batch.tolist()))
        if len(p):
            last_sizes.append(len(p[len(p) - 1]))
        assert p.num_samples == sum(len(x) for x in p)
    valid = valid_samples(lengths, kw["clip_len"], kw["frame_stride"])
    assert len(seen) == len(set(seen)), "a sample appears twice in one epoch"
    assert set(seen) <= valid
    if drop_last:
        # The remainder left out is smaller than one round of batches over all ranks.
        assert len(valid) - len(seen) < world_size * b
    else:
        assert set(seen) == valid
        if last_sizes:
            assert max(last_sizes) - min(last_sizes) <= 1


# 2. Determinism ------------------------------------------------------------------------------


@given(**settings_kw)
def test_same_arguments_same_plan_other_epoch_or_seed_other_plan(lengths, world_size, **kw):
    a = plan_epoch(lengths, rank=world_size - 1, world_size=world_size, **kw)
    b = plan_epoch(list(lengths), rank=world_size - 1, world_size=world_size, **kw)
    assert digest(a) == digest(b)
    n = a.total_samples
    if kw["mode"] != "sequential" and n >= 24:
        # P(two independent shuffles of >= 24 samples agree) is far below 1e-12.
        whole = dict(kw, batch_size=n, world_size=1, rank=0, drop_last=False)
        ref = plan_epoch(lengths, **whole)[0]
        other_epoch = plan_epoch(lengths, **dict(whole, epoch=kw["epoch"] + 1))[0]
        other_seed = plan_epoch(lengths, **dict(whole, seed=kw["seed"] + 1))[0]
        assert not np.array_equal(ref, other_epoch)
        assert not np.array_equal(ref, other_seed)


DETERMINISM_CASES = [
    dict(lengths=[30, 0, 17, 64, 5], batch_size=8, seed=7, epoch=2, mode="bounded", chunk_len=6, max_per_chunk=3),
    dict(lengths=[30, 0, 17, 64, 5], batch_size=8, seed=7, epoch=2, mode="strict", world_size=3, rank=1),
    dict(lengths=[1000] * 50, batch_size=32, seed=123456789, clip_len=4, frame_stride=2, drop_last=False),
    dict(lengths=[10**4] * 300, batch_size=16, seed=5, mode="bounded", world_size=2, rank=1),
]
_CHILD = """
import hashlib, json, sys
from ringload import plan_epoch
out = []
for case in json.loads(sys.argv[1]):
    p = plan_epoch(case.pop("lengths"), **case)
    h = hashlib.sha256()
    for k in range(min(len(p), 200)):
        h.update(p[k].tobytes()); h.update(p.chunks(k).tobytes())
    out.append(h.hexdigest())
print(json.dumps(out))
"""


def test_same_plan_in_another_process():
    mine = []
    for case in DETERMINISM_CASES:
        case = dict(case)
        p = plan_epoch(case.pop("lengths"), **case)
        h = hashlib.sha256()
        for k in range(min(len(p), 200)):
            h.update(p[k].tobytes())
            h.update(p.chunks(k).tobytes())
        mine.append(h.hexdigest())
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(DETERMINISM_CASES)],
        capture_output=True, text=True, timeout=120, check=True,
        env={"PYTHONPATH": str(plan_mod.__file__).rsplit("/ringload/", 1)[0], "PYTHONHASHSEED": "12345"},
    )
    assert json.loads(res.stdout) == mine


# 3. Bounded chunks ---------------------------------------------------------------------------


@given(drop_last=st.booleans(), **{k: v for k, v in settings_kw.items() if k != "mode"})
def test_bounded_chunks_are_short_runs_of_one_video_capped_per_batch(lengths, world_size, drop_last, **kw):
    for p in all_ranks(lengths, world_size, drop_last=drop_last, mode="bounded", **kw):
        asked = kw["chunk_len"] or plan_mod.DEFAULT_CHUNK_LEN
        cap = kw["max_per_chunk"] or plan_mod.default_max_per_chunk(kw["batch_size"])
        assert p.chunk_len <= asked and p.max_per_chunk == cap
        where = collections.defaultdict(list)
        for k in range(len(p)):
            batch, chunks = p[k], p.chunks(k)
            ext = p.chunk_extent(chunks)
            assert np.array_equal(ext[:, 0], batch[:, 0]), "a chunk lies inside one video"
            assert np.all((ext[:, 1] <= batch[:, 1]) & (batch[:, 1] <= ext[:, 2]))
            assert np.all(ext[:, 2] - ext[:, 1] + 1 <= p.chunk_len)
            _, counts = np.unique(chunks, return_counts=True)
            assert counts.max(initial=0) <= cap
            for c in chunks.tolist():
                where[c].append(k)
        # A chunk sits in <= chunk_window consecutive batches, except the few that
        # straddle the wrap from the last batch of a round to the first of the next.
        wide = [c for c, ks in where.items() if max(ks) - min(ks) + 1 > p.chunk_window]
        assert len(wide) <= p.rounds


def test_bounded_chunk_boundaries_move_between_epochs():
    lengths = [500] * 4
    ext = []
    for epoch in range(2):
        p = plan_epoch(lengths, batch_size=16, seed=3, epoch=epoch, chunk_len=32, max_per_chunk=4)
        ext.append({tuple(e) for e in p.chunk_extent(np.arange(p.num_chunks)).tolist()})
    # The chunks of one epoch cover each video exactly; the next epoch cuts elsewhere.
    assert sum(e[2] - e[1] + 1 for e in ext[0]) == 2000
    assert ext[0] != ext[1]


def test_default_window_is_a_few_batches():
    p = plan_epoch([10**4] * 10, batch_size=128, seed=0)
    assert (p.chunk_len, p.max_per_chunk, p.rounds, p.min_block) == (64, 16, 8, 16)
    assert p.chunk_window == 5  # 1 + ceil(63 / 16)


# 4. and 6. Uniform positions, chunk_len=1 is strict --------------------------------------------

UNIFORM_LENGTHS = [1, 3, 7, 12, 5]  # 28 samples of one frame
UNIFORM_SEEDS = 1200
UNIFORM_CONFIGS = {
    "strict": dict(mode="strict"),
    "bounded": dict(mode="bounded", chunk_len=4, max_per_chunk=2),
    "bounded_c1": dict(mode="bounded", chunk_len=1, max_per_chunk=1),
}


def position_counts(config, *, drop_last, world_size=2, batch_size=4):
    n = sum(UNIFORM_LENGTHS)
    vid = np.repeat(np.arange(len(UNIFORM_LENGTHS)), UNIFORM_LENGTHS)
    gid_of = {(v, s): i for i, (v, s) in enumerate(zip(vid, np.concatenate([np.arange(m) for m in UNIFORM_LENGTHS])))}
    counts = collections.defaultdict(lambda: np.zeros(n, dtype=np.int64))
    for seed in range(UNIFORM_SEEDS):
        for rank in range(world_size):
            p = plan_epoch(UNIFORM_LENGTHS, batch_size=batch_size, seed=seed, rank=rank,
                           world_size=world_size, drop_last=drop_last, **config)
            for k in range(len(p)):
                for i, (v, s) in enumerate(p[k].tolist()):
                    counts[(rank, k, i)][gid_of[(v, s)]] += 1
    return counts


@pytest.mark.parametrize("name", sorted(UNIFORM_CONFIGS))
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_batch_position_is_uniform(name, drop_last):
    counts = position_counts(UNIFORM_CONFIGS[name], drop_last=drop_last)
    n = sum(UNIFORM_LENGTHS)
    # Family: 6 parametrisations x their positions; each test at alpha / (6 * positions).
    alpha = FAMILY_ALPHA / (6 * len(counts))
    limit = chi2_quantile(1 - alpha, n - 1)
    worst = max(chi2_stat(c) for c in counts.values())
    assert worst < limit, f"{name}: chi-square {worst:.1f} >= {limit:.1f} (alpha {alpha:.1e})"
    assert all(c.sum() == UNIFORM_SEEDS for c in counts.values())


def test_chi_square_rejects_a_fixed_order():
    # The same statistic on sequential mode (deterministic positions) must be far above the limit.
    counts = position_counts(dict(mode="sequential"), drop_last=False)
    limit = chi2_quantile(1 - FAMILY_ALPHA, sum(UNIFORM_LENGTHS) - 1)
    assert min(chi2_stat(c) for c in counts.values()) > 10 * limit


def batch_partition_counts(lengths, batch_size, seeds, **config):
    counts = collections.Counter()
    for seed in range(seeds):
        p = plan_epoch(lengths, batch_size=batch_size, seed=seed, drop_last=False, **config)
        counts[tuple(frozenset(map(tuple, p[k].tolist())) for k in range(len(p)))] += 1
    return counts


@pytest.mark.parametrize("config", [dict(mode="strict"), dict(mode="bounded", chunk_len=1, max_per_chunk=1),
                                    dict(mode="bounded", chunk_len=1, max_per_chunk=3)])
def test_batch_composition_is_uniform_for_strict_and_chunk_len_1(config):
    # 6 samples in 2 batches of 3: 20 equally likely splits under a uniform permutation.
    counts = batch_partition_counts([2, 4], 3, 1000, **config)
    assert len(counts) == 20
    alpha = FAMILY_ALPHA / 3
    assert chi2_stat(np.array(list(counts.values()))) < chi2_quantile(1 - alpha, 19)


def test_batch_composition_is_not_uniform_for_long_chunks():
    # Power check of the test above: chunks of 3 with 1 per batch forbid most splits.
    counts = batch_partition_counts([6], 3, 1000, mode="bounded", chunk_len=3, max_per_chunk=1)
    full = np.zeros(20)
    full[: len(counts)] = list(counts.values())
    assert chi2_stat(full) > chi2_quantile(1 - FAMILY_ALPHA, 19)


def test_chunk_len_1_chunks_are_single_samples():
    p = plan_epoch([40, 3, 17], batch_size=6, seed=9, chunk_len=1, max_per_chunk=4)
    assert p.chunk_len == 1 and p.num_chunks == 60
    for k in range(len(p)):
        ext = p.chunk_extent(p.chunks(k))
        assert np.array_equal(ext[:, 1], ext[:, 2])
        assert len(np.unique(p.chunks(k))) == len(p[k])


def pair_together_rate(config, pair, seeds=3000, lengths=(8, 8), batch_size=4):
    hits = 0
    for seed in range(seeds):
        p = plan_epoch(list(lengths), batch_size=batch_size, seed=seed, drop_last=True, **config)
        for k in range(len(p)):
            rows = set(map(tuple, p[k].tolist()))
            hits += pair[0] in rows and pair[1] in rows
    return hits


@pytest.mark.slow
def test_neighbours_meet_as_often_as_in_strict_when_chunk_len_is_1():
    # Under a uniform permutation of 16 samples into batches of 4, two given samples share
    # a batch with p = 3/15. Two-sided binomial z-test, alpha = 1e-3 / 3 per test.
    seeds, p0 = 3000, 3 / 15
    z_limit = statistics.NormalDist().inv_cdf(1 - FAMILY_ALPHA / 6)
    sd = math.sqrt(seeds * p0 * (1 - p0))
    pair = ((0, 3), (0, 4))
    for config in [dict(mode="strict"), dict(mode="bounded", chunk_len=1, max_per_chunk=2)]:
        assert abs(pair_together_rate(config, pair, seeds) - seeds * p0) / sd < z_limit
    # With chunks of 4 starts and 2 per batch, neighbours meet far more often.
    long_chunks = pair_together_rate(dict(mode="bounded", chunk_len=4, max_per_chunk=2), pair, seeds)
    assert (long_chunks - seeds * p0) / sd > z_limit


def test_large_domains_use_a_feistel_permutation_that_is_uniform(monkeypatch):
    from ringload import _perm

    monkeypatch.setattr(_perm, "_EXPLICIT_MAX", 0)
    perm = plan_mod._Perm(5000, 11)
    x = np.arange(5000)
    y = perm.fwd(x)
    assert np.array_equal(np.sort(y), x) and np.array_equal(perm.inv(y), x)
    # Image of one point across 2000 keys: uniform over 20 bins (chi-square, alpha 1e-3).
    hits = np.array([plan_mod._Perm(5000, key).fwd(np.array([17]))[0] for key in range(2000)])
    assert chi2_stat(np.bincount(hits * 20 // 5000, minlength=20)) < chi2_quantile(1 - FAMILY_ALPHA, 19)
    # Whole plans still partition the epoch on the Feistel path.
    lengths = [37, 0, 250, 91]
    for mode in ["strict", "bounded"]:
        plans = all_ranks(lengths, 3, batch_size=7, seed=1, mode=mode, drop_last=False, chunk_len=9)
        seen = [tuple(r) for p in plans for b in p for r in b.tolist()]
        assert sorted(seen) == sorted(valid_samples(lengths))


# 5. Sequential -------------------------------------------------------------------------------


@given(drop_last=st.booleans(), **{k: v for k, v in settings_kw.items() if k != "mode"})
def test_sequential_is_file_order_once(lengths, world_size, drop_last, **kw):
    plans = all_ranks(lengths, world_size, drop_last=drop_last, mode="sequential", **kw)
    stream = [tuple(r) for p in plans for b in p for r in b.tolist()]
    order = sorted(valid_samples(lengths, kw["clip_len"], kw["frame_stride"]))
    # Ranks hold contiguous pieces of file order, rank 0 first.
    assert stream == order[: len(stream)]
    if not drop_last:
        assert len(stream) == len(order)
    for p in plans:
        for k in range(len(p)):
            assert np.array_equal(p.chunks(k), p[k][:, 0])


# Laziness, API, validation -----------------------------------------------------------------


def test_ten_billion_samples_need_memory_for_videos_only():
    lengths = np.full(10**5, 10**5)  # 10^10 samples, 1.6 * 10^8 chunks
    tracemalloc.start()
    try:
        p = plan_epoch(lengths, batch_size=256, seed=1)
        first, last = p[0], p[len(p) - 1]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert p.total_samples == 10**10 and p.num_chunks > 10**8
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    for batch in (first, last):
        assert np.all((batch[:, 0] >= 0) & (batch[:, 0] < 10**5) & (batch[:, 1] >= 0) & (batch[:, 1] < 10**5))


def test_plan_api_echoes_config_and_iterates():
    p = plan_epoch(np.array([20, 9]), batch_size=4, seed=2, epoch=1, clip_len=2, frame_stride=3, rank=1, world_size=2)
    assert p.config.epoch == 1 and p.config.rank == 1 and p.config.clip_len == 2 and p.config.span == 4
    assert p.total_samples == 17 + 6 and len(p) == p.num_batches == 2
    assert [b.tolist() for b in p] == [p[0].tolist(), p[1].tolist()]
    assert np.array_equal(p[-1], p[1])
    with pytest.raises(IndexError):
        p[2]
    assert "bounded" in repr(p)
    assert set(ringload.__all__) >= {"plan_epoch", "Plan", "segment_indices"}
    assert isinstance(p, ringload.Plan)


def test_short_videos_are_skipped():
    p = plan_epoch([2, 10, 0, 3], batch_size=1, seed=0, clip_len=3, mode="sequential", drop_last=False)
    assert [tuple(b[0]) for b in p] == [(1, s) for s in range(8)] + [(3, 0)]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(seed="x"), "seed"),
        (dict(epoch=-1), "epoch"),
        (dict(mode="random"), "mode"),
        (dict(clip_len=0), "clip_len"),
        (dict(frame_stride=0), "frame_stride"),
        (dict(chunk_len=0), "chunk_len"),
        (dict(chunk_len=10**6), "chunk_len"),
        (dict(max_per_chunk=0), "max_per_chunk"),
        (dict(rank=2, world_size=2), "rank"),
        (dict(world_size=0), "world_size"),
        (dict(drop_last="yes"), "drop_last"),
        (dict(lengths=[3, -1]), "lengths"),
        (dict(lengths=[[3, 4]]), "lengths"),
        (dict(lengths=[1.5]), "lengths"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(kwargs, name):
    args = dict(lengths=[10, 20], batch_size=4, seed=0)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=name):
        plan_epoch(args.pop("lengths"), **args)


# segment_indices -------------------------------------------------------------------------------


@given(num_frames=st.integers(1, 500), num_segments=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_segments_one_frame_per_part(num_frames, num_segments, seed):
    idx = segment_indices(num_frames, num_segments, seed=seed)
    centre = segment_indices(num_frames, num_segments, seed=seed, mode="center")
    assert idx.dtype == np.int64 and len(idx) == len(centre) == num_segments
    assert np.all((idx >= 0) & (idx < num_frames)) and np.all(np.diff(idx) >= 0)
    if num_frames >= num_segments:
        j = np.arange(num_segments)
        lo, hi = j * num_frames // num_segments, (j + 1) * num_frames // num_segments
        assert np.all((lo <= idx) & (idx < hi)) and np.all((lo <= centre) & (centre < hi))
        assert len(np.unique(idx)) == num_segments
    assert np.array_equal(idx, segment_indices(num_frames, num_segments, seed=seed))


def test_segments_random_is_uniform_within_parts_and_center_is_fixed():
    # 100 frames in 4 parts of 25; 4000 seeds; chi-square per part, alpha 1e-3 / 4.
    draws = np.array([segment_indices(100, 4, seed=s) for s in range(4000)])
    for j in range(4):
        counts = np.bincount(draws[:, j] - 25 * j, minlength=25)
        assert chi2_stat(counts) < chi2_quantile(1 - FAMILY_ALPHA / 4, 24)
    assert segment_indices(100, 4, seed=0, mode="center").tolist() == [12, 37, 62, 87]
    assert segment_indices(3, 5, seed=0, mode="center").tolist() == [0, 0, 1, 1, 2]
    with pytest.raises(ConfigError, match="mode"):
        segment_indices(10, 2, seed=0, mode="uniform")
    with pytest.raises(ConfigError, match="num_segments"):
        segment_indices(10, 0, seed=0)


@pytest.mark.parametrize("chunk_len, max_per_chunk", [(300, 7), (1000, 64)])
def test_long_chunks_use_the_affine_inner_shuffle_and_keep_every_property(chunk_len, max_per_chunk):
    lengths = [25000, 0, 7310, 12000]
    plans = all_ranks(lengths, 2, batch_size=96, seed=4, chunk_len=chunk_len, max_per_chunk=max_per_chunk,
                      drop_last=False)
    seen = []
    for p in plans:
        assert p.chunk_len == chunk_len
        for k in range(len(p)):
            _, counts = np.unique(p.chunks(k), return_counts=True)
            assert counts.max() <= max_per_chunk
            ext = p.chunk_extent(p.chunks(k))
            assert np.all((ext[:, 1] <= p[k][:, 1]) & (p[k][:, 1] <= ext[:, 2]))
            seen.extend(map(tuple, p[k].tolist()))
    assert sorted(seen) == sorted(valid_samples(lengths))


def test_plan_pickles_and_chunk_ids_are_checked():
    import pickle

    p = plan_epoch([50, 70], batch_size=8, seed=1, chunk_len=8, max_per_chunk=2)
    q = pickle.loads(pickle.dumps(p))
    assert all(np.array_equal(p[k], q[k]) and np.array_equal(p.chunks(k), q.chunks(k)) for k in range(len(p)))
    with pytest.raises(IndexError):
        p.chunk_extent([p.num_chunks])
    for mode in ["strict", "sequential"]:
        s = plan_epoch([50, 70], batch_size=8, seed=1, mode=mode)
        assert s.rounds == 1 and s.min_block == 8
        ext = s.chunk_extent(s.chunks(0))
        assert np.all((ext[:, 1] <= s[0][:, 1]) & (s[0][:, 1] <= ext[:, 2]))
