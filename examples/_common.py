"""Small helpers shared by the examples: generated datasets, tiny models, progress and results.

Everything here is example scaffolding, not part of ringload. Each example imports it as
``from _common import ...`` (the examples directory is on ``sys.path`` when a script runs).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import pathlib
import tempfile
import time

import torch
from torch import nn

import ringload

DEFAULT_DATA_DIR = pathlib.Path(tempfile.gettempdir()) / "ringload-examples"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: finishes in seconds (used by the tests)")
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("RINGLOAD_EXAMPLES_DATA", DEFAULT_DATA_DIR)),
        help="where generated videos are cached (default: %(default)s or $RINGLOAD_EXAMPLES_DATA)",
    )
    parser.add_argument("--num-workers", type=int, default=None, help="decoder processes (default: ringload's)")
    parser.add_argument("--seed", type=int, default=0)


# --------------------------------------------------------------------------- data


def make_videos(
    root: pathlib.Path, *, distinct: int, width: int, height: int, fps: int, seconds: float, gop: int = 30, bframes: int = 2
) -> list[pathlib.Path]:
    """``distinct`` camera-like videos made by ringload.synth, cached under ``root``.

    make_video writes under a temporary name and renames when complete, so an interrupted
    run never leaves a half-written video behind for the next run to trust.
    """
    from ringload import synth

    folder = root / f"src-{width}x{height}-{fps}fps-{seconds:g}s-gop{gop}-b{bframes}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(distinct):
        path = folder / f"v{i:03d}.mp4"
        if not path.exists():
            synth.make_video(path, width=width, height=height, fps=fps, seconds=seconds, gop=gop, bframes=bframes, seed=i)
        paths.append(path)
    return paths


def link_names(sources: list[pathlib.Path], root: pathlib.Path, count: int) -> list[pathlib.Path]:
    """``count`` distinct file names, name j a symbolic link to ``sources[j % len(sources)]``.

    This is how the robotics exercise asks for 200+ videos: the same footage under many
    names. ringload treats every name as its own video.
    """
    folder = root / f"links-{count}-of-{sources[0].parent.name}-{len(sources)}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for j in range(count):
        link = folder / f"video_{j:04d}.mp4"
        target = sources[j % len(sources)].resolve()
        if not link.is_symlink() or pathlib.Path(os.readlink(link)) != target:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        out.append(link)
    return out


def write_csv_manifest(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl_manifest(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def class_of_each_video(paths, num_classes: int) -> list[int]:
    """Group the generated videos by their dominant hue, ``num_classes`` equal groups.

    Kinetics classes differ in what the pixels show; these synthetic videos differ mostly in
    their palette, so a label that follows the palette is one a small model can learn from
    pixels and carry over to other clips and crops of a video.
    """
    hues = []
    for path in paths:
        r, g, b = ringload.read_frames(path, [0]).data[0].float().mean(dim=(1, 2)).tolist()
        hues.append(math.atan2(math.sqrt(3) * (g - b), 2 * r - g - b))
    order = sorted(range(len(paths)), key=lambda i: hues[i])
    out = [0] * len(paths)
    for rank, i in enumerate(order):
        out[i] = rank * num_classes // len(paths)
    return out


# --------------------------------------------------------------------------- models


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in about [-1, 1] (the cast belongs after the copy to the device)."""
    return frames.float().div_(127.5).sub_(1.0)


class TinyFrameNet(nn.Module):
    """A few strided convolutions and a linear head: enough to learn, cheap on a CPU."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=4, padding=2, bias=False),
            nn.GroupNorm(4, width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.GroupNorm(4, 2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):  # (B, C, H, W) float
        return self.head(self.features(x))


class TinyClipNet(nn.Module):
    """Per-frame TinyFrameNet features averaged over time (TSN-style consensus)."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        self.frame = TinyFrameNet(num_classes, width)

    def forward(self, x):  # (B, T, C, H, W) float
        b, t = x.shape[:2]
        return self.frame(x.flatten(0, 1)).view(b, t, -1).mean(1)


