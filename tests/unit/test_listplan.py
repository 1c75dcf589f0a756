"""``VideoLoader(samples=...)``'s plan (ringload._listplan), without processes: batches in the
list's order, ranks sharing it like sequential mode, every sample checked."""

import numpy as np
import pytest

import ringload
from ringload import ConfigError
from ringload._listplan import list_plan

COUNTS = np.array([10, 0, 5, 7])
PATHS = ["/v0.mp4", "/v1.mp4", "/v2.mp4", "/v3.mp4"]


def _list(n, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.choice([0, 2, 3], size=n)
    return np.stack([v, rng.integers(0, COUNTS[v])], axis=1)


def _plan(value, **kw):
    kw = {"batch_size": 4, "rank": 0, "world_size": 1, "drop_last": False, **kw}
    return list_plan(value, COUNTS, PATHS, **kw)


@pytest.mark.parametrize("n,batch_size,world", [(1, 4, 1), (23, 4, 1), (23, 4, 3), (24, 4, 3), (5, 4, 4), (2, 3, 4)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_take_contiguous_parts_of_the_list_in_its_order(n, batch_size, world, drop_last):
    lst = _list(n)
    plans = [_plan(lst, batch_size=batch_size, rank=r, world_size=world, drop_last=drop_last) for r in range(world)]
    assert len({len(p) for p in plans}) == 1  # equal batch counts on every rank
    parts = [np.concatenate([p[k] for k in range(len(p))]) if len(p) else np.zeros((0, 2), int) for p in plans]
    got = np.concatenate(parts)
    if drop_last:
        assert all(len(p[k]) == batch_size for p in plans for k in range(len(p)))
        assert len(got) == n - n % (world * batch_size)
        np.testing.assert_array_equal(got, lst[: len(got)])
    else:
        np.testing.assert_array_equal(got, lst)  # every sample once, in order
    # Batches match a sequential plan_epoch's cut of the same stream.
    ref = ringload.plan_epoch([n], batch_size=batch_size, seed=0, mode="sequential", rank=0, world_size=world,
                              drop_last=drop_last)
    assert len(ref) == len(plans[0]) and [len(ref[k]) for k in range(len(ref))] == [len(plans[0][k]) for k in range(len(ref))]


def test_duplicates_and_any_order_are_kept():
    lst = np.array([[3, 6], [0, 0], [3, 6], [2, 4], [0, 9]])
    p = _plan(lst, batch_size=2)
    assert [p[k].tolist() for k in range(len(p))] == [[[3, 6], [0, 0]], [[3, 6], [2, 4]], [[0, 9]]]
    assert p.chunks(1).tolist() == [2, 3] and p.chunk_window == 1
    # A generator and a list of tuples are lists of pairs too.
    assert _plan(iter([(0, 1), (2, 2)])).digest() == _plan([(0, 1), (2, 2)]).digest() != _plan([(2, 2), (0, 1)]).digest()


def test_batches_are_taken_as_given():
    batches = [np.array([[0, 1], [3, 2], [3, 3]]), np.array([[2, 0]])]
    p = _plan(batches)
    assert len(p) == 2 and p[0].tolist() == batches[0].tolist() and p[1].tolist() == [[2, 0]]
    # A ringload.Plan over these lengths is a plan object; its rank must be the loader's.
    plan = ringload.plan_epoch([11, 0, 7, 9], batch_size=4, seed=3, epoch=2, mode="strict", drop_last=False,
                               clip_len=3, rank=1, world_size=2)
    p = _plan(plan, rank=1, world_size=2)
    assert [p[k].tolist() for k in range(len(p))] == [plan[k].tolist() for k in range(len(plan))]
    with pytest.raises(ConfigError, match="the plan is rank 1 of 2, the loader rank 0 of 1"):
        _plan(plan)
    with pytest.raises(ConfigError, match=r"samples\[0\] holds 3 samples, more than batch_size=2"):
        _plan(batches, batch_size=2)
    with pytest.raises(ConfigError, match=r"samples\[1\]\[0\] = \(2, 5\): start 5 is outside"):
        _plan([np.array([[0, 1]]), np.array([[2, 5]])])


@pytest.mark.parametrize(
    "value,match",
    [
        ([(0, 1), (4, 0)], r"samples\[1\] = \(4, 0\): video 4 is out of range; the source has 4 videos"),
        ([(0, 1), (-1, 0)], r"samples\[1\] = \(-1, 0\): video -1 is out of range"),
        ([(1, 0)], r"samples\[0\] = \(1, 0\): video 1 \(/v1.mp4\) has no sample"),
        ([(2, 5)], r"samples\[0\] = \(2, 5\): start 5 is outside the valid starts of video 2 \(/v2.mp4\): 0 to 4"),
        ([(0, -1)], r"start -1 is outside"),
        ([], "samples is empty"),
        ([(0, 1, 2)], r"shape \(N, 2\); got shape \(1, 3\)"),
        ([(0.5, 1)], "integer"),
        ([[(0, 1)], [(0, 1), (0,)]], "samples"),
    ],
)
def test_bad_samples_name_the_entry(value, match):
    with pytest.raises(ConfigError, match=match):
        _plan(value)
