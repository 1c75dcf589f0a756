"""The loader's flip and BatchAugment's flip are independent draws (issue 12, the flip fix)."""

import math
import statistics
import types

import numpy as np

from ringload import _rng, augment
from ringload._config import LoaderConfig
from ringload._samples import Sampler


def test_with_both_flips_on_about_half_the_samples_end_up_mirrored():
    # 4000 samples of 40 videos; two-sided binomial z-test of the share flipped an odd
    # number of times against 0.5, alpha 1e-3 (before the fix both flips were one draw: share 0).
    n = 4000
    keys = _rng.sample_keys(np.arange(n) % 40, np.arange(n) // 40)
    sampler = types.SimpleNamespace(cfg=LoaderConfig(hflip=True, seed=7), epoch=2)
    loader_flip = Sampler.flips(sampler, keys)
    aug_flip = augment.BatchAugment(hflip_p=0.5).params(keys, seed=7, epoch=2).flip
    z = statistics.NormalDist().inv_cdf(1 - 1e-3 / 2)
    for share in (loader_flip.mean(), aug_flip.mean(), (loader_flip ^ aug_flip).mean()):
        assert abs(share - 0.5) < z * math.sqrt(0.25 / n), share
