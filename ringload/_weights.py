"""Weighted and class-balanced per-video epochs: how many slots each video gets.

A weighted epoch is a per-video epoch (``clips_per_video=k``) whose video ``v`` gets
``k * r_v`` slots in expectation instead of exactly ``k``: the integer part always, one
more with probability the fractional part (systematic stochastic rounding over a random
order of the videos, keyed by (seed, epoch), so the epoch's length is the rounded sum).
``r_v``, the repeat factor, is the product of

- the user's ``weights``, normalised to mean 1 over the videos with a valid start
  (scale-free, as in ``WeightedRandomSampler``; the expected epoch length stays
  ``k x usable videos``; a weight of 0 leaves the video out), and
- the class balance: ``"repeat_factor"`` (LVIS, detectron2's RepeatFactorTrainingSampler)
  ``max(1, sqrt(t / f(c)))`` maximised over the video's labels, ``f(c)`` the weighted
  fraction of videos carrying label c (an absolute factor: the epoch grows);
  ``"frequency"``: each class's share of the epoch proportional to ``n_c ** power``
  (``n_c`` its weighted video count; 0 = every class equally often, 1 = no change), a
  video taking the largest factor over its labels, normalised to mean 1 like weights.

Everything here is O(videos + label entries) and pure; docs/sampling.md states the
statistics.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._perm import _Perm, _derive
from .errors import ConfigError

BALANCES = ("repeat_factor", "frequency")

# Stream tag of the stochastic rounding, after plan.py's 1 to 5, _perm's 6, _pervideo's 7 and 8.
_S_COUNT = 9


def check_weights(weights, n: int) -> np.ndarray:
    """float64 (n,) copy of ``weights``: finite, >= 0, one per video; else a ConfigError naming it."""
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"weights must be a sequence of numbers, one per video: {exc}") from None
    if w.ndim != 1 or len(w) != n:
        raise ConfigError(f"weights must hold one number per video ({n}), got shape {w.shape}")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if len(bad):
        i = int(bad[0])
        raise ConfigError(
            f"weights must be finite and >= 0, weights[{i}] = {w[i]!r} ({len(bad)} bad); "
            "a weight of 0 leaves a video out"
        )
    return w


def check_balance(balance, threshold, power) -> None:
    """ConfigError naming the setting for a bad ``balance`` / ``balance_threshold`` / ``balance_power``."""
    if balance is not None and balance not in BALANCES:
        raise ConfigError(f"balance={balance!r}: pass one of {', '.join(map(repr, BALANCES))} or None")
    for name, value, mode, ok, what in (
        ("balance_threshold", threshold, "repeat_factor", lambda x: 0 < x <= 1, "a fraction in (0, 1]"),
        ("balance_power", power, "frequency", lambda x: 0 <= x <= 1, "a number in [0, 1]"),
    ):
        if value is None:
            continue
        if balance != mode:
            raise ConfigError(f"{name}={value!r} applies to balance={mode!r} only (balance={balance!r})")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(float(value)):
            raise ConfigError(f"{name}={value!r}: pass {what}")


def _label_sets(labels, n: int):
    """(video index, class id) pairs of every label a video carries; a ConfigError naming ``labels``."""
    if labels is None:
        raise ConfigError("balance needs labels: pass labels= (class ids (N,) or multi-hot (N, C)), "
                          "or a manifest with a 'label' or 'labels' column")
    lab = np.asarray(labels)
    if lab.ndim not in (1, 2) or len(lab) != n:
        raise ConfigError(f"labels must be class ids (N,) or multi-hot (N, C) with N = {n} videos, got shape {lab.shape}")
    if lab.ndim == 1:
        if lab.size and not np.issubdtype(lab.dtype, np.integer):
            raise ConfigError(f"labels (N,) must be integer class ids (negative: no label), got dtype {lab.dtype}")
        vid = np.flatnonzero(lab >= 0)
        return vid, lab[vid].astype(np.int64)
    vid, cls = np.nonzero(lab > 0)
    return vid.astype(np.int64), cls.astype(np.int64)


def repeat_factors(usable: np.ndarray, *, weights=None, labels=None, balance=None, threshold=None,
                   power=None) -> np.ndarray:
    """float64 repeat factor ``r_v`` of every video (0 where ``usable`` is False)."""
    n = len(usable)
    r = usable.astype(np.float64)
    if weights is not None:
        w = check_weights(weights, n) * r
        if not usable.any():
            return r  # no video has a sample: the plan is empty and says so
        total = w.sum()
        if not total > 0:
            raise ConfigError(
                f"weights are all zero on the {int(usable.sum())} videos with a sample: "
                "give at least one such video a weight > 0"
            )
        r = w * (usable.sum() / total)
    if balance is None:
        return r
    vid, cls = _label_sets(labels, n)
    if not usable.any():
        return r
    keep = r[vid] > 0
    vid, cls = vid[keep], cls[keep]
    # Weighted count of videos per class (the class frequencies the weights alone would give).
    n_c = np.bincount(cls, weights=r[vid]) if len(cls) else np.zeros(0)
    if balance == "repeat_factor":
        t = float(threshold) if threshold is not None else 1.0 / max(int((n_c > 0).sum()), 1)
        f = n_c / r.sum()
        rc = np.maximum(1.0, np.sqrt(t / np.where(f > 0, f, np.inf)))
        best = np.ones(n)  # a video without labels keeps r = 1 (the floor of the rule)
        np.maximum.at(best, vid, rc[cls])
        return r * best
    q = 0.5 if power is None else float(power)
    # Share of class c ~ n_c ** q: a video of c weighs n_c ** (q - 1). Videos without a
    # label form one group of their own.
    fc = np.where(n_c > 0, n_c, 1.0) ** (q - 1)
    best = np.zeros(n)
    np.maximum.at(best, vid, fc[cls])
    none = (best == 0) & (r > 0)
    if none.any():
        best[none] = r[none].sum() ** (q - 1)
    out = r * best
    return out * (usable.sum() / out.sum())


# Fixed point of the rounding: factors are rounded to multiples of 2^-24 (k * r_v <= 256
# keeps a cumulative sum over 2^31 videos inside int64).
_FRAC_BITS = 24


def slot_counts(factors: np.ndarray, k: int, seed: int, epoch: int) -> np.ndarray:
    """int64 slots per video this epoch: ``k * r_v`` rounded stochastically, keyed by (seed, epoch).

    Systematic rounding over a keyed random order of the videos: with ``X_i`` the running sum
    of ``x = k * r`` in that order and ``u`` one keyed uniform, a video gets
    ``floor(X_i + u) - floor(X_{i-1} + u)`` slots. Each is ``floor(x_v)`` or ``ceil(x_v)``
    with ``E = x_v`` exactly (for x on the 2^-24 grid), and the epoch's total is
    ``floor(sum x)`` or ``ceil(sum x)``, so its length hardly moves between epochs.
    """
    one = 1 << _FRAC_BITS
    q = np.round(factors * k * one).astype(np.int64)
    if not len(q):
        return q
    key = _derive(_derive(seed, epoch), _S_COUNT)
    order = _Perm(len(q), _derive(key, 1)).fwd(np.arange(len(q), dtype=np.int64))
    u = int(_derive(key, 2) % one)
    cum = np.cumsum(q[order]) + u
    out = np.empty(len(q), dtype=np.int64)
    out[order] = np.diff(cum >> _FRAC_BITS, prepend=u >> _FRAC_BITS)
    return out
