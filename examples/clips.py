"""5-second clips at 4 fps with 256x256 random crops from long videos (the sports-clip story).

The usual way to build such a dataset is to cut every clip to disk with ffmpeg first (hours
for a few thousand clips), then train. Here the clips are decoded on the fly: each clip is
20 frames spread over 5 s, cropped at a random 256x256 window (no resize), and the loader
decodes the next batches while the model trains on this one (training overlaps loading).

    python examples/clips.py            # 16 long videos, 5 s clips at 4 fps, 256x256 crops
    python examples/clips.py --smoke    # seconds, for CI

The small video model predicts a clip's last frame (at low resolution) from the frames
before it, a stand-in for the future-prediction model of the story. The output shows
clips/s and how much of the step time was spent waiting for data; the last line is
``RESULT {json}``.
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
    TinyPredictor,
    add_common_args,
    describe_stats,
    link_names,
    make_videos,
    print_result,
    to_float,
)

import ringload  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--videos", type=int, default=16, help="file names (links to --distinct sources)")
    p.add_argument("--distinct", type=int, default=2)
    p.add_argument("--source", default="480x270", help="generated video size WxH (at least --crop on each side)")
    p.add_argument("--minutes", type=float, default=0.5, help="length of each generated video")
    p.add_argument("--clip-seconds", type=float, default=5.0)
    p.add_argument("--clip-fps", type=float, default=4.0)
    p.add_argument("--crop", type=int, default=256, help="random crop side, no resize")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args(argv)
    if args.smoke:
        args.videos, args.distinct, args.source, args.minutes = 4, 2, "96x80", 4 / 60
        args.clip_seconds, args.crop, args.batch_size, args.steps = 2.0, 64, 4, 14
        args.num_workers = args.num_workers or 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    w, h = (int(v) for v in args.source.split("x"))
    sources = make_videos(args.data_dir, distinct=args.distinct, width=w, height=h, fps=30, seconds=60 * args.minutes)
    paths = link_names(sources, args.data_dir, args.videos)
    clip_len = int(round(args.clip_seconds * args.clip_fps))  # 5 s at 4 fps: 20 frames
    # A fixed-size random crop without resizing is a RandomResizedCrop whose area share and
    # aspect are fixed: the box is exactly crop x crop, and the resize to crop x crop is a copy.
    share = args.crop * args.crop / (w * h)

    loader = ringload.VideoLoader(
        [str(p) for p in paths],
        batch_size=args.batch_size,
        sample="clips",
        clip_len=clip_len,
        fps=args.clip_fps,
        size=(args.crop, args.crop),
        crop="random_resized",
        scale=(share, share),
        ratio=(1.0, 1.0),
        sampling="bounded",
        seed=args.seed,
        num_workers=args.num_workers,
    )
    model = TinyPredictor(out_hw=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    print(
        f"{len(paths)} videos of {60 * args.minutes:g} s, clips of {clip_len} frames at {args.clip_fps:g} fps "
        f"({args.clip_seconds:g} s), {args.crop}x{args.crop} crops, batch {args.batch_size}",
        flush=True,
    )
    meter = Meter("clips")
    step, epoch = 0, 0
    with loader:
        while step < args.steps:
            loader.set_epoch(epoch)
            for batch in loader:
                meter.got_batch()
                clip = to_float(batch.frames)  # (B, T, C, H, W)
                target = F.adaptive_avg_pool2d(clip[:, -1], 16)
                loss = F.mse_loss(model(clip[:, :-1]), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                meter.step_done(clip.shape[0], loss.item())
                meter.report(step, args.steps)
                if step >= args.steps:
                    break
            epoch += 1
        meter.finish()
        span = batch.pts_seconds[0, -1] - batch.pts_seconds[0, 0]
        stats = loader.stats()
    result = {"example": "clips", "clip_len": clip_len, "clip_span_s": round(float(span), 3), **meter.summary()}
    print(
        f"{result['clips_per_s']:.2f} clips/s ({result['clips_per_s'] * clip_len:.0f} frames/s), "
        f"data wait {100 * result['data_wait_fraction']:.0f}% of the time; last clip spans {span:.2f} s"
    )
    print(describe_stats(stats))
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
