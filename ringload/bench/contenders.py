"""The loaders a run compares, each behind one interface (:class:`Contender`).

- ``starter``: the robotics exercise's loader (:mod:`ringload.bench.starter`), the baseline;
- ``ceiling``: plain PyAV in file order (:mod:`ringload.bench.ceiling`);
- ``strict``, ``bounded``, ``sequential``: :class:`ringload.VideoLoader` in each sampling mode
  (on URLs too: the spec's ``storage_options`` and ``remote_cache_bytes`` go to the loader);
- ``fsspec-dataset``: the peers' per-sample pattern on any fsspec URL or local path
  (:mod:`ringload.bench.fsspec_dataset`), for ``ringload bench --remote``;
- the peers (``torchcodec-exact``, ``torchcodec-approx``, ``decord``, ``spdl``) are not here: they
  run in their own interpreter (:mod:`ringload.bench.peers`, ``--peer-python``).

A factory takes the contender's spec (a dict, see ``runner.plan_runs``) and the file paths,
and returns a :class:`Contender` or raises :class:`Skip` with the reason it cannot run.
Heavy imports happen inside the factories: this module is imported by every process a
contender spawns.
"""

from __future__ import annotations

from ._json import jsonable


class Skip(Exception):
    """A contender cannot run here (not installed, not built yet); the note says why."""


class Contender:
    """Wraps a loader: ``iterate()`` yields (B, C, H, W) tensors; ``close()``; ``info()``."""

    def __init__(self, loader, *, unwrap=None, info=None, buffered=None):
        self.loader = loader
        self.unwrap = unwrap or (lambda b: b)
        self._info = info or {}
        self._buffered = buffered

    def buffered_batches(self) -> int:
        """How many batches the loader can hold ready ahead of the consumer.

        Timing starts only after that many batches have been taken, or the first window
        would time a buffer that filled while the loader started, not steady-state work.
        """
        if callable(self._buffered):
            try:
                return int(self._buffered())
            except Exception:
                return 0
        return int(self._buffered or 0)

    def decoded_frames(self) -> int | None:
        """Frames the loader's decoders produced so far (walks from keyframes included), if it counts them."""
        stats = getattr(self.loader, "stats", None)
        if not callable(stats):
            return None
        value = stats().get("decoded_frames")
        return int(value) if isinstance(value, (int, float)) else None

    def counters(self) -> dict | None:
        """Cumulative counters of a loader with ``stats()`` (frames delivered, decoder tasks,
        decoded frames, and its remote reads as ``remote_*``), or None; ``measure`` takes
        their deltas over the timed windows."""
        stats = getattr(self.loader, "stats", None)
        if not callable(stats):
            return None
        s = stats()
        out = {k: s[k] for k in ("frames", "samples", "tasks", "decoded_frames") if isinstance(s.get(k), (int, float))}
        for k, v in (s.get("remote") or {}).items():
            if k != "cache_bytes" and isinstance(v, (int, float)):
                out["remote_" + k] = v
        return out

    def iterate(self):
        epoch = 0
        while True:
            produced = False
            for batch in self.loader:
                produced = True
                yield self.unwrap(batch)
            if not produced:
                raise RuntimeError("the loader produced no batch: the dataset is smaller than one batch")
            epoch += 1
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)

    def info(self) -> dict:
        out = dict(self._info)
        stats = getattr(self.loader, "stats", None)
        if callable(stats):
            try:
                out["loader_stats"] = jsonable(stats())
            except Exception as exc:  # stats are a nice-to-have; never fail a run on them
                out["loader_stats_error"] = repr(exc)
        return out

    def close(self):
        close = getattr(self.loader, "close", None)
        if callable(close):
            close()


def make_starter(spec, paths):
    try:
        from . import starter
    except ImportError as exc:  # Pillow is in the bench extra
        raise Skip(f"the starter needs {exc.name or exc}: pip install 'ringload[bench]'") from None
    import torch

    torch.manual_seed(spec["seed"])
    if spec.get("clip_len", 1) > 1:
        loader = starter.make_clip_loader(
            paths, clip_len=spec["clip_len"], frame_stride=spec.get("frame_stride", 1),
            clips_per_video=spec.get("clips_per_video") or 1, batch_size=spec["batch_size"],
            num_workers=spec["workers"], seed=spec["seed"],
        )
        note = (f"per-clip Dataset (seek + decode {spec['clip_len']} frames per item), transforms: "
                f"{starter.TRANSFORMS}: one RandomResizedCrop box per clip and ToTensor, no ColorJitter")
    else:
        loader = starter.make_loader(paths, batch_size=spec["batch_size"], num_workers=spec["workers"],
                                     seed=spec["seed"])
        note = f"exercise loader, transforms: {starter.TRANSFORMS}; output float32 after ColorJitter"
    # Each worker builds one batch at a time; at the first batch the others are (nearly) done.
    return Contender(loader, info={"note": note, "shm_bytes": None}, buffered=spec["workers"])