class TinyPredictor(nn.Module):
    """A small video model: from the first T-1 frames of a clip, predict the last one at low resolution."""

    def __init__(self, out_hw: int = 16, width: int = 16):
        super().__init__()
        self.out_hw = out_hw
        self.encode = nn.Sequential(
            nn.Conv3d(3, width, (3, 5, 5), stride=(1, 4, 4), padding=(1, 2, 2)),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, 2 * width, 3, stride=(2, 2, 2), padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool3d((1, 4, 4)),
            nn.Flatten(),
        )
        self.decode = nn.Linear(2 * width * 16, 3 * out_hw * out_hw)

    def forward(self, clip):  # (B, T, C, H, W) float
        z = self.encode(clip.transpose(1, 2))
        return self.decode(z).view(-1, 3, self.out_hw, self.out_hw)


def average_precisions(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Average precision of each class (scores, targets: (N, K)); NaN for a class without positives."""
    aps = []
    for k in range(targets.shape[1]):
        t = targets[:, k] > 0
        if not t.any():
            aps.append(float("nan"))
            continue
        order = torch.argsort(scores[:, k], descending=True, stable=True)
        hits = t[order].float()
        precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return aps


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """mAP over classes that have at least one positive (scores, targets: (N, K))."""
    aps = [a for a in average_precisions(scores, targets) if not math.isnan(a)]
    return sum(aps) / len(aps) if aps else float("nan")


# --------------------------------------------------------------------------- progress


class Meter:
    """Throughput, time spent waiting for data, and the loss curve of a training loop."""

    def __init__(self, unit: str):
        self.unit = unit
        self.items = 0
        self.losses: list[float] = []
        self.wait_s = 0.0
        self.start = time.perf_counter()
        self.end = None
        self._mark = self.start

    def got_batch(self) -> None:
        """Call right after the loader handed out a batch: the time since the last step was data wait."""
        now = time.perf_counter()
        self.wait_s += now - self._mark
        self._mark = now

    def step_done(self, items: int, loss: float) -> None:
        self.items += items
        self.losses.append(float(loss))
        self._mark = time.perf_counter()

    def finish(self) -> None:
        """Stop the clock (before closing the loader: teardown is not throughput)."""
        self.end = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        return (self.end or time.perf_counter()) - self.start

    def rate(self) -> float:
        return self.items / max(self.elapsed_s, 1e-9)

    def line(self, step: int) -> str:
        return f"step {step:4d}  loss {self.losses[-1]:.4f}  {self.rate():8.1f} {self.unit}/s"

    def report(self, step: int, steps: int) -> None:
        """Print a progress line at the first step and about eight times over ``steps``."""
        if step % max(1, steps // 8) == 0 or step == 1:
            print(self.line(step), flush=True)

    def summary(self) -> dict:
        k = max(1, min(5, len(self.losses) // 4))
        first = sum(self.losses[:k]) / k
        last = sum(self.losses[-k:]) / k
        return {
            "steps": len(self.losses),
            self.unit: self.items,
            f"{self.unit}_per_s": round(self.rate(), 2),
            "elapsed_s": round(self.elapsed_s, 3),
            "data_wait_fraction": round(self.wait_s / max(self.elapsed_s, 1e-9), 4),
            "loss_first": round(first, 5),
            "loss_last": round(last, 5),
            "loss_fell": bool(last < first and math.isfinite(last)),
        }


def describe_stats(stats: dict) -> str:
    """One line from ``loader.stats()``: decode work per delivered frame, ring memory, decoders."""
    delivered = max(1, stats.get("frames", 0))
    return (
        f"loader: {stats.get('decoded_frames', 0)} frames decoded for {delivered} delivered "
        f"({stats.get('decoded_frames', 0) / delivered:.1f} per frame), ring {stats.get('ring_bytes', 0) / 2**20:.0f} MiB "
        f"in {stats.get('num_slots', 0)} slots, {stats.get('num_workers', 0)} decoders, "
        f"{stats.get('decoder_restarts', 0)} restarts, {len(stats.get('quarantined', {}))} quarantined files"
    )


def print_result(record: dict) -> None:
    """The last line every example prints: ``RESULT {json}``, for scripts and tests."""
    print("RESULT " + json.dumps(record, sort_keys=True), flush=True)


def batch_digest(video_index: torch.Tensor, frame_index: torch.Tensor) -> str:
    """A short fingerprint of which samples a batch held (to compare runs)."""
    h = hashlib.sha256()
    h.update(video_index.to(torch.int64).contiguous().numpy().tobytes())
    h.update(frame_index.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

