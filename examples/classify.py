"""Kinetics-style video classification from a labelled manifest, evaluated over views.

A CSV manifest lists ``path,label`` (class names; ringload maps them to ids in a stable,
sorted order). The model trains on one random clip per video per epoch
(``clips_per_video=1``), then is evaluated on held-out videos the way video classification
papers report it, every evaluation read by a ``VideoLoader`` with ``sampling="sequential"``:

- 1 view: the centre clip of each video, centre crop (``clips_per_video=1, crop="center"``);
- k x 3 views: ``--eval-clips`` uniformly spaced clips x 3 crops (``clips_per_video=k,
  crop="three"``), the model's scores averaged per video with ``ringload.average_per_video``;
- TSN: ``--segments`` frames per video, the middle of each equal part.

``--multi-label`` uses a JSONL manifest whose rows carry a ``labels`` list instead: ringload
returns multi-hot targets, the loss is binary cross-entropy and the metric is mAP.

    python examples/classify.py                  # single label: top-1
    python examples/classify.py --multi-label    # multi-label: mAP
    python examples/classify.py --smoke          # seconds, for CI

The videos are generated and grouped into classes by their dominant colour (the hue order
of all videos cut into equal groups); ``--val-per-class`` videos of each class are held
out for the evaluation. The last line is ``RESULT {json}``.

A run on a busy 2-core machine (a benchmark ran beside it), ``python examples/classify.py``,
47.5 s wall with the videos already generated (the ``step`` lines left out)::

    train: 12 videos, 4 classes, one clip per video per epoch (1 batch per epoch); ...
    top1 on 8 held-out videos:
      1 view (1 clip x centre crop)     15 views (5 clips x 3 crops)      TSN 8 segments
      0.375                             0.750                             0.750
    30.1 clips/s while training

and ``python examples/classify.py --multi-label``, 35.9 s wall::

    mAP on 8 held-out videos:
      1 view (1 clip x centre crop)     15 views (5 clips x 3 crops)      TSN 8 segments
      0.718                             0.761                             0.811
    39.9 clips/s while training

Eight held-out videos are few: one video is 0.125 of top-1, so read these as "more views
see more of each video", not as a measured gain.
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

CLASSES = ["archery", "bowling", "cartwheel", "dribbling", "juggling", "kayaking"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--multi-label", action="store_true")
    p.add_argument("--videos", type=int, default=12, help="generated training videos (classes by hue, equal groups)")
    p.add_argument("--val-per-class", type=int, default=2, help="held-out videos of each class for the evaluation")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--source", default="320x240")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--frame-stride", type=int, default=4)
    p.add_argument("--eval-clips", type=int, default=5, help="uniformly spaced clips per video (x 3 crops) at evaluation")
    p.add_argument("--segments", type=int, default=8, help="TSN segments per video at evaluation")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args(argv)
    if args.smoke:
        args.videos, args.val_per_class, args.classes, args.source, args.seconds = 4, 1, 2, "96x80", 2.0
        args.clip_len, args.frame_stride, args.eval_clips, args.segments, args.size = 4, 2, 2, 4, 48
        args.batch_size, args.steps = 4, 16
        args.num_workers = args.num_workers or 1
    if not 2 <= args.classes <= len(CLASSES):
        p.error(f"--classes must be between 2 and {len(CLASSES)}")
    if args.videos % args.classes:
        p.error("--videos must be a multiple of --classes (equal hue groups)")
    if args.val_per_class < 1 or args.eval_clips < 1:
        p.error("--val-per-class and --eval-clips must be >= 1")
    return args


def split(args, paths) -> tuple[list[dict], list[dict]]:
    """Manifest rows (train, val): classes by hue over all videos, ``val_per_class`` of each class held out."""
    names = CLASSES[: args.classes]
    cls = class_of_each_video(paths, len(names))
    groups = ["group_a", "group_b"]  # multi-label: a video's class and a coarse group (first or second half)
    train, val, held = [], [], [0] * len(names)
    for p, c in zip(paths, cls):
        row = {"path": str(p), "label": names[c]} if not args.multi_label else {
            "path": str(p), "labels": [names[c], groups[2 * c // len(names)]]}
        if held[c] < args.val_per_class:
            held[c] += 1
            val.append(row)
        else:
            train.append(row)
    return train, val


def manifests(args, paths) -> tuple[pathlib.Path, pathlib.Path, int]:
    """Write the train and val manifests; returns them and the number of classes."""
    train, val = split(args, paths)
    num_classes = len({n for r in train for n in ([r["label"]] if "label" in r else r["labels"])})
    folder = args.data_dir / "manifests"
    tag = f"{len(paths)}-{args.classes}-{args.val_per_class}-{paths[0].parent.name}"
    write = write_jsonl_manifest if args.multi_label else write_csv_manifest
    ext = "jsonl" if args.multi_label else "csv"
    return write(folder / f"train-{tag}.{ext}", train), write(folder / f"val-{tag}.{ext}", val), num_classes


def evaluate(model, loader, *, multi_label: bool) -> tuple[float, int, int]:
    """(score, videos, views): the model's scores averaged over each video's views, then top-1 or mAP."""
    scores, videos, targets = [], [], {}
    model.eval()
    with torch.no_grad():
        for batch in loader:  # every (video, clip_index, crop_index) once, in file order
            out = model(to_float(batch.frames))
            scores.append(out.sigmoid() if multi_label else out.softmax(-1))
            videos.append(batch.video_index)
            for v, y in zip(batch.video_index.tolist(), batch.labels):
                targets[v] = y
    model.train()
    views = sum(len(v) for v in videos)
    video, mean = ringload.average_per_video(torch.cat(scores), torch.cat(videos))
    target = torch.stack([targets[v] for v in video.tolist()])
    if multi_label:
        return mean_average_precision(mean, target.float()), len(video), views
    return float((mean.argmax(-1) == target.long()).float().mean()), len(video), views


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    w, h = (int(v) for v in args.source.split("x"))
    total = args.videos + args.classes * args.val_per_class
    paths = make_videos(args.data_dir, distinct=total, width=w, height=h, fps=30, seconds=args.seconds)
    train_src, val_src, num_classes = manifests(args, paths)
    common = dict(size=(args.size, args.size), seed=args.seed, num_workers=args.num_workers)
    clips = dict(sample="clips", clip_len=args.clip_len, frame_stride=args.frame_stride)

    train = ringload.VideoLoader(
        str(train_src), batch_size=args.batch_size, crop="random_resized", scale=(0.6, 1.0), hflip=True,
        sampling="bounded", clips_per_video=1, **clips, **common,
    )  # fmt: skip
    model = TinyClipNet(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    print(f"train: {train.num_videos} videos, {num_classes} classes, one clip per video per epoch "
          f"({len(train)} batch{'es' if len(train) > 1 else ''} per epoch); {train_src}", flush=True)
    meter = Meter("clips")
    step, epoch = 0, 0
    with train:
        classes = train.classes
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
    ev = dict(batch_size=args.batch_size, sampling="sequential", **common)
    scores = {}
    # 1 view: the centre clip, centre crop. k x 3 views: k uniformly spaced clips x left/centre/right.
    for name, kw in (("center_clip", dict(clips_per_video=1, crop="center", **clips)),
                     ("views", dict(clips_per_video=args.eval_clips, crop="three", **clips)),
                     ("tsn_segments", dict(sample="segments", num_segments=args.segments, crop="center"))):
        with ringload.VideoLoader(str(val_src), **kw, **ev) as loader:
            assert loader.classes == classes, "train and val must map class names to the same ids"
            scores[name] = evaluate(model, loader, multi_label=args.multi_label)

    (one, n_videos, _), (multi, _, multi_views), (tsn, _, _) = scores["center_clip"], scores["views"], scores["tsn_segments"]
    result = {
        "example": "classify",
        "metric": metric,
        "val_videos": n_videos,
        "center_clip": round(one, 4),
        "views": round(multi, 4),
        "views_per_video": multi_views // n_videos,
        "eval_clips": args.eval_clips,
        "eval_crops": 3,
        "tsn_segments": round(tsn, 4),
        **meter.summary(),
    }
    print(f"{metric} on {n_videos} held-out videos:")
    many = f"{multi_views // n_videos} views ({args.eval_clips} clips x 3 crops)"
    print(f"  {'1 view (1 clip x centre crop)':<34}{many:<34}TSN {args.segments} segments")
    print(f"  {one:<34.3f}{multi:<34.3f}{tsn:.3f}")
    print(f"{result['clips_per_s']:.1f} clips/s while training")
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
