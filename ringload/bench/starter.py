"""The robotics exercise's starter loader, reproduced as the benchmark baseline.

What the exercise ships (``load_video.py``): a ``torch.utils.data.Dataset`` that lists every
frame of the video(s); ``__getitem__`` opens the file (the container is cached per worker
process), seeks backward to the keyframe at or before the frame, decodes forward until the
target pts, turns the frame into a PIL image and applies
``RandomResizedCrop(224, scale=(0.9, 1))``, ``ToTensor()`` and
``ColorJitter(0.5, 0.5, 0.5, 0.5)``; a ``DataLoader(batch_size=128, shuffle=True,
num_workers=W)`` batches it.

torchvision is used when it imports. When it does not (this project's torch build has no
matching torchvision), the same three transforms are implemented below with PIL and torch
operations that do the same work the same way as torchvision's (the crop box drawn by the
rule ringload shares with torchvision, PIL crop + bilinear resize;
uint8 HWC -> float CHW; brightness/contrast/saturation blends and the RGB->HSV->RGB hue
shift, in a random order per sample), so the cost per image is the same.

Run it on its own like the exercise script::

    python -m ringload.bench.starter VIDEO [VIDEO ...] --batches 5 --workers 2
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import av
import numpy as np
import torch
from PIL import Image

from .._samples import random_resized_boxes

try:  # pragma: no cover - depends on the environment
    from torchvision import transforms as _tv

    TRANSFORMS = "torchvision"
except Exception:  # torchvision absent, or built for another torch
    _tv = None
    TRANSFORMS = "pil+torch (torchvision not importable)"


# --- transforms (torchvision semantics) -----------------------------------------------------


class RandomResizedCrop:
    """torchvision.transforms.RandomResizedCrop for PIL images (bilinear, as its default)."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale = scale
        self.ratio = ratio

    def get_params(self, width: int, height: int):
        """(top, left, h, w) as torchvision draws them: up to 10 tries, then a centre crop.

        The draw is :func:`ringload.loader.random_resized_boxes` (the same rule, the one
        ringload's decoders use) fed with torch's generator, so ``torch.manual_seed``
        fixes it as it fixes torchvision's.
        """
        u = torch.rand(1, 40, dtype=torch.float64).numpy()
        x, y, w, h = random_resized_boxes([width], [height], u, self.scale, self.ratio)[0].tolist()
        return y, x, h, w

    def __call__(self, img: Image.Image) -> Image.Image:
        i, j, h, w = self.get_params(*img.size)
        return img.crop((j, i, j + w, i + h)).resize(self.size[::-1], Image.BILINEAR)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision.transforms.ToTensor: uint8 HWC PIL image -> float32 CHW in [0, 1]."""
    t = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
    return t.permute(2, 0, 1).contiguous().to(dtype=torch.float32).div(255)


def _gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(dim=-3)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: float) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp(0, 1)


def _rgb2hsv(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(dim=-3)
    maxc = torch.max(img, dim=-3).values
    minc = torch.min(img, dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv2rgb(img: torch.Tensor) -> torch.Tensor:
    h, s, v = img.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = (h * 6.0) - i
    i = i.to(dtype=torch.int32)
    p = torch.clamp(v * (1.0 - s), 0.0, 1.0)
    q = torch.clamp(v * (1.0 - s * f), 0.0, 1.0)
    t = torch.clamp(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    i = i % 6
    mask = i.unsqueeze(dim=-3) == torch.arange(6, dtype=torch.int32).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=-3)
    a2 = torch.stack((t, v, v, q, p, p), dim=-3)
    a3 = torch.stack((p, p, t, v, v, q), dim=-3)
    a4 = torch.stack((a1, a2, a3), dim=-4)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(dtype=img.dtype), a4)


class ColorJitter:
    """torchvision.transforms.ColorJitter on float CHW tensors, random order per call."""

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
        self.brightness = (max(0.0, 1 - brightness), 1 + brightness)
        self.contrast = (max(0.0, 1 - contrast), 1 + contrast)
        self.saturation = (max(0.0, 1 - saturation), 1 + saturation)
        self.hue = (-hue, hue)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        order = torch.randperm(4)
        b = float(torch.empty(1).uniform_(*self.brightness))
        c = float(torch.empty(1).uniform_(*self.contrast))
        s = float(torch.empty(1).uniform_(*self.saturation))
        h = float(torch.empty(1).uniform_(*self.hue))
        for fn_id in order.tolist():
            if fn_id == 0:
                img = _blend(img, torch.zeros_like(img), b)
            elif fn_id == 1:
                mean = torch.mean(_gray(img), dim=(-3, -2, -1), keepdim=True)
                img = _blend(img, mean, c)
            elif fn_id == 2:
                img = _blend(img, _gray(img), s)
            else:
                hsv = _rgb2hsv(img)
                hch, sch, vch = hsv.unbind(dim=-3)
                hch = (hch + h) % 1.0
                img = _hsv2rgb(torch.stack((hch, sch, vch), dim=-3))
        return img


class Compose:
    def __init__(self, fns):
        self.fns = fns

    def __call__(self, x):
        for fn in self.fns:
            x = fn(x)
        return x


def starter_transform():
    """The exercise's transform pipeline."""
    if _tv is not None:  # pragma: no cover - torchvision absent here
        return _tv.Compose(
            [_tv.RandomResizedCrop(224, scale=(0.9, 1)), _tv.ToTensor(), _tv.ColorJitter(0.5, 0.5, 0.5, 0.5)]
        )
    return Compose([RandomResizedCrop(224, scale=(0.9, 1)), to_tensor, ColorJitter(0.5, 0.5, 0.5, 0.5)])


