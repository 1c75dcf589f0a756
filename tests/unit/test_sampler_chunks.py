"""The window learns each bounded sample's chunk from the plan (the whole-chunk take-along)."""

import types

import numpy as np

from ringload import plan_epoch
from ringload._samples import Sampler, _Content


def _fake(plan, chunk_window):
    def content(entry, start, views=None):
        n = len(entry)
        return _Content(entry, start, start[:, None], np.zeros((n, 4), np.int32), np.zeros(n, bool), entry)

    return types.SimpleNamespace(plan=plan, cfg=types.SimpleNamespace(views_per_clip=1), chunk_window=chunk_window,
                                 content=content)


def test_a_bounded_batch_carries_the_plans_chunk_ids_and_other_modes_none():
    plan = plan_epoch([300] * 20, batch_size=16, seed=1, mode="bounded", chunk_len=60, max_per_chunk=4)
    assert plan.chunk_window > 1
    for k in (0, 3, len(plan) - 1):
        got = Sampler.batch(_fake(plan, plan.chunk_window), k)
        assert np.array_equal(got.chunk, plan.chunks(k))
        # every chunk id names the chunk that holds the sample's start
        ext = plan.chunk_extent(got.chunk)
        assert np.all((ext[:, 0] == got.entry) & (ext[:, 1] <= got.start) & (got.start <= ext[:, 2]))
    strict = plan_epoch([300] * 20, batch_size=16, seed=1, mode="strict")
    assert Sampler.batch(_fake(strict, 1), 0).chunk is None
