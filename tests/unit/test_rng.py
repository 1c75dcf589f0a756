import numpy as np

from ringload import _rng


def test_uniforms_depend_only_on_key_and_are_uniform():
    keys = _rng.sample_keys(np.arange(2000) % 7, np.arange(2000))
    a = _rng.uniforms(3, 1, keys, _rng.STREAM_CROP, 4)
    # Same key, computed in another order or alone: same values.
    perm = np.random.default_rng(0).permutation(len(keys))
    assert np.array_equal(_rng.uniforms(3, 1, keys[perm], _rng.STREAM_CROP, 4), a[perm])
    assert np.array_equal(_rng.uniforms(3, 1, keys[5:6], _rng.STREAM_CROP, 4), a[5:6])
    # Another seed, epoch or stream gives other numbers.
    for other in [(4, 1, _rng.STREAM_CROP), (3, 2, _rng.STREAM_CROP), (3, 1, _rng.STREAM_FLIP)]:
        assert not np.allclose(_rng.uniforms(*other[:2], keys, other[2], 4), a)
    assert a.min() >= 0.0 and a.max() < 1.0
    # Uniformity: chi-square over 10 bins, 8000 draws, 9 dof; 27.88 is the 0.999 quantile.
    counts = np.histogram(a.ravel(), bins=10, range=(0, 1))[0]
    expected = a.size / 10
    assert ((counts - expected) ** 2 / expected).sum() < 27.88