# --- the dataset ----------------------------------------------------------------------------


class VideoFrameDataset(torch.utils.data.Dataset):
    """Every frame of every video; an item seeks to its keyframe and decodes to its pts."""

    def __init__(self, paths, transform=None):
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.items = []  # (video index, pts) for every frame, in presentation order
        for vi, path in enumerate(self.paths):
            with av.open(path) as container:
                stream = container.streams.video[0]
                pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
            self.items.extend((vi, t) for t in pts)
        self._containers = {}  # per worker process: path -> open container

    def __len__(self):
        return len(self.items)

    def _container(self, path):
        container = self._containers.get(path)
        if container is None:
            container = av.open(path)
            self._containers[path] = container
        return container

    def __getitem__(self, idx):
        vi, target = self.items[idx]
        container = self._container(self.paths[vi])
        stream = container.streams.video[0]
        container.seek(target, stream=stream, backward=True, any_frame=False)
        frame = None
        for frame in container.decode(stream):
            if frame.pts is not None and frame.pts >= target:
                break
        if frame is None:
            raise RuntimeError(f"{self.paths[vi]}: no frame decoded at pts {target}")
        img = frame.to_image()
        if self.transform is not None:
            img = self.transform(img)
        return img


class VideoClipDataset(torch.utils.data.Dataset):
    """Kinetics-style: item i is a random clip of video ``i // clips_per_video``. Each item
    seeks to the keyframe at or before the clip's first frame and decodes its ``clip_len``
    frames (every ``frame_stride``-th); one RandomResizedCrop box per clip, then ToTensor:
    (clip_len, 3, 224, 224) float32, what a per-sample clip Dataset does per item."""

    def __init__(self, paths, *, clip_len, frame_stride=1, clips_per_video=1, size=224):
        self.paths = [str(p) for p in paths]
        self.clip_len, self.stride, self.k = clip_len, frame_stride, clips_per_video
        self.crop = RandomResizedCrop(size, scale=(0.9, 1))
        self.pts = []
        span = (clip_len - 1) * frame_stride + 1
        for path in self.paths:
            with av.open(path) as container:
                stream = container.streams.video[0]
                pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
            if len(pts) < span:
                raise ValueError(f"{path}: {len(pts)} frames, fewer than one clip of {span}")
            self.pts.append(pts)
        self._containers = {}

    def __len__(self):
        return len(self.paths) * self.k

    def __getitem__(self, idx):
        vi = idx // self.k
        pts = self.pts[vi]
        span = (self.clip_len - 1) * self.stride + 1
        start = int(torch.randint(0, len(pts) - span + 1, (1,)))
        want = [pts[start + j * self.stride] for j in range(self.clip_len)]
        container = self._containers.get(vi)
        if container is None:
            container = self._containers[vi] = av.open(self.paths[vi])
        stream = container.streams.video[0]
        container.seek(want[0], stream=stream, backward=True, any_frame=False)
        got = {}
        for frame in container.decode(stream):
            if frame.pts in want and frame.pts not in got:
                got[frame.pts] = frame.to_image()
            if frame.pts is not None and frame.pts >= want[-1]:
                break
        if len(got) < len(want):
            raise RuntimeError(f"{self.paths[vi]}: decoded {len(got)} of the clip's {len(want)} frames")
        i, j, h, w = self.crop.get_params(*got[want[0]].size)
        frames = [got[t].crop((j, i, j + w, i + h)).resize(self.crop.size[::-1], Image.BILINEAR) for t in want]
        return torch.stack([to_tensor(f) for f in frames])


def make_clip_loader(paths, *, clip_len, frame_stride=1, clips_per_video=1, batch_size=16, num_workers=2, seed=0):
    """A shuffled DataLoader over :class:`VideoClipDataset`: k random clips per video per epoch."""
    torch.manual_seed(seed)
    dataset = VideoClipDataset(paths, clip_len=clip_len, frame_stride=frame_stride, clips_per_video=clips_per_video)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers)


def make_loader(paths, *, batch_size=128, num_workers=2, seed=0):
    """The exercise's DataLoader over ``paths``."""
    torch.manual_seed(seed)
    dataset = VideoFrameDataset(paths, transform=starter_transform())
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    random.seed(0)
    loader = make_loader(args.videos, batch_size=args.batch_size, num_workers=args.workers)
    start = time.perf_counter()
    n = 0
    for k, batch in enumerate(loader):
        n += batch.shape[0]
        elapsed = time.perf_counter() - start
        sys.stdout.write(f"batch {k}: {tuple(batch.shape)} {n / elapsed:.1f} images/s\n")
        if k + 1 >= args.batches:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
