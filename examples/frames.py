"""Uniform random frames from 200+ videos into a small model (the robotics exercise).

The exercise's starter loader reads frames at uniform random from videos, applies
RandomResizedCrop(224, scale=(0.9, 1)) and colour jitter, and batches 128 of them. Here the
same job runs through ringload: decoders crop and resize while converting, the batch
arrives as uint8 (B, 3, 224, 224), and colour jitter runs batched on the batch's device (``ringload.augment``).

    python examples/frames.py                       # 200 names, batch 128, bounded sampling
    python examples/frames.py --sampling strict     # exact uniform sampling (a permutation)
    python examples/frames.py --smoke               # seconds, for CI

The model learns which source video a frame comes from (a task that needs real pixels,
so a falling loss shows the frames are right). The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Meter,
    TinyFrameNet,
    add_common_args,
    describe_stats,
    link_names,
    make_videos,
    print_result,
)

import ringload  # noqa: E402
from ringload import augment  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--sampling", choices=["strict", "bounded"], default="bounded")
    p.add_argument("--videos", type=int, default=200, help="distinct file names (links to --distinct sources)")
    p.add_argument("--distinct", type=int, default=4, help="distinct generated videos behind the names")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--size", type=int, default=224, help="output side length")
    p.add_argument("--steps", type=int, default=12, help="training steps (batches)")
    p.add_argument("--source", default="480x270", help="generated video size WxH")
    p.add_argument("--seconds", type=float, default=10.0, help="generated video length")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where batches go")
    p.add_argument(
        "--jitter",
        default=None,
        help="ColorJitter brightness,contrast,saturation,hue (default: the exercise's 0.5,0.5,0.5,0.5 on a GPU; "
        "hue 0 on a CPU, where its RGB-HSV round trip costs more than decoding the frame)",
    )
    args = p.parse_args(argv)
    if args.jitter is None:
        args.jitter = "0.5,0.5,0.5,0.5" if args.device.startswith("cuda") else "0.5,0.5,0.5,0"
    if args.smoke:
        args.videos, args.distinct, args.batch_size, args.size, args.steps = 12, 3, 16, 64, 16
        args.source, args.seconds = "128x96", 2.0
        args.jitter = "0.2,0.2,0.2,0.05"  # milder, so a few steps suffice to learn the footage
        args.num_workers = args.num_workers or 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    w, h = (int(v) for v in args.source.split("x"))
    sources = make_videos(args.data_dir, distinct=args.distinct, width=w, height=h, fps=30, seconds=args.seconds)
    paths = link_names(sources, args.data_dir, args.videos)
    source_of = torch.tensor([j % len(sources) for j in range(len(paths))])  # the label: which footage

    loader = ringload.VideoLoader(
        [str(p) for p in paths],
        batch_size=args.batch_size,
        sample="frames",
        size=(args.size, args.size),
        crop="random_resized",
        scale=(0.9, 1.0),
        sampling=args.sampling,
        seed=args.seed,
        num_workers=args.num_workers,
        device=args.device,
    )
    model = TinyFrameNet(num_classes=len(sources)).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # ColorJitter, batched, on the batch's device; each sample's factors are keyed like its
    # crop, so a resumed run draws the same ones.
    b, c, s, hue = (float(v) for v in args.jitter.split(","))
    jitter = augment.BatchAugment(
        brightness=b, contrast=c, saturation=s, hue=hue, mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD
    )
    print(
        f"{len(paths)} videos ({len(sources)} distinct), {len(loader)} batches of {args.batch_size} per epoch, "
        f"sampling={args.sampling}, training {args.steps} steps on {args.device}, ColorJitter({args.jitter})",
        flush=True,
    )
    meter = Meter("images")
    step, epoch = 0, 0
    with loader:
        while step < args.steps:
            loader.set_epoch(epoch)
            for batch in loader:
                meter.got_batch()
                x = jitter(batch.frames, augment.keys_for_batch(batch), seed=args.seed, epoch=epoch)
                y = source_of[batch.video_index.long()].to(args.device)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                meter.step_done(x.shape[0], loss.item())
                meter.report(step, args.steps)
                if step >= args.steps:
                    break
            epoch += 1
        meter.finish()
        stats = loader.stats()
    result = {"example": "frames", "sampling": args.sampling, "batch_size": args.batch_size, **meter.summary()}
    result["decoded_per_frame"] = round(stats["decoded_frames"] / max(1, stats["frames"]), 3)
    print(f"{result['images_per_s']:.1f} images/s, data wait {100 * result['data_wait_fraction']:.0f}% of the time")
    print(describe_stats(stats))
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
