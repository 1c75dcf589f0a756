"""Weighted and class-balanced per-video epochs (issue 12): ``plan_epoch(..., weights=, balance=)``.

Statistical tests use fixed seeds, so each passes or fails deterministically; family-wise
alpha = 1e-3 (Bonferroni), as in test_plan.py. The targets are computed here from the
definitions (LVIS repeat factors, n_c ** power shares), not by the code under test.
"""

from __future__ import annotations

import collections
import contextlib
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_plan import FAMILY_ALPHA, chi2_quantile, digest
from test_plan import settings_kw as base_settings_kw

from ringload import ConfigError, plan_epoch
from ringload._pervideo import MAX_CLIPS_PER_VIDEO
from ringload._weights import slot_counts

# test_plan's strategies without sequential mode (weights do not apply there), plus k.
settings_kw = dict(base_settings_kw, mode=st.sampled_from(["strict", "bounded"]), clips_per_video=st.integers(1, 4))


@st.composite
def lengths_and_weights(draw):
    lengths = draw(st.lists(st.integers(0, 40), min_size=1, max_size=8))
    weights = draw(st.lists(st.sampled_from([0.0, 0.25, 1.0, 1.5, 3.0]), min_size=len(lengths), max_size=len(lengths)))
    return lengths, weights


def chi2_fit(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


def rows_over_ranks(lengths, world_size, **kw):
    plans = [plan_epoch(lengths, rank=r, world_size=world_size, **kw) for r in range(world_size)]
    return plans, [tuple(x) for p in plans for b in p for x in b.tolist()]


@given(data=lengths_and_weights(), drop_last=st.booleans(), **{k: v for k, v in settings_kw.items() if k != "lengths"})
def test_weighted_epoch_is_one_global_epoch_split_over_disjoint_equal_ranks(data, world_size, drop_last, **kw):
    lengths, weights = data
    n = np.maximum(np.asarray(lengths) - (kw["clip_len"] - 1) * kw["frame_stride"], 0)
    if not any(w > 0 and s > 0 for w, s in zip(weights, n)):
        with pytest.raises(ConfigError, match="weights") if (n > 0).any() else contextlib.nullcontext():
            plan_epoch(lengths, weights=weights, **kw)
        return
    k = kw["clips_per_video"]
    plans, rows = rows_over_ranks(lengths, world_size, weights=weights, drop_last=drop_last, **kw)
    _, whole = rows_over_ranks(lengths, 1, weights=weights, drop_last=False, **kw)
    assert len({len(p) for p in plans}) == 1, "ranks must have equal batch counts"
    counts = plans[0].slot_counts
    assert all(np.array_equal(p.slot_counts, counts) for p in plans), "ranks disagree on the global epoch"
    # Repeat factors: weights normalised to mean 1 over the videos with a sample.
    w = np.where(n > 0, weights, 0.0)
    r = w * (n > 0).sum() / w.sum()
    assert np.allclose(plans[0].repeat_factors, r)
    assert np.all((counts == np.floor(k * r + 1e-9)) | (counts == np.ceil(k * r - 1e-9)))
    assert plans[0].total_samples == counts.sum()
    assert abs(counts.sum() - k * r.sum()) < 1 + 1e-6, "the epoch length is the rounded expected length"
    by_video = collections.Counter(v for v, _ in whole)
    assert by_video == collections.Counter({v: int(c) for v, c in enumerate(counts) if c})
    assert all(0 <= s < n[v] for v, s in rows)
    assert not any(w[v] == 0 for v, _ in rows), "a video of weight 0 was sampled"
    if drop_last:
        assert counts.sum() - len(rows) < world_size * kw["batch_size"]
        assert not collections.Counter(rows) - collections.Counter(whole)
    else:
        assert collections.Counter(rows) == collections.Counter(whole), "the ranks' union is not the global epoch"
    for p in plans:
        for b in range(len(p)):
            per_chunk = collections.Counter(p.chunks(b).tolist())
            assert max(per_chunk.values(), default=0) <= p.max_per_chunk
            ext = p.chunk_extent(p.chunks(b))
            assert np.all((ext[:, 1] <= p[b][:, 1]) & (p[b][:, 1] <= ext[:, 2]))


def test_weighted_plans_are_deterministic_and_change_with_the_epoch():
    kw = dict(batch_size=5, seed=7, mode="bounded", chunk_len=8, clips_per_video=3, weights=[0.5, 2, 1, 0, 1.3])
    a = plan_epoch([30, 50, 20, 40, 9], **kw)
    b = plan_epoch([30, 50, 20, 40, 9], **dict(kw, weights=np.array(kw["weights"])))
    assert digest(a) == digest(b) and np.array_equal(a.slot_counts, b.slot_counts)
    others = [plan_epoch([30, 50, 20, 40, 9], epoch=e, **kw) for e in range(1, 6)]
    assert len({digest(p) for p in others} | {digest(a)}) == 6
    assert len({tuple(p.slot_counts.tolist()) for p in others}) > 1, "the rounding does not change with the epoch"


def test_unweighted_plans_are_unchanged_by_uniform_weights():
    kw = dict(batch_size=4, seed=3, clips_per_video=2, drop_last=False)
    for mode in ("strict", "bounded"):
        assert digest(plan_epoch([20, 0, 35], mode=mode, **kw)) == digest(plan_epoch([20, 0, 35], mode=mode,
                                                                                     weights=[2, 7, 2], **kw))


def test_stochastic_rounding_is_unbiased_and_keeps_the_epoch_length():
    f = np.array([0.3, 1.7, 0.0, 2.5, 1.0, 0.05, 0.45])
    c = np.array([slot_counts(f, 2, 11, e) for e in range(4000)])
    assert set(np.unique(c.sum(axis=1)).tolist()) <= {math.floor(2 * f.sum()), math.ceil(2 * f.sum())}
    assert np.all(c.min(axis=0) >= np.floor(2 * f)) and np.all(c.max(axis=0) <= np.ceil(2 * f))
    # Bernoulli on the fractional part: mean within 4.5 standard errors for each video.
    frac = 2 * f - np.floor(2 * f)
    se = np.sqrt(np.maximum(frac * (1 - frac), 1e-12) / len(c))
    assert np.all(np.abs(c.mean(axis=0) - 2 * f) <= 4.5 * se + 1e-12)


def epoch_class_counts(lengths, labels, epochs, *, multi=False, **kw):
    """Clips per class over ``epochs`` epochs, both ranks' parts of each epoch together."""
    num_classes = labels.shape[1] if multi else int(labels.max()) + 1
    per_video = np.zeros(len(lengths), dtype=np.int64)
    for e in range(epochs):
        _, rows = rows_over_ranks(lengths, 2, labels=labels, epoch=e, drop_last=False, **kw)
        v = np.array([r[0] for r in rows], dtype=np.int64)
        per_video += np.bincount(v, minlength=len(lengths))
    out = (per_video[:, None] * labels).sum(axis=0) if multi else np.bincount(labels, weights=per_video,
                                                                               minlength=num_classes)
    return out, per_video


# Single-label data with classes of 12, 6, 3, 2 and 1 videos; every video 30 frames.
SINGLE = np.repeat(np.arange(5), [12, 6, 3, 2, 1])
SINGLE_LENGTHS = [30] * len(SINGLE)
EPOCHS = 600


def lvis_factors(labels_multi_hot: np.ndarray, t: float) -> np.ndarray:
    f = labels_multi_hot.sum(axis=0) / len(labels_multi_hot)
    rc = np.maximum(1.0, np.sqrt(t / f))
    return np.array([max([1.0] + [rc[c] for c in np.flatnonzero(row)]) for row in labels_multi_hot])


def test_repeat_factor_balance_realises_the_target_class_frequencies():
    # 3 tests (repeat_factor single-label, frequency q=0, frequency q=0.5): alpha / 3 each.
    onehot = np.eye(5)[SINGLE]
    r = lvis_factors(onehot, 0.2)
    assert r.max() > 2  # the rare classes are repeated
    kw = dict(batch_size=5, seed=4, mode="strict", clips_per_video=2, balance="repeat_factor", balance_threshold=0.2)
    cls, _ = epoch_class_counts(SINGLE_LENGTHS, SINGLE, EPOCHS, **kw)
    want = np.bincount(SINGLE, weights=2 * r) * EPOCHS
    limit = chi2_quantile(1 - FAMILY_ALPHA / 3, len(want) - 1)
    assert chi2_fit(cls, want) < limit
    # The same statistic rejects the unbalanced frequencies (power of the test).
    unbalanced = np.bincount(SINGLE) * cls.sum() / len(SINGLE)
    assert chi2_fit(cls, unbalanced) > 10 * limit


@pytest.mark.parametrize("power", [0.0, 0.5])
def test_frequency_balance_gives_each_class_a_share_of_n_c_to_the_power(power):
    kw = dict(batch_size=4, seed=9, mode="bounded", chunk_len=4, clips_per_video=1, balance="frequency",
              balance_power=power)
    cls, _ = epoch_class_counts(SINGLE_LENGTHS, SINGLE, EPOCHS, **kw)
    n_c = np.bincount(SINGLE).astype(float)
    share = n_c**power / (n_c**power).sum()
    limit = chi2_quantile(1 - FAMILY_ALPHA / 3, len(n_c) - 1)
    assert chi2_fit(cls, share * cls.sum()) < limit
    assert chi2_fit(cls, n_c / n_c.sum() * cls.sum()) > 10 * limit  # not the unbalanced shares


def test_multi_label_repeat_factor_takes_the_max_over_labels_and_matches_per_video():
    rng = np.random.default_rng(0)
    hot = (rng.random((20, 4)) < np.array([0.7, 0.3, 0.1, 0.05])).astype(np.float32)
    hot[0] = 0  # a video without labels keeps r = 1
    hot[1, 3] = 1
    r = lvis_factors(hot, 0.3)
    lengths = [25] * 20
    kw = dict(batch_size=6, seed=2, mode="strict", clips_per_video=1, balance="repeat_factor", balance_threshold=0.3)
    p = plan_epoch(lengths, labels=hot, **kw)
    assert np.allclose(p.repeat_factors, r) and p.repeat_factors[0] == 1.0
    cls, per_video = epoch_class_counts(lengths, hot, 400, multi=True, **kw)
    # Per video (which fixes the per-class counts of multi-label data): 1 test, alpha.
    assert chi2_fit(per_video, 400 * r) < chi2_quantile(1 - FAMILY_ALPHA, len(r) - 1)
    assert np.allclose(cls, per_video @ hot)


def test_balance_and_weights_multiply_and_zero_weights_drop_classes_from_the_frequencies():
    labels = np.array([0, 0, 0, 1, 1, 2])
    w = [1, 1, 0, 1, 1, 1]
    p = plan_epoch([20] * 6, batch_size=2, seed=0, mode="strict", clips_per_video=1, weights=w, labels=labels,
                   balance="repeat_factor", balance_threshold=0.5)
    base = np.array(w) * 6 / 5
    f = np.array([2, 2, 1]) * 1.2 / 6  # weighted class fractions (video 2 is left out)
    rc = np.maximum(1, np.sqrt(0.5 / f))
    assert np.allclose(p.repeat_factors, base * rc[labels])
    assert p.slot_counts[2] == 0 and 2 not in {v for b in p for v in b[:, 0].tolist()}


def test_weighted_epoch_states_its_length():
    p = plan_epoch([40] * 4, batch_size=3, seed=1, mode="strict", clips_per_video=2, weights=[1, 1, 1, 5],
                   drop_last=False)
    assert p.expected_samples == pytest.approx(8.0)
    assert p.total_samples == 8 and p.slot_counts[3] == 5  # 2 * 5 * 4 / 8 = 5 exactly
    assert "weighted" in repr(p)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(weights=[0, 0, 0]), "weights"),
        (dict(weights=[1, -1, 2]), "weights"),
        (dict(weights=[1, float("nan"), 2]), "weights"),
        (dict(weights=[1, 2]), "weights"),
        (dict(weights="abc"), "weights"),
        (dict(weights=[1, 1, 1], clips_per_video=None), "weights.*clips_per_video"),
        (dict(weights=[1, 1, 1], mode="sequential"), "weights"),
        (dict(weights=[1, 1, 1000], clips_per_video=100), "weights.*256"),
        (dict(balance="repeat_factor"), "balance needs labels"),
        (dict(balance="lvis", labels=[0, 1, 1]), "balance"),
        (dict(balance="repeat_factor", clips_per_video=None, labels=[0, 1, 1]), "balance.*clips_per_video"),
        (dict(balance="repeat_factor", balance_threshold=0.0, labels=[0, 1, 1]), "balance_threshold"),
        (dict(balance="frequency", balance_threshold=0.1, labels=[0, 1, 1]), "balance_threshold"),
        (dict(balance="frequency", balance_power=2, labels=[0, 1, 1]), "balance_power"),
        (dict(balance="repeat_factor", balance_power=0.5, labels=[0, 1, 1]), "balance_power"),
        (dict(balance="frequency", labels=[0, 1]), "labels"),
        (dict(balance="frequency", labels=[0.5, 1, 1]), "labels"),
        (dict(labels=[0, 1, 1]), "labels"),
    ],
)
def test_bad_weights_and_balance_are_config_errors_naming_the_setting(kwargs, name):
    kw = dict(batch_size=2, seed=0, mode="strict", clips_per_video=2)
    kw.update(kwargs)
    with pytest.raises(ConfigError, match=name):
        plan_epoch([10, 10, 10], **kw)


def test_the_slot_cap_holds_in_every_epoch():
    # k * r = 2 * 127.9 -> at most 256 slots: accepted, and never more in any epoch.
    w = np.array([1.0] * 127 + [127.9 * 127 / (128 - 127.9)])  # the last is 127.9 x the mean weight
    p = plan_epoch([10] * 128, batch_size=64, seed=0, mode="strict", clips_per_video=2, weights=w)
    assert p.repeat_factors[-1] == pytest.approx(127.9)
    assert max(int(plan_epoch([10] * 128, batch_size=64, seed=0, epoch=e, mode="strict", clips_per_video=2,
                              weights=w).slot_counts.max()) for e in range(5)) <= MAX_CLIPS_PER_VIDEO
