"""ringload.augment against an independent per-sample reference written from torchvision's
ColorJitter formulas (float image in [0, 1]), with the HSV maths taken from Python's colorsys."""

from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest
import torch

from ringload import _rng, augment
from ringload.errors import ConfigError

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
ORDERS = list(itertools.permutations(range(4)))

# Chi-square 0.999 quantiles (alpha = 0.001) for the degrees of freedom used below.
CHI2_999 = {9: 27.877, 23: 49.728}


# ---- reference: one sample at a time, float64 numpy, no code shared with ringload.augment ----


def ref_blend(a, b, f):
    return np.clip(f * a + (1.0 - f) * b, 0.0, 1.0)


def ref_gray(img):  # img (C, H, W)
    if img.shape[0] == 1:
        return img[0]
    return GRAY[0] * img[0] + GRAY[1] * img[1] + GRAY[2] * img[2]


def ref_hue(img, shift):
    if img.shape[0] == 1:
        return img
    out = np.empty_like(img)
    for y in range(img.shape[1]):
        for x in range(img.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*img[:, y, x])
            out[:, y, x] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    return out


def ref_frame(img, order, b, c, s, h):
    """torchvision ColorJitter.forward on one float image: the ops in `order`."""
    for op in order:
        if op == 0 and b is not None:
            img = ref_blend(img, np.zeros_like(img), b)
        elif op == 1 and c is not None:
            img = ref_blend(img, ref_gray(img).mean(), c)
        elif op == 2 and s is not None and img.shape[0] == 3:
            img = ref_blend(img, ref_gray(img)[None], s)
        elif op == 3 and h is not None:
            img = ref_hue(img, h)
    return img


def ref_draws(keys, seed, epoch, ranges, hflip_p):
    """The spec of the draws, restated: u[0] picks one of the 24 orders, u[1..4] the factors."""
    u = _rng.uniforms(seed, epoch, keys, _rng.STREAM_JITTER, 5)
    flips = _rng.uniforms(seed, epoch, keys, _rng.STREAM_AUG_FLIP, 1)[:, 0] < hflip_p
    rows = []
    for i in range(len(keys)):
        order = ORDERS[min(int(u[i, 0] * 24), 23)]
        f = [None if r is None else r[0] + u[i, j + 1] * (r[1] - r[0]) for j, r in enumerate(ranges)]
        rows.append((order, *f, bool(flips[i])))
    return rows


def ref_augment(frames_u8, keys, seed, epoch, ranges, hflip_p, mean, std):
    x = frames_u8.numpy().astype(np.float64) / 255.0
    clip = x.ndim == 5
    if not clip:
        x = x[:, None]
    out = np.empty_like(x)
    for i, (order, b, c, s, h, flip) in enumerate(ref_draws(keys, seed, epoch, ranges, hflip_p)):
        for t in range(x.shape[1]):
            img = ref_frame(x[i, t], order, b, c, s, h)
            if flip:
                img = img[:, :, ::-1]
            if mean is not None:
                img = (img - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
            out[i, t] = img
    return out if clip else out[:, 0]


def random_frames(shape, seed):
    g = torch.Generator().manual_seed(seed)
    # Mix smooth colour gradients with noise and a grey patch (hue undefined there).
    f = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    f[..., :3, :3] = 128
    return f


# ---- tests ----


@pytest.mark.parametrize(
    "kw",
    [
        dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
        dict(brightness=(0.2, 1.8), contrast=0.9, saturation=(0.0, 2.0), hue=(-0.5, 0.5)),
        dict(brightness=0.3, hue=0.25),
        dict(contrast=0.5, saturation=0.5),
    ],
)
def test_batched_jitter_matches_per_sample_reference(kw):
    aug = augment.BatchAugment(**kw, hflip_p=0.5, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD)
    frames = random_frames((48, 3, 9, 11), seed=1)
    keys = _rng.sample_keys(np.arange(48) % 5, np.arange(48) * 7)
    got = aug(frames, keys, seed=11, epoch=2)
    assert got.dtype == torch.float32 and got.shape == frames.shape
    want = ref_augment(frames, keys, 11, 2, aug._ranges, 0.5, augment.IMAGENET_MEAN, augment.IMAGENET_STD)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-5)
    # The batch really mixed orders and flips (so the grouping by order was exercised).
    p = aug.params(keys, seed=11, epoch=2)
    assert len({tuple(o) for o in p.order}) >= 10
    assert 0 < p.flip.sum() < len(keys)


