"""``VideoLoader.stats()``: the loader's counters, the engine's and the plan's, in one dict."""

from __future__ import annotations


def loader_stats(loader) -> dict:
    snap = loader._sched.snapshot()  # also after close(): the counters stay
    sc = snap["counters"]
    c = dict(loader._counters)
    busy = c.pop("busy_s")
    layout = loader._engine.ring.layout if not loader._closed else None
    plan = loader._plan() if not loader._closed else None
    listed = loader._epochs.listed
    sampling = "samples" if listed else loader.config.sampling
    return {
        **c,
        "seconds": busy,
        "images_per_s": c["frames"] / busy if busy > 0 else 0.0,
        "samples_per_s": c["samples"] / busy if busy > 0 else 0.0,
        "ring_bytes": layout.nbytes if layout else 0,
        "num_slots": layout.num_slots if layout else 0,
        "ready_batches": snap.get("ready_batches", 0),
        "slot_bytes": layout.slot_stride if layout else 0,
        "num_workers": loader._engine.num_workers,
        "decoder_threads": loader._engine.decoder_threads,
        "window_batches": loader._engine.depth,
        "decoder_pids": snap.get("decoder_pids", []),
        "decoders": snap.get("decoders", []),
        "decoder_restarts": sc.get("decoder_restarts", 0),
        "hung_decoders_killed": sc.get("hung_decoders_killed", 0),
        "decoded_frames": sc.get("decoded_frames", 0),
        "decoder_busy_s": sc.get("decoder_busy_s", 0.0),
        "decoder_idle_s": sc.get("decoder_idle_s", 0.0),
        "tasks": sc.get("tasks", 0),
        "failed_samples": sc.get("failed_samples", 0),
        "replaced_samples": sc.get("replaced_samples", 0),
        "quarantined": snap["quarantined"],
        "sampling": sampling,
        "short_videos": int(loader._data.short.sum()),
        "short_video": loader.config.short_video,
        "epoch_samples": int(plan.total_samples) if plan is not None else 0,
        "expected_epoch_samples": float(getattr(plan, "expected_samples", plan.total_samples)) if plan is not None else 0.0,
        "balance": loader.config.balance,
        "weighted": bool(getattr(plan, "weighted", False)) if plan is not None else False,
        "chunk_len": plan.chunk_len if plan is not None and sampling == "bounded" else None,
        "max_per_chunk": plan.max_per_chunk if plan is not None and sampling == "bounded" else None,
        "cut_grid": getattr(plan, "cut_grid", 1) if plan is not None and sampling == "bounded" else None,
        "bounded_rule": loader._data.bounded.reason if loader._data.bounded is not None else None,
        **design_effect(loader.config.batch_size, plan),
        "remote": remote_stats(sc, loader.config.remote_cache_bytes),
    }


def remote_stats(counters, cache_bytes: int) -> dict:
    """Reads of remote objects and shard members, summed over the decoders (zeros for local files)."""
    from ._protocol import REMOTE_COUNTERS

    out = {k: int(counters.get("remote_" + k, 0)) for k in REMOTE_COUNTERS}
    out["cache_bytes"] = int(cache_bytes)
    return out


def design_effect(batch_size: int, plan) -> dict:
    from ._bounded import design_effect_bound

    if plan is None:
        return {"design_effect_bound": None, "effective_batch_size": None}
    m = min(plan.max_per_chunk, batch_size)
    k = getattr(getattr(plan, "config", None), "clips_per_video", None)
    if k is not None:  # a video's slots are one chunk: at most its clips x views share a batch
        m = min(m, k * plan.config.views_per_clip)
    bound = design_effect_bound(m)
    return {"design_effect_bound": bound, "effective_batch_size": batch_size / bound}
