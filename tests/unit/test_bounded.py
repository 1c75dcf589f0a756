"""The bounded defaults' rule (ringload._bounded): chunk_len and max_per_chunk from the data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringload import _bounded, plan_epoch
from ringload._bounded import CANDIDATES, WORK_BATCHES, choose, chunk_window, design_effect_bound, ring_batches
from ringload._config import LoaderConfig
from ringload._dataset import settings as loader_settings
from ringload._ring import RingLayout
from ringload.errors import ConfigError


def _slot(batch=128, size=224, clip=1):
    return RingLayout(1, (batch, clip, size, size, 3)).slot_stride


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 512), chunk=st.integers(1, 300), m=st.integers(1, 64),
       batches=st.integers(2, 400))
def test_chunk_window_is_the_plans(batch, chunk, m, batches):
    # The rule sizes the look-ahead with the plan's own window (away from the epoch's end).
    lengths = np.full(4, batch * batches // 4 + chunk)
    plan = plan_epoch(lengths, batch_size=batch, seed=1, mode="bounded", chunk_len=chunk, max_per_chunk=m)
    if plan.chunk_len == chunk and plan.num_batches >= chunk_window(chunk, batch, m):
        assert plan.chunk_window == chunk_window(chunk, batch, m)
        assert plan.min_block == _bounded.min_block(batch, m)


def test_gop30_1080p_default_batch_takes_the_smallest_m_whose_window_fits():
    d = choose(median_gop=30, batch_size=128, slot_bytes=_slot())
    assert d.chunk_len == 120
    fit = ring_batches(_slot())
    assert d.max_per_chunk == 4
    # 4 fits, 2 does not: the rule's choice is the smallest that fits.
    assert chunk_window(120, 128, 4) + WORK_BATCHES <= fit < chunk_window(120, 128, 2) + WORK_BATCHES
    assert d.chunk_window == chunk_window(120, 128, 4)


def test_long_gop_takes_a_larger_m_and_small_batches_m_1():
    assert choose(median_gop=250, batch_size=128, slot_bytes=_slot()).max_per_chunk == 8
    # One whole GOP (250), not 256: chunks are cut on keyframes.
    assert choose(median_gop=250, batch_size=128, slot_bytes=_slot()).chunk_len == 250
    # Small batches: a 200-batch window still fits the ring, so bounded is strict-like per batch.
    small = choose(median_gop=30, batch_size=16, slot_bytes=_slot(batch=16))
    assert small.max_per_chunk == 1 and design_effect_bound(small.max_per_chunk) == 1.0


@pytest.mark.parametrize(("gop", "chunk_len", "grid"), [
    (30, 120, 30), (10, 70, 10), (12, 72, 12), (16, 64, 16), (60, 240, 60), (120, 240, 120), (250, 250, 250),
    (300, 256, 1), (29.5, 118, 1), (1, 64, 1),
])  # fmt: skip
def test_chunks_are_whole_gops_cut_on_keyframes_where_the_gop_is_whole(gop, chunk_len, grid):
    d = choose(median_gop=gop, batch_size=128, slot_bytes=_slot())
    assert (d.chunk_len, d.cut_grid) == (chunk_len, grid)
    # No grid where starts are not frames (fps, trimmed rows), nor where the user's length is not whole GOPs.
    assert choose(median_gop=gop, batch_size=128, slot_bytes=_slot(), frame_starts=False).cut_grid == 1
    assert choose(median_gop=30, batch_size=128, slot_bytes=_slot(), chunk_len=64).cut_grid == 1
    assert choose(median_gop=30, batch_size=128, slot_bytes=_slot(), chunk_len=90).cut_grid == 30


@settings(max_examples=40, deadline=None)
@given(gop=st.integers(2, 40), per=st.integers(1, 6), n=st.lists(st.integers(0, 700), min_size=1, max_size=12),
       seed=st.integers(0, 2**32), epoch=st.integers(0, 50))
def test_a_cut_grid_puts_every_cut_on_a_multiple_of_it_and_keeps_each_start_once(gop, per, n, seed, epoch):
    c = gop * per
    lengths = np.array(n)
    plan = plan_epoch(lengths, batch_size=4, seed=seed, epoch=epoch, mode="bounded", chunk_len=c, max_per_chunk=2,
                      cut_grid=gop, drop_last=False)  # fmt: skip
    if plan.chunk_len != c:
        assert plan.cut_grid in (1, gop)
        return
    assert plan.cut_grid == gop
    ext = plan.chunk_extent(np.arange(plan.num_chunks))
    assert np.all(ext[:, 1] % gop == 0)  # every chunk starts on the grid
    assert np.all(ext[:, 2] - ext[:, 1] < c)
    got = np.concatenate([plan[k] for k in range(len(plan))]) if len(plan) else np.zeros((0, 2), dtype=np.int64)
    want = np.array([(v, s) for v, m in enumerate(n) for s in range(m)], dtype=np.int64).reshape(-1, 2)
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))


def test_cut_points_move_over_the_grid_across_epochs():
    # Offsets are uniform over the C / G grid phases: each appears over many epochs.
    firsts = set()
    for epoch in range(200):
        plan = plan_epoch([1000], batch_size=8, seed=5, epoch=epoch, mode="bounded", chunk_len=120, max_per_chunk=2,
                          cut_grid=30)  # fmt: skip
        ext = plan.chunk_extent(np.arange(plan.num_chunks))
        firsts.add(int(ext[:, 2].min() + 1))  # the end of the video's first chunk
    assert firsts == {30, 60, 90, 120}


def test_huge_batches_fall_back_to_16_and_say_why():
    d = choose(median_gop=30, batch_size=128, slot_bytes=_slot(size=1024, clip=8))
    assert d.max_per_chunk == CANDIDATES[-1]
    assert "no look-ahead fits" in d.reason


def test_user_values_and_min_effective_batch_win():
    assert choose(median_gop=30, batch_size=128, slot_bytes=_slot(), max_per_chunk=16).max_per_chunk == 16
    assert choose(median_gop=30, batch_size=128, slot_bytes=_slot(), chunk_len=64).chunk_len == 64
    d = choose(median_gop=30, batch_size=128, slot_bytes=_slot(), min_effective_batch=32)
    assert d.max_per_chunk == 4 and design_effect_bound(4) == 4.0 and 128 / design_effect_bound(4) >= 32
    assert choose(median_gop=30, batch_size=128, slot_bytes=_slot(), min_effective_batch=128).max_per_chunk == 1


def test_no_gop_known_takes_the_plan_default():
    from ringload.plan import DEFAULT_CHUNK_LEN

    assert choose(median_gop=None, batch_size=128, slot_bytes=_slot()).chunk_len == DEFAULT_CHUNK_LEN


def test_min_effective_batch_validation():
    with pytest.raises(ConfigError, match="min_effective_batch"):
        LoaderConfig(min_effective_batch=0)
    with pytest.raises(ConfigError, match="min_effective_batch"):
        LoaderConfig(batch_size=16, min_effective_batch=17)
    with pytest.raises(ConfigError, match="pass one of them"):
        LoaderConfig(min_effective_batch=8, max_per_chunk=4)


def test_effective_batch_size_is_public():
    import ringload

    assert ringload.effective_batch_size(128, 4) == 32.0
    assert ringload.effective_batch_size(128, 4, rho=0.5) == pytest.approx(128 / 2.5)


@dataclasses.dataclass
class _Data:
    paths: list
    plan_lengths: np.ndarray
    size: tuple
    chunk_len: int | None
    max_per_chunk: int | None
    bounded: object
    rows: object = None


def test_resume_fingerprint_covers_the_derived_values():
    cfg = LoaderConfig()
    lengths = np.array([300, 300])

    def fp(c, m, bounded=True, grid=1):
        rule = _bounded.BoundedDefaults(c, m, 0, "", grid) if bounded else None
        d = _Data(["a", "b"], lengths, (224, 224), c, m, rule)
        return loader_settings(cfg, d, 0, 1)

    assert fp(120, 4) == fp(120, 4)
    assert fp(120, 4) != fp(120, 8)
    assert fp(120, 4) != fp(256, 4)
    assert fp(120, 4, grid=30) != fp(120, 4, grid=1)
    # Without a grid the key is absent: states saved before cut grids existed still resume.
    assert "cut_grid_in_use" not in fp(120, 4) and fp(120, 4, grid=30)["cut_grid_in_use"] == 30
    # Outside bounded mode nothing is derived: the fingerprint has no such key.
    assert "max_per_chunk_in_use" not in fp(None, None, bounded=False)


def test_stats_bound_in_per_video_epochs_counts_a_videos_clips_as_its_chunk():
    from ringload._loader_stats import design_effect as _design_effect

    lengths = np.full(40, 300)
    plain = plan_epoch(lengths, batch_size=16, seed=0, mode="bounded", max_per_chunk=8)
    assert _design_effect(16, plain) == {"design_effect_bound": 8.0, "effective_batch_size": 2.0}
    one = plan_epoch(lengths, batch_size=16, seed=0, mode="bounded", max_per_chunk=8, clips_per_video=1)
    assert _design_effect(16, one)["design_effect_bound"] == 1.0  # one clip per video: no two share a chunk
    three = plan_epoch(lengths, batch_size=16, seed=0, mode="bounded", max_per_chunk=8, clips_per_video=3)
    assert _design_effect(16, three)["design_effect_bound"] == 3.0