def test_clips_share_factors_across_frames_and_match_reference():
    aug = augment.BatchAugment(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2, hflip_p=0.5)
    frames = random_frames((6, 4, 3, 5, 7), seed=2)
    frames[:, 1:] = frames[:, :1]  # identical frames in a clip must stay identical
    keys = _rng.sample_keys([0, 1, 2, 3, 4, 5], [10, 20, 30, 40, 50, 60])
    got = aug(frames, keys, seed=3, epoch=0)
    want = ref_augment(frames, keys, 3, 0, aug._ranges, 0.5, None, None)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-5)
    assert torch.equal(got[:, 1:], got[:, :1].expand_as(got[:, 1:]))


def test_single_channel_frames():
    aug = augment.BatchAugment(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2)
    frames = random_frames((8, 1, 6, 6), seed=4)
    keys = _rng.sample_keys(np.zeros(8), np.arange(8))
    got = aug(frames, keys, seed=0, epoch=0)
    want = ref_augment(frames, keys, 0, 0, aug._ranges, 0.0, None, None)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-5)


def test_no_jitter_is_exact_cast_flip_and_normalise():
    mean, std = (0.5, 0.25, 0.125), (0.5, 2.0, 0.25)
    aug = augment.BatchAugment(hflip_p=0.5, mean=mean, std=std)
    assert not aug.jitter_enabled
    frames = random_frames((20, 3, 4, 6), seed=5)
    keys = _rng.sample_keys(np.arange(20), np.zeros(20))
    got = aug(frames, keys, seed=9, epoch=1)
    flip = _rng.uniforms(9, 1, keys, _rng.STREAM_AUG_FLIP, 1)[:, 0] < 0.5
    x = frames.to(torch.float32) / 255.0
    x[torch.as_tensor(flip)] = x[torch.as_tensor(flip)].flip(-1)
    want = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.equal(got, want)
    assert 0 < flip.sum() < 20


def test_factor_distributions_ranges_uniformity_and_order():
    aug = augment.BatchAugment(brightness=0.4, contrast=1.5, saturation=(0.5, 0.9), hue=0.3, hflip_p=0.3)
    n = 24_000
    keys = _rng.sample_keys(np.arange(n) // 300, np.arange(n) % 300)
    p = aug.params(keys, seed=123, epoch=4)
    expect = {
        "brightness": (0.6, 1.4),
        "contrast": (0.0, 2.5),  # 1 - 1.5 < 0: clipped at 0 like torchvision
        "saturation": (0.5, 0.9),
        "hue": (-0.3, 0.3),
    }
    for name, (lo, hi) in expect.items():
        v = getattr(p, name)
        assert v.min() >= lo and v.max() < hi, name
        assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo), name
        counts = np.histogram(v, bins=10, range=(lo, hi))[0]
        chi2 = ((counts - n / 10) ** 2 / (n / 10)).sum()
        assert chi2 < CHI2_999[9], (name, chi2)
    # Every one of the 24 orders equally likely.
    idx = [ORDERS.index(tuple(o)) for o in p.order]
    counts = np.bincount(idx, minlength=24)
    chi2 = ((counts - n / 24) ** 2 / (n / 24)).sum()
    assert chi2 < CHI2_999[23], chi2
    # Flip probability 0.3: a 4.5-sigma band.
    sigma = np.sqrt(0.3 * 0.7 / n)
    assert abs(p.flip.mean() - 0.3) < 4.5 * sigma
    # The factors of the four operations are independent of each other: small correlations.
    m = np.corrcoef(np.stack([p.brightness, p.contrast, p.saturation, p.hue, np.array(idx, float)]))
    assert np.abs(m - np.eye(5)).max() < 0.05


def test_draws_depend_only_on_seed_epoch_and_key():
    aug = augment.BatchAugment(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, hflip_p=0.5)
    keys = _rng.sample_keys(np.arange(64) % 4, np.arange(64))
    frames = random_frames((64, 3, 5, 5), seed=6)
    full = aug(frames, keys, seed=1, epoch=3)
    # The same samples in another batch order, or split over two batches: same results.
    perm = np.random.default_rng(0).permutation(64)
    assert torch.equal(aug(frames[perm], keys[perm], seed=1, epoch=3), full[perm])
    halves = torch.cat([aug(frames[:20], keys[:20], seed=1, epoch=3), aug(frames[20:], keys[20:], seed=1, epoch=3)])
    assert torch.equal(halves, full)
    # Another epoch or seed changes the draws.
    assert not torch.equal(aug(frames, keys, seed=1, epoch=4), full)
    assert not torch.equal(aug(frames, keys, seed=2, epoch=3), full)


def test_keys_for_batch_uses_video_and_start():
    class B:
        video_index = torch.tensor([3, 4])
        frame_index = torch.tensor([[10, 12, 14], [0, 2, 4]])

    assert np.array_equal(augment.keys_for_batch(B()), _rng.sample_keys([3, 4], [10, 0]))

    class F:
        video_index = np.array([1])
        frame_index = np.array([7])

    assert np.array_equal(augment.keys_for_batch(F()), _rng.sample_keys([1], [7]))


