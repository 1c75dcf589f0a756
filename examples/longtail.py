"""Long-tailed multi-label classification: uniform against class-balanced sampling.

The animal-behaviour story: 140 action classes, multi-label, split by training samples per
class into head (> 500), middle (100 to 500) and tail (< 100: 94 of the 140 classes), with
mAP reported per segment. This example builds a small dataset with the same shape, scaled
down by ``--scale`` (default 1/10: 14 classes, 2 head with > 50 training videos, 3 middle
with 10 to 50, 9 tail with < 10), trains the same tiny model twice for the same number of
steps, once with one uniform clip per video per epoch (``clips_per_video=1``) and once
class-balanced (``clips_per_video=1, balance="repeat_factor"``: a video of a class that
is rarer than ``1 / classes`` is repeated ``sqrt(t / f(c))`` times per epoch), and prints
the test mAP of head, middle and tail classes side by side.

    python examples/longtail.py           # a few minutes on 2 CPU cores
    python examples/longtail.py --smoke   # seconds, for CI

The videos: camera-like backgrounds from ``ringload.synth.make_video`` (64x64, 8 fps), on
which each label of a video draws its own marker, a small square of the class's colour in
the class's cell of a 4x4 grid that jitters from frame to frame, blended with the
background. A video carries 1 to 3 labels. The test set is separate videos with
``--test-per-class`` positives of every class. Everything is seeded (``--seed``): the
same arguments give the same dataset, batches and model. The last line is ``RESULT {json}``.

A run on a busy 2-core machine (a benchmark ran beside it), ``python examples/longtail.py``,
2 min 30 s wall with the dataset already generated (it takes a few seconds; the ``step`` lines
left out)::

    14 classes, training videos per class [160, 51, 50, 22, 10, 9, 7, 6, 5, 4, 4, 3, 2, 2]: head 2 (> 50), middle 3 (10 to 50), tail 9 (< 10); data ready in 0.0 s
    uniform: 224 videos, 224.0 clips per epoch (expected)
    repeat_factor: 224 videos, 260.2 clips per epoch (expected)
    test mAP (10 positive test videos per class), 300 steps of 32 clips each:
             classes        uniform  repeat_factor
    head           2          1.000          1.000
    middle         3          1.000          1.000
    tail           9          0.581          0.595
    all           14          0.730          0.740
    tail      labels          0.125          0.192   (share of the labels seen in training)
    total 148.5 s

Class balance does what it says: tail labels are 19 % of what the model sees instead of
12.5 %. On this data it does not buy tail mAP: ``--seed 1`` (another dataset) gave tail
0.611 uniform against 0.612 balanced (middle 0.979 / 0.994), and a short schedule,
``--steps 60``, gave tail 0.199 / 0.172 (head 0.767 / 0.803, middle 0.369 / 0.380). Two
reasons, both worth knowing before expecting more from resampling: after 300 steps (about
43 epochs) the model has fitted every training video of every class (training loss about
0.003), so repeating the tail's 2 to 9 videos adds no information, and the tail's limit is
how few distinct videos it has; and average precision ranks the test videos per class, so
it does not see the bias against rare classes that resampling mostly corrects (a lower
score for every video of a class leaves that class's AP unchanged). Treat differences of
a few hundredths here as noise: a tail class has 10 positive test videos.
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import math
import os
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Meter,
    add_common_args,
    average_precisions,
    print_result,
    to_float,
    write_jsonl_manifest,
)

import ringload  # noqa: E402

#: The seed dataset's split, in training samples per class: head > 500, tail < 100.
HEAD_MIN, TAIL_MAX = 500, 100
SIZE = 64  # source and model frames are SIZE x SIZE
FPS = 8
FRAMES = 16  # frames per dataset video (2 s)
GRID = 4  # markers sit in the cells of a GRID x GRID grid
BACKGROUNDS = 6
MAX_LABELS = 3
VERSION = 1  # bump when the rendering changes: the cached dataset is rebuilt


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--classes", type=int, default=14, help="classes (at most 16), about 140 x scale")
    p.add_argument("--scale", type=float, default=0.1, help="the seed's head/tail thresholds (500, 100) times this")
    p.add_argument("--max-count", type=int, default=160, help="training videos of the most frequent class")
    p.add_argument("--test-per-class", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.45, help="marker opacity over the background")
    p.add_argument("--clip-len", type=int, default=4)
    p.add_argument("--frame-stride", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of each of the two runs")
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    if args.smoke:
        args.classes, args.scale, args.max_count, args.test_per_class = 4, 0.04, 24, 2
        args.batch_size, args.steps = 8, 10
        args.num_workers = args.num_workers or 1
    if not 3 <= args.classes <= GRID * GRID:
        p.error(f"--classes must be between 3 and {GRID * GRID}")
    return args


# --------------------------------------------------------------------------- data


def class_counts(args) -> list[int]:
    """Training videos per class, most frequent first: the seed's proportions of head, middle
    and tail classes (17, 29 and 94 of 140), counts spaced geometrically inside each segment."""
    head_min, tail_max = HEAD_MIN * args.scale, TAIL_MAX * args.scale
    n = args.classes
    n_head = max(1, round(n * 17 / 140))
    n_mid = max(1, round(n * 29 / 140))
    n_tail = n - n_head - n_mid
    if n_tail < 1 or args.max_count <= head_min or tail_max < 2:
        raise SystemExit("--classes, --scale and --max-count leave a segment empty")

    def spaced(hi, lo, k):  # k counts from hi down to lo, geometrically
        return [round(hi * (lo / hi) ** (i / max(1, k - 1))) for i in range(k)]

    head = spaced(args.max_count, math.floor(head_min) + 1, n_head)
    mid = spaced(math.floor(head_min), math.ceil(tail_max), n_mid)
    tail = spaced(math.ceil(tail_max) - 1, min(2, math.ceil(tail_max) - 1), n_tail)
    counts = head + mid + tail
    assert counts == sorted(counts, reverse=True)
    return counts


def segment_of(count: int, args) -> str:
    if count > HEAD_MIN * args.scale:
        return "head"
    return "tail" if count < TAIL_MAX * args.scale else "middle"


def assign_labels(counts: list[int], rng: np.random.Generator) -> list[list[int]]:
    """Videos as label lists: class c on ``counts[c]`` distinct videos, 1 to MAX_LABELS each.

    Rare classes are placed first, each on the videos that carry the fewest labels so far
    (ties broken at random), so every video gets a label and co-occurrence is random."""
    total = sum(counts)
    videos = max(max(counts), math.ceil(total / 1.5))
    labels: list[list[int]] = [[] for _ in range(videos)]
    for c in sorted(range(len(counts)), key=lambda c: counts[c]):
        load = np.array([len(x) for x in labels], dtype=np.float64) + rng.random(videos) * 0.5
        load[[len(x) >= MAX_LABELS for x in labels]] = np.inf
        for v in np.argsort(load, kind="stable")[: counts[c]]:
            labels[int(v)].append(c)
    return [sorted(x) for x in labels if x]


def class_colour(c: int, n: int) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(c / n, 0.9, 1.0)
    return np.array([r, g, b]) * 255.0


def render(background: np.ndarray, labels: list[int], n_classes: int, alpha: float, rng) -> np.ndarray:
    """uint8 (FRAMES, SIZE, SIZE, 3): a stretch of a background video with one marker per label."""
    start = int(rng.integers(0, len(background) - FRAMES + 1))
    frames = background[start : start + FRAMES].astype(np.float64)
    if rng.random() < 0.5:
        frames = frames[:, :, ::-1]
    cell, side = SIZE // GRID, SIZE // GRID - 6
    for c in labels:
        y0, x0 = (c // GRID) * cell + 3, (c % GRID) * cell + 3
        for t in range(FRAMES):
            dy, dx = rng.integers(-2, 3, size=2)
            y, x = y0 + dy, x0 + dx
            box = frames[t, y : y + side, x : x + side]
            box[:] = (1 - alpha) * box + alpha * class_colour(c, n_classes)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def encode(path: pathlib.Path, frames: np.ndarray) -> None:
    """Write RGB frames as H.264 (every 8th frame a keyframe), under a temporary name first."""
    import av

    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(tmp), "w", format="mp4") as container:
        options = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "keyint=8:min-keyint=8:scenecut=0"}
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    os.replace(tmp, path)


def make_dataset(args) -> tuple[pathlib.Path, pathlib.Path, list[int]]:
    """(train manifest, test manifest, training videos per class), cached under --data-dir."""
    from ringload import synth

    counts = class_counts(args)
    key = f"v{VERSION}-{counts}-{args.test_per_class}-{args.alpha}-{args.seed}"
    folder = args.data_dir / f"longtail-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    train_m, test_m = folder / "train.jsonl", folder / "test.jsonl"
    if train_m.exists() and test_m.exists():
        return train_m, test_m, counts
    folder.mkdir(parents=True, exist_ok=True)
    bg_dir = args.data_dir / f"longtail-backgrounds-{SIZE}"
    bg_dir.mkdir(parents=True, exist_ok=True)
    backgrounds = []
    for b in range(BACKGROUNDS):
        path = bg_dir / f"bg{b}.mp4"
        if not path.exists():
            synth.make_video(path, width=SIZE, height=SIZE, fps=FPS, seconds=6, gop=FPS, bframes=0, seed=1000 + b)
        info = ringload.probe(path)
        backgrounds.append(ringload.read_frames(path, range(info.num_frames)).data.permute(0, 2, 3, 1).numpy())
    rng = np.random.default_rng(args.seed)
    names = [f"class{c:02d}" for c in range(args.classes)]
    test_counts = [args.test_per_class] * args.classes
    for split, split_counts, manifest in (("train", counts, train_m), ("test", test_counts, test_m)):
        rows = []
        for i, labels in enumerate(assign_labels(split_counts, rng)):
            path = folder / f"{split}_{i:04d}.mp4"
            encode(path, render(backgrounds[int(rng.integers(BACKGROUNDS))], labels, args.classes, args.alpha, rng))
            rows.append({"path": path.name, "labels": [names[c] for c in labels]})
        write_jsonl_manifest(manifest.with_suffix(".partial"), rows).replace(manifest)
    return train_m, test_m, counts


# --------------------------------------------------------------------------- model


class TinyGridNet(nn.Module):
    """Three strided convolutions, then a linear layer over the whole 8x8 map (it keeps where
    things are), per frame; the clip's score is the mean over its frames."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(2 * width * (SIZE // 8) ** 2, num_classes)

    def forward(self, x):  # (B, T, C, H, W) float
        b, t = x.shape[:2]
        return self.head(self.features(x.flatten(0, 1))).view(b, t, -1).mean(1)