def make_ringload(spec, paths, sampling):
    from ..loader import VideoLoader

    kwargs = dict(
        batch_size=spec["batch_size"],
        size=(spec["size"], spec["size"]),
        sampling=sampling,
        seed=spec["seed"],
        num_workers=spec["workers"],
    )
    if spec.get("ring_bytes"):
        kwargs["ring_bytes"] = spec["ring_bytes"]
    if spec.get("decoder_threads") is not None:
        kwargs["decoder_threads"] = spec["decoder_threads"]
    if spec.get("remote_cache_bytes") is not None:
        kwargs["remote_cache_bytes"] = spec["remote_cache_bytes"]
    if spec.get("clip_len", 1) > 1:
        kwargs.update(sample="clips", clip_len=spec["clip_len"], frame_stride=spec["frame_stride"])
        if spec.get("clips_per_video"):
            kwargs["clips_per_video"] = spec["clips_per_video"]
    if sampling == "bounded":
        if spec.get("chunk_len"):
            kwargs["chunk_len"] = spec["chunk_len"]
        if spec.get("max_per_chunk"):
            kwargs["max_per_chunk"] = spec["max_per_chunk"]
    if sampling == "sequential":
        kwargs["crop"] = "none"
    # storage_options (credentials, endpoint) go to the loader, never into the result file.
    storage = {"storage_options": spec["storage_options"]} if spec.get("storage_options") is not None else {}
    loader = VideoLoader(paths, **kwargs, **storage)
    info = {"loader_kwargs": jsonable(kwargs)}
    if sampling == "bounded":
        # The loader's config holds None for defaults; its stats hold what it really uses.
        stats = loader.stats()
        info["chunk_len"] = stats.get("chunk_len", kwargs.get("chunk_len"))
        info["max_per_chunk"] = stats.get("max_per_chunk", kwargs.get("max_per_chunk"))
    return Contender(loader, unwrap=lambda b: b.frames, info=info, buffered=lambda: loader.stats()["num_slots"])


def make_ceiling(spec, paths):
    from .ceiling import SequentialCeiling

    loader = SequentialCeiling(paths, batch_size=spec["batch_size"], size=spec["size"], workers=spec["workers"])
    note = f"{spec['workers']} spawned processes, plain PyAV decode (1 thread each) + reformat to {spec['size']}px"
    return Contender(loader, info={"note": note, "shm_bytes": loader.shm_bytes}, buffered=loader.buffered)


def make_fsspec_dataset(spec, paths):
    """The peers' per-sample pattern (:mod:`ringload.bench.fsspec_dataset`); ``spec["frame_pts"]``
    holds each video's frame pts, ``spec["storage_options"]`` fsspec's options."""
    try:
        from . import fsspec_dataset
    except ImportError as exc:
        raise Skip(f"the per-sample fsspec Dataset needs {exc.name or exc}: pip install 'ringload[remote]'") from None

    loader = fsspec_dataset.make_loader(
        paths, spec["frame_pts"], storage_options=spec.get("storage_options"), size=spec["size"],
        batch_size=spec["batch_size"], num_workers=spec["workers"], seed=spec["seed"],
    )  # fmt: skip
    note = ("per-sample Dataset: fsspec.open(url) + av.open(file object) per item (default block size and "
            f"caching), seek + decode to the frame, {spec['size']}px RGB uint8; DataLoader(shuffle=True)")  # fmt: skip
    # A DataLoader keeps prefetch_factor (2) batches in flight per worker.
    return Contender(loader, info={"note": note, "shm_bytes": None}, buffered=2 * max(1, spec["workers"]))


FACTORIES = {
    "starter": make_starter,
    "ceiling": make_ceiling,
    "strict": lambda spec, paths: make_ringload(spec, paths, "strict"),
    "bounded": lambda spec, paths: make_ringload(spec, paths, "bounded"),
    "sequential": lambda spec, paths: make_ringload(spec, paths, "sequential"),
    "fsspec-dataset": make_fsspec_dataset,
}
RINGLOAD_KINDS = ("strict", "bounded", "sequential")
#: The peers: run in the peer interpreter (:mod:`ringload.bench.peers`, ``--peer-python``).
PEER_KINDS = ("torchcodec-exact", "torchcodec-approx", "decord", "spdl")
