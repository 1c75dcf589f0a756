"""Data-parallel training with ringload under torchrun, with resume from a checkpoint.

Each rank builds its own VideoLoader; with torch.distributed initialised the loader takes
``rank`` and ``world_size`` from it and reads a disjoint shard with the same number of
batches on every rank. A checkpoint holds the model, the optimiser and every rank's
``loader.state_dict()``, so a resumed run sees exactly the batches the interrupted run
would have seen next.

    torchrun --nproc_per_node 2 examples/ddp.py                      # gloo on CPU, NCCL on GPUs
    torchrun --nproc_per_node 2 examples/ddp.py --stop-after 10      # save a checkpoint, stop
    torchrun --nproc_per_node 2 examples/ddp.py --resume             # go on from it
    python -m torch.distributed.run --nproc_per_node 2 examples/ddp.py --smoke

Rank 0 prints the progress and, last, ``RESULT {json}`` with a fingerprint of every step's
samples over all ranks (tests compare an interrupted-and-resumed run with a straight one).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import pathlib
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Meter,
    TinyFrameNet,
    add_common_args,
    batch_digest,
    class_of_each_video,
    make_videos,
    print_result,
    to_float,
    write_csv_manifest,
)

import ringload  # noqa: E402

TIMEOUT = datetime.timedelta(seconds=300)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--source", default="320x240")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--steps", type=int, default=30, help="total training steps")
    p.add_argument("--stop-after", type=int, default=None, help="save a checkpoint after this many steps and stop")
    p.add_argument("--checkpoint", type=pathlib.Path, default=None, help="default: DATA_DIR/ddp-checkpoint.pt")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    args = p.parse_args(argv)
    if args.smoke:
        args.videos, args.classes, args.source, args.seconds = 4, 2, "96x80", 2.0
        args.size, args.batch_size, args.steps = 48, 8, 12
        args.num_workers = args.num_workers or 1
    if args.checkpoint is None:
        args.checkpoint = args.data_dir / f"ddp-checkpoint{'-smoke' if args.smoke else ''}.pt"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)  # same initial weights on every rank

    w, h = (int(v) for v in args.source.split("x"))
    manifest = args.data_dir / "manifests" / f"ddp-{args.videos}-{args.classes}-{w}x{h}.csv"
    if rank == 0:  # one rank writes the data; the others wait for it
        paths = make_videos(args.data_dir, distinct=args.videos, width=w, height=h, fps=30, seconds=args.seconds)
        classes = class_of_each_video(paths, args.classes)  # by palette: learnable from pixels
        rows = [{"path": str(p), "label": f"class_{c}"} for p, c in zip(paths, classes)]
        write_csv_manifest(manifest, rows)
    dist.barrier()

    loader = ringload.VideoLoader(
        str(manifest), batch_size=args.batch_size, sample="frames", size=(args.size, args.size),
        crop="random_resized", scale=(0.5, 1.0), sampling="bounded", seed=args.seed,
        num_workers=args.num_workers, device=device,
    )  # fmt: skip
    model = DistributedDataParallel(TinyFrameNet(args.classes).to(device), device_ids=[local_rank] if use_cuda else None)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    step, epoch, resumed = 0, 0, False
    if args.resume:
        ckpt = torch.load(args.checkpoint, map_location=device, weights_only=False)
        model.module.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optim"])
        loader.load_state_dict(ckpt["loader"][rank])  # this rank's position in its shard
        step, epoch, resumed = ckpt["step"], ckpt["epoch"], True
    if rank == 0:
        print(
            f"world {world} ({'nccl' if use_cuda else 'gloo'}), {len(loader)} batches of {args.batch_size} per rank "
            f"per epoch" + (f", resuming at step {step} (epoch {epoch})" if resumed else ""),
            flush=True,
        )

    meter = Meter("images")
    digests = []
    stop_at = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    with loader:
        while step < stop_at:
            if not resumed:  # a restored loader already knows its epoch and position
                loader.set_epoch(epoch)
            resumed = False
            for batch in loader:
                meter.got_batch()
                logits = model(to_float(batch.frames))
                loss = F.cross_entropy(logits, batch.labels.to(device).long())
                opt.zero_grad(set_to_none=True)
                loss.backward()  # DDP averages the gradients over ranks here
                opt.step()
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss)
                step += 1
                meter.step_done(logits.shape[0] * world, mean_loss.item() / world)
                digests.append(batch_digest(batch.video_index.cpu(), batch.frame_index.cpu()))
                if rank == 0 and (step % max(1, args.steps // 6) == 0 or step == 1):
                    print(meter.line(step), flush=True)
                if step >= stop_at:
                    break
            else:
                epoch += 1
        meter.finish()
        loader_state = loader.state_dict()

    states = [None] * world
    dist.all_gather_object(states, loader_state)
    all_digests = [None] * world
    dist.all_gather_object(all_digests, digests)
    if args.stop_after is not None and step < args.steps and rank == 0:
        tmp = args.checkpoint.with_suffix(".tmp")
        torch.save(
            {"model": model.module.state_dict(), "optim": opt.state_dict(), "loader": states, "step": step, "epoch": epoch},
            tmp,
        )
        os.replace(tmp, args.checkpoint)  # a crash while saving never leaves a half checkpoint
        print(f"checkpoint at step {step}: {args.checkpoint}", flush=True)
    if rank == 0:
        summary = meter.summary()
        result = {
            "example": "ddp",
            "world_size": world,
            "backend": "nccl" if use_cuda else "gloo",
            "last_step": step,
            "step_digests": ["".join(d[i] for d in all_digests) for i in range(len(digests))],
            **summary,
        }
        print(f"{summary['images_per_s']:.1f} images/s over {world} ranks")
        print_result(result)
    # Tear down in order while the interpreter is fully alive: the DDP reducer and its
    # communication state first, then the process group (gloo objects destroyed during
    # interpreter finalisation can abort the process).
    del model, opt
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