# --------------------------------------------------------------------------- train and test


def train_once(args, manifest, num_classes: int, balance: str | None):
    torch.manual_seed(args.seed)
    model = TinyGridNet(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loader = ringload.VideoLoader(
        str(manifest), batch_size=args.batch_size, sample="clips", clip_len=args.clip_len,
        frame_stride=args.frame_stride, size=(SIZE, SIZE), crop="center", clips_per_video=1,
        balance=balance, drop_last=True, seed=args.seed, num_workers=args.num_workers,
    )  # fmt: skip
    name = balance or "uniform"
    meter = Meter("clips")
    step, epoch, seen = 0, 0, torch.zeros(num_classes)
    with loader:
        classes, epoch_samples = loader.classes, loader.stats()["expected_epoch_samples"]
        print(f"{name}: {loader.num_videos} videos, {epoch_samples:.1f} clips per epoch (expected)", flush=True)
        while step < args.steps:
            loader.set_epoch(epoch)
            for batch in loader:
                meter.got_batch()
                logits = model(to_float(batch.frames))
                loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += batch.labels.sum(0)
                step += 1
                meter.step_done(len(batch), loss.item())
                meter.report(step, args.steps)
                if step >= args.steps:
                    break
            epoch += 1
        meter.finish()
    return model, classes, seen, meter.summary()


def test(args, model, manifest, classes) -> list[float]:
    """Per-class AP on the test videos, scores averaged over 2 clips per video."""
    scores, videos, targets = [], [], {}
    model.eval()
    with torch.no_grad(), ringload.VideoLoader(
        str(manifest), batch_size=args.batch_size, sample="clips", clip_len=args.clip_len,
        frame_stride=args.frame_stride, size=(SIZE, SIZE), crop="center", sampling="sequential",
        clips_per_video=2, seed=args.seed, num_workers=args.num_workers,
    ) as loader:  # fmt: skip
        assert loader.classes == classes, "train and test must map class names to the same ids"
        for batch in loader:
            scores.append(model(to_float(batch.frames)).sigmoid())
            videos.append(batch.video_index)
            for v, y in zip(batch.video_index.tolist(), batch.labels):
                targets[v] = y
    video, mean = ringload.average_per_video(torch.cat(scores), torch.cat(videos))
    return average_precisions(mean, torch.stack([targets[v] for v in video.tolist()]))


def segment_means(aps: list[float], segments: list[str]) -> dict:
    out = {}
    for seg in ("head", "middle", "tail"):
        vals = [a for a, s in zip(aps, segments) if s == seg and not math.isnan(a)]
        out[seg] = round(sum(vals) / len(vals), 4) if vals else None
    vals = [a for a in aps if not math.isnan(a)]
    out["all"] = round(sum(vals) / len(vals), 4) if vals else None
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    train_m, test_m, counts = make_dataset(args)
    segments = [segment_of(n, args) for n in counts]
    split = {s: segments.count(s) for s in ("head", "middle", "tail")}
    head_min, tail_max = HEAD_MIN * args.scale, TAIL_MAX * args.scale
    print(f"{args.classes} classes, training videos per class {counts}: head {split['head']} (> {head_min:g}), "
          f"middle {split['middle']} ({tail_max:g} to {head_min:g}), tail {split['tail']} (< {tail_max:g}); "
          f"data ready in {time.perf_counter() - t0:.1f} s", flush=True)
    runs, seen = {}, {}
    for balance in (None, "repeat_factor"):
        name = balance or "uniform"
        model, classes, seen_c, summary = train_once(args, train_m, args.classes, balance)
        aps = test(args, model, test_m, classes)
        runs[name] = {"mAP": segment_means(aps, segments), **summary}
        tail = [i for i, s in enumerate(segments) if s == "tail"]
        seen[name] = float(seen_c[tail].sum() / seen_c.sum())

    def cell(v):
        return f"{v:>15.3f}" if v is not None else f"{'-':>15}"

    print(f"test mAP ({args.test_per_class} positive test videos per class), "
          f"{args.steps} steps of {args.batch_size} clips each:")
    print(f"{'':<8}{'classes':>8}{'uniform':>15}{'repeat_factor':>15}")
    for seg in ("head", "middle", "tail", "all"):
        n = split.get(seg, args.classes)
        print(f"{seg:<8}{n:>8}{cell(runs['uniform']['mAP'][seg])}{cell(runs['repeat_factor']['mAP'][seg])}")
    print(f"{'tail':<8}{'labels':>8}{seen['uniform']:>15.3f}{seen['repeat_factor']:>15.3f}   (share of the labels seen in training)")
    print(f"total {time.perf_counter() - t0:.1f} s")
    print_result({
        "example": "longtail",
        "classes": args.classes,
        "train_counts": counts,
        "segments": split,
        "steps": args.steps,
        "tail_label_share": {k: round(v, 4) for k, v in seen.items()},
        "uniform": runs["uniform"],
        "repeat_factor": runs["repeat_factor"],
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