def test_float_input_and_half_output():
    aug = augment.BatchAugment(brightness=0.2, dtype=torch.float16)
    frames = random_frames((4, 3, 4, 4), seed=7)
    keys = _rng.sample_keys(np.arange(4), np.arange(4))
    a = aug(frames, keys, seed=0, epoch=0)
    b = aug(frames.to(torch.float32) / 255.0, keys, seed=0, epoch=0)
    assert a.dtype == torch.float16 and torch.equal(a, b)


@pytest.mark.parametrize(
    "kw, word",
    [
        (dict(brightness=-0.1), "brightness"),
        (dict(hue=0.6), "hue"),
        (dict(hue=(-0.6, 0.1)), "hue"),
        (dict(saturation=(1.5, 1.0)), "saturation"),
        (dict(contrast="x"), "contrast"),
        (dict(hflip_p=1.5), "hflip_p"),
        (dict(mean=(0.5,)), "mean"),
        (dict(mean=(0.5,), std=(0.0,)), "std"),
        (dict(dtype=torch.uint8), "dtype"),
    ],
)
def test_bad_settings_name_the_argument(kw, word):
    with pytest.raises(ConfigError, match=word):
        augment.BatchAugment(**kw)


def test_bad_inputs_are_typed_errors():
    aug = augment.BatchAugment(brightness=0.1, mean=(0.5, 0.5, 0.5), std=(1, 1, 1))
    keys = _rng.sample_keys([0, 1], [0, 0])
    with pytest.raises(ConfigError, match="sample keys"):
        aug(torch.zeros(3, 3, 2, 2, dtype=torch.uint8), keys, seed=0, epoch=0)
    with pytest.raises(ConfigError, match="channels"):
        aug(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), keys, seed=0, epoch=0)
    with pytest.raises(ConfigError, match="dtype"):
        aug(torch.zeros(2, 3, 2, 2, dtype=torch.int32), keys, seed=0, epoch=0)
    with pytest.raises(ConfigError, match="shape"):
        aug(torch.zeros(3, 2, 2, dtype=torch.uint8), keys, seed=0, epoch=0)


@pytest.mark.cuda
def test_cuda_result_equals_cpu_result():
    aug = augment.BatchAugment(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, hflip_p=0.5,
                               mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD)
    frames = random_frames((64, 3, 32, 32), seed=8)
    keys = _rng.sample_keys(np.arange(64), np.arange(64))
    cpu = aug(frames, keys, seed=5, epoch=1)
    gpu = aug(frames.cuda(), keys, seed=5, epoch=1)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)


@pytest.mark.cuda
def test_matches_torchvision_on_the_gpu_machine():
    """Where torchvision imports (next to the CUDA builds of torch), compare with it directly:
    the same ranges as ColorJitter and, op by op in our drawn order, its functional ops."""
    from torchvision.transforms import ColorJitter
    from torchvision.transforms.v2 import functional as F

    kw = dict(brightness=0.4, contrast=1.5, saturation=(0.5, 0.9), hue=0.3)
    cj = ColorJitter(**kw)
    aug = augment.BatchAugment(**kw)
    for ours, theirs in zip(aug._ranges, (cj.brightness, cj.contrast, cj.saturation, cj.hue)):
        assert ours == pytest.approx(tuple(theirs))
    frames = random_frames((32, 3, 16, 16), seed=9).cuda()
    keys = _rng.sample_keys(np.arange(32), np.arange(32) * 3)
    got = aug(frames, keys, seed=1, epoch=0)
    p = aug.params(keys, seed=1, epoch=0)
    fns = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    factors = [p.brightness, p.contrast, p.saturation, p.hue]
    x = frames.float() / 255.0
    for i in range(32):
        img = x[i]
        for op in p.order[i]:
            img = fns[op](img, float(factors[op][i]))
        torch.testing.assert_close(got[i], img, rtol=0, atol=1e-4)


@pytest.mark.cuda
def test_cuda_augment_never_makes_the_host_wait():
    """No synchronising call (a blocking copy of the draws, a .item()) on the hot path: the
    host must stay ahead of the GPU for the next batch's copy to overlap compute."""
    aug = augment.BatchAugment(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, hflip_p=0.5,
                               mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD)
    frames = random_frames((32, 3, 16, 16), seed=10).cuda()
    keys = _rng.sample_keys(np.arange(32), np.arange(32))
    aug(frames, keys, seed=0, epoch=0)  # first call: per-device constants are made once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = aug(frames, keys, seed=0, epoch=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == frames.shape and torch.isfinite(out).all().item()
