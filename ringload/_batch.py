"""``Batch``: what one batch of a ``VideoLoader`` holds, and how a completed slot becomes one."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from . import _rng


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """One batch. ``frames`` uint8 RGB (B, C, H, W) for frames, (B, T, C, H, W) for clips and
    segments, in channels-last memory order (``.contiguous()`` gives the other one);
    ``video_index`` (B,) int64 (position in the source); ``frame_index`` (B,) or (B, T)
    int64 (frame i of a full decode in presentation order) and ``pts_seconds`` float64 of
    the same shape; ``labels`` int64 (B,) class ids, float32 (B, C) multi-hot, or None
    without labels; ``clip_index`` and ``crop_index`` (B,) int64: which of the video's
    ``clips_per_video`` clips and which spatial view (``crop="three"``: 0 left or top, 1
    centre, 2 right or bottom) each sample is, 0 without them
    (``ringload.average_per_video`` averages scores over a video's views); ``sample_keys``
    (B,) int64: each sample's key (its video and plan start), which ``ringload.augment``
    draws from. ``meta``: the manifest's other columns (not path, label(s), start, end,
    weight) for the batch's samples, as a dict column -> list of B values as read (CSV:
    str, "" for an empty cell; JSONL: the JSON values; None where a row lacks the column); {} without
    such columns. For a row of a trimmed manifest (``start``/``end``) ``video_index`` is
    the row, ``frame_index`` and ``pts_seconds`` are frames and times of its file. On the
    CPU every tensor is the caller's own copy."""

    frames: object
    video_index: object
    frame_index: object
    pts_seconds: object
    labels: object | None
    clip_index: object = None
    crop_index: object = None
    sample_keys: object = None
    meta: dict = dataclasses.field(default_factory=dict)
    _paths: Sequence[str] = dataclasses.field(repr=False, compare=False, default=())

    @property
    def paths(self) -> list[str]:
        """Path of each sample's video file."""
        return [self._paths[i] for i in self.video_index.tolist()]

    def __len__(self) -> int:
        return int(self.video_index.shape[0])


def make_batch(loader, done, plan, k: int) -> Batch:
    """The user's Batch for batch ``k``'s completed slot (frames through the transfer, the
    rest from the index; the views from the plan)."""
    import torch

    cfg = loader.config
    n = len(done.video)
    view = loader._engine.slot_tensors[done.slot][:n]
    view = view[:, 0].permute(0, 3, 1, 2) if cfg.sample == "frames" else view.permute(0, 1, 4, 2, 3)
    frames = loader._transfer.submit(done.slot, view)
    pts = np.empty(done.frames.shape, dtype=np.float64)
    for i, v in enumerate(done.video.tolist()):
        pts[i] = loader._infos[v].pts_seconds[done.frames[i]]
    frame_index = done.frames
    if cfg.sample == "frames":
        frame_index, pts = done.frames[:, 0], pts[:, 0]
    labels = loader.source.labels
    rows = done.entry  # the source rows: labels and meta are per row
    views = plan.views(k) if hasattr(plan, "views") else np.zeros((n, 2), dtype=np.int64)
    meta = getattr(loader.source, "meta", None) or {}
    return Batch(
        frames=frames,
        video_index=torch.from_numpy(rows.copy()),
        frame_index=torch.from_numpy(np.ascontiguousarray(frame_index)),
        pts_seconds=torch.from_numpy(np.ascontiguousarray(pts)),
        labels=torch.from_numpy(np.ascontiguousarray(labels[rows])) if labels is not None else None,
        clip_index=torch.from_numpy(views[:, 0].copy()),
        crop_index=torch.from_numpy(views[:, 1].copy()),
        # The key its crop and flip came from (keys fit in 63 bits: videos < 2^31).
        sample_keys=torch.from_numpy(_rng.sample_keys(rows, done.start).astype(np.int64)),
        meta={name: [values[r] for r in rows.tolist()] for name, values in meta.items()},
        _paths=loader._paths,
    )
