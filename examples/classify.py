"""Kinetics-style video classification from a labelled manifest.

A CSV manifest lists ``path,label`` (class names; ringload maps them to ids in a stable,
sorted order). The model trains on random clips, then is evaluated two ways, as video
classification papers do: one center clip per video, and TSN segments (one frame from
each of N equal parts, center of each part) read in sequential order. ``--multi-label``
uses a JSONL manifest whose rows carry a ``labels`` list instead: ringload returns
multi-hot targets, the loss is binary cross-entropy and the metric is mAP.

    python examples/classify.py                  # single label: top-1
    python examples/classify.py --multi-label    # multi-label: mAP
    python examples/classify.py --smoke          # seconds, for CI

The videos are generated and grouped into classes by their dominant colour; the
evaluation samples other clips and crops of the training videos, so it checks the pipeline
(labels, clips, segments, metrics), not generalisation to new videos. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Meter,
    TinyClipNet,
    add_common_args,
    class_of_each_video,
    make_videos,
    mean_average_precision,
    print_result,
    to_float,
    write_csv_manifest,
    write_jsonl_manifest,
)

import ringload  # noqa: E402
from ringload import probe, read_frames  # noqa: E402

CLASSES = ["archery", "bowling", "cartwheel", "dribbling", "juggling", "kayaking"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--multi-label", action="store_true")
    p.add_argument("--videos", type=int, default=12, help="generated videos (one class each, round robin)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--source", default="320x240")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--frame-stride", type=int, default=4)
    p.add_argument("--segments", type=int, default=8, help="TSN segments per video at evaluation")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args(argv)
    if args.smoke:
        args.videos, args.classes, args.source, args.seconds = 4, 2, "96x80", 2.0
        args.clip_len, args.frame_stride, args.segments, args.size = 4, 2, 4, 48
        args.batch_size, args.steps = 8, 16
        args.num_workers = args.num_workers or 1
    if not 2 <= args.classes <= len(CLASSES):
        p.error(f"--classes must be between 2 and {len(CLASSES)}")
    return args


def read_manifest(args, paths) -> list[dict]:
    names = CLASSES[: args.classes]
    cls = class_of_each_video(paths, len(names))
    if not args.multi_label:
        return [{"path": str(p), "label": names[c]} for p, c in zip(paths, cls)]
    # Two labels per video: its class and a coarse group (the first or second half of the classes).
    groups = ["group_a", "group_b"]
    return [{"path": str(p), "labels": [names[c], groups[2 * c // len(names)]]} for p, c in zip(paths, cls)]


def manifest(args, paths) -> tuple[pathlib.Path, int]:
    """Write the manifest; returns it and the number of classes."""
    rows = read_manifest(args, paths)
    num_classes = len({n for r in rows for n in ([r["label"]] if "label" in r else r["labels"])})
    folder = args.data_dir / "manifests"
    name = f"train-{len(paths)}-{args.classes}"
    if not args.multi_label:
        return write_csv_manifest(folder / f"{name}.csv", rows), num_classes
    return write_jsonl_manifest(folder / f"{name}.jsonl", rows), num_classes


def evaluate(model, loader, *, multi_label: bool, num_videos: int, num_classes: int) -> float:
    """Average the model's scores per video over what the loader yields, then score the videos."""
    scores = torch.zeros(num_videos, num_classes)
    seen = torch.zeros(num_videos, dtype=torch.bool)
    targets = torch.zeros(num_videos, num_classes) if multi_label else torch.zeros(num_videos, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            out = model(to_float(batch.frames))
            out = out.sigmoid() if multi_label else out.softmax(-1)
            v = batch.video_index.long()
            scores.index_add_(0, v, out)
            seen[v] = True
            targets[v] = batch.labels.to(targets.dtype)
    model.train()
    scores, targets = scores[seen], targets[seen]
    if multi_label:
        return mean_average_precision(scores, targets)
    return float((scores.argmax(-1) == targets).float().mean())


def labels_of(args, paths, num_classes: int) -> torch.Tensor:
    """Targets as the manifest states them (class ids in sorted name order, as ringload maps them)."""
    rows = [[r["label"]] if "label" in r else r["labels"] for r in read_manifest(args, paths)]
    names = sorted({n for r in rows for n in r})
    assert len(names) == num_classes
    if not args.multi_label:
        return torch.tensor([names.index(r[0]) for r in rows])
    out = torch.zeros(len(rows), num_classes)
    for i, r in enumerate(rows):
        out[i, [names.index(n) for n in r]] = 1
    return out


def center_crop_resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (T, C, H, W) -> float (T, C, size, size): the largest centred square, resized."""
    h, w = frames.shape[-2:]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    box = to_float(frames[..., y : y + side, x : x + side])
    return F.interpolate(box, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def evaluate_center(model, paths, targets, *, args, multi_label: bool, num_videos: int, num_classes: int) -> float:
    """Score one clip from the middle of each video (center crop), read with ``ringload.read_frames``."""
    scores = []
    model.eval()
    with torch.no_grad():
        for path in paths:
            n = probe(path).num_frames
            span = (args.clip_len - 1) * args.frame_stride + 1
            start = max(0, (n - span) // 2)
            idx = [min(n - 1, start + j * args.frame_stride) for j in range(args.clip_len)]
            clip = center_crop_resize(read_frames(path, idx).data, args.size)
            out = model(clip[None])
            scores.append(out.sigmoid() if multi_label else out.softmax(-1))
    model.train()
    scores = torch.cat(scores)
    if multi_label:
        return mean_average_precision(scores, targets)
    return float((scores.argmax(-1) == targets).float().mean())


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    w, h = (int(v) for v in args.source.split("x"))
    paths = make_videos(args.data_dir, distinct=args.videos, width=w, height=h, fps=30, seconds=args.seconds)
    source, num_classes = manifest(args, paths)
    common = dict(size=(args.size, args.size), seed=args.seed, num_workers=args.num_workers)

    train = ringload.VideoLoader(
        str(source), batch_size=args.batch_size, sample="clips", clip_len=args.clip_len,
        frame_stride=args.frame_stride, crop="random_resized", scale=(0.6, 1.0), hflip=True,
        sampling="bounded", **common,
    )  # fmt: skip
    model = TinyClipNet(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    print(f"manifest {source} ({len(paths)} videos, {num_classes} classes), {len(train)} batches per epoch", flush=True)
    meter = Meter("clips")
    step, epoch = 0, 0
    with train:
        while step < args.steps:
            train.set_epoch(epoch)
            for batch in train:
                meter.got_batch()
                logits = model(to_float(batch.frames))
                if args.multi_label:
                    loss = F.binary_cross_entropy_with_logits(logits, batch.labels.float())
                else:
                    loss = F.cross_entropy(logits, batch.labels.long())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                meter.step_done(logits.shape[0], loss.item())
                meter.report(step, args.steps)
                if step >= args.steps:
                    break
            epoch += 1
        meter.finish()

    metric = "mAP" if args.multi_label else "top1"
    ev = dict(multi_label=args.multi_label, num_videos=len(paths), num_classes=num_classes)
    # One clip from the middle of each video, the standard single-clip test: exact reads.
    center_score = evaluate_center(model, paths, labels_of(args, paths, num_classes), args=args, **ev)
    # TSN: num_segments frames per video, one from the middle of each equal part, in file order.
    with ringload.VideoLoader(
        str(source), batch_size=args.batch_size, sample="segments", num_segments=args.segments,
        crop="center", sampling="sequential", drop_last=False, **common,
    ) as tsn:  # fmt: skip
        tsn_score = evaluate(model, tsn, **ev)

    result = {
        "example": "classify",
        "metric": metric,
        "center_clip": round(center_score, 4),
        "tsn_segments": round(tsn_score, 4),
        **meter.summary(),
    }
    print(f"{metric}: center clip {center_score:.3f}, TSN {args.segments} segments {tsn_score:.3f}")
    print(f"{result['clips_per_s']:.1f} clips/s while training")
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
