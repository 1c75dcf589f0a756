"""Evaluation over views: average a model's scores over each video's clips and crops."""

from __future__ import annotations


def average_per_video(scores, video_index):
    """``(videos, mean_scores)``: the distinct videos of ``video_index`` (sorted) and the mean
    of ``scores`` over each one's rows.

    ``scores`` is a (N, C) tensor (logits or probabilities, one row per view) and
    ``video_index`` the (N,) ``Batch.video_index`` of the same rows, from one rank or
    gathered from all (every view is evaluated once over the ranks, so gathered rows are
    each view once).
    """
    import torch

    scores = torch.as_tensor(scores)
    video_index = torch.as_tensor(video_index, device=scores.device).long()
    videos, inverse = torch.unique(video_index, sorted=True, return_inverse=True)
    total = torch.zeros((len(videos),) + tuple(scores.shape[1:]), dtype=scores.dtype, device=scores.device)
    total.index_add_(0, inverse, scores)
    counts = torch.bincount(inverse, minlength=len(videos)).to(scores.dtype)
    return videos, total / counts.view(-1, *([1] * (scores.dim() - 1)))
