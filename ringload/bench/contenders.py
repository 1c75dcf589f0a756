"""The loaders a run compares, each behind one interface (:class:`Contender`).

- ``starter``: the robotics exercise's loader (:mod:`ringload.bench.starter`), the baseline;
- ``ceiling``: plain PyAV in file order (:mod:`ringload.bench.ceiling`);
- ``strict``, ``bounded``, ``sequential``: :class:`ringload.VideoLoader` in each sampling mode;
- ``torchcodec-exact``, ``torchcodec-approx``, ``decord``: peers, when they import.

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
    loader = starter.make_loader(paths, batch_size=spec["batch_size"], num_workers=spec["workers"], seed=spec["seed"])
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
    if spec.get("clip_len", 1) > 1:
        kwargs.update(sample="clips", clip_len=spec["clip_len"], frame_stride=spec["frame_stride"])
    if sampling == "bounded":
        if spec.get("chunk_len"):
            kwargs["chunk_len"] = spec["chunk_len"]
        if spec.get("max_per_chunk"):
            kwargs["max_per_chunk"] = spec["max_per_chunk"]
    if sampling == "sequential":
        kwargs["crop"] = "none"
    loader = VideoLoader(paths, **kwargs)
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


def make_torchcodec(spec, paths, seek_mode):
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as exc:
        raise Skip(f"torchcodec is not installed ({type(exc).__name__}); pip install torchcodec") from None
    return _peer(spec, paths, "torchcodec", seek_mode)


def make_decord(spec, paths):
    try:
        import decord  # noqa: F401
    except Exception as exc:
        raise Skip(f"decord is not installed ({type(exc).__name__}); pip install decord") from None
    return _peer(spec, paths, "decord", None)


def _peer(spec, paths, library, seek_mode):
    import torch

    from ..probe import probe

    # Frame counts from ringload's index (built before the run, cached on disk), so that a
    # peer samples the same frames a ringload contender can, and is not charged for it.
    lengths = [probe(p).num_frames for p in paths]
    dataset = PeerBatches(
        paths, lengths, library=library, seek_mode=seek_mode, batch_size=spec["batch_size"], size=spec["size"],
        seed=spec["seed"],
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=spec["workers"])
    note = f"{library}{' ' + seek_mode if seek_mode else ''}: uniform random frames, one batched read per video per batch"
    return Contender(loader, info={"note": note, "shm_bytes": None}, buffered=spec["workers"])


class PeerBatches:
    """IterableDataset-like: endless batches of uniform random frames read with a peer library,
    cropped with ringload's ``random_resized_boxes`` (scale 0.9 to 1, as the starter) and
    resized to ``size`` with torch."""

    def __init__(self, paths, lengths, *, library, seek_mode, batch_size, size, seed):
        self.paths = list(paths)
        self.lengths = list(lengths)
        self.library = library
        self.seek_mode = seek_mode
        self.batch_size = batch_size
        self.size = size
        self.seed = seed

    def _decoder(self, cache, path):
        dec = cache.get(path)
        if dec is None:
            if self.library == "torchcodec":
                from torchcodec.decoders import VideoDecoder

                dec = VideoDecoder(path, seek_mode=self.seek_mode, num_ffmpeg_threads=1)
            else:
                import decord

                dec = decord.VideoReader(path, num_threads=1)
            cache[path] = dec
        return dec

    def _read(self, dec, idx):
        if self.library == "torchcodec":
            return dec.get_frames_at(indices=idx).data  # (N, C, H, W) uint8
        import torch

        return torch.from_numpy(dec.get_batch(idx).asnumpy()).permute(0, 3, 1, 2)

    def __iter__(self):
        import numpy as np
        import torch
        import torch.nn.functional as F

        from .._samples import random_resized_boxes

        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        cache: dict = {}
        cum = np.cumsum(self.lengths)
        starts = np.concatenate([[0], cum[:-1]])
        while True:
            flat = rng.integers(0, int(cum[-1]), self.batch_size)
            vids = np.searchsorted(cum, flat, side="right")
            frames_idx = flat - starts[vids]
            out = torch.empty((self.batch_size, 3, self.size, self.size), dtype=torch.uint8)
            for v in np.unique(vids):
                pos = np.nonzero(vids == v)[0]
                data = self._read(self._decoder(cache, self.paths[v]), frames_idx[pos].tolist())
                h, w = data.shape[-2:]
                boxes = random_resized_boxes([w] * len(pos), [h] * len(pos), rng.random((len(pos), 40)),
                                             (0.9, 1.0), (3 / 4, 4 / 3))
                for j, p in enumerate(pos):
                    x, y, cw, ch = boxes[j].tolist()
                    crop = data[j : j + 1, :, y : y + ch, x : x + cw].float()
                    out[p] = F.interpolate(crop, size=(self.size, self.size), mode="bilinear")[0].round().byte()
            yield out


FACTORIES = {
    "starter": make_starter,
    "ceiling": make_ceiling,
    "strict": lambda spec, paths: make_ringload(spec, paths, "strict"),
    "bounded": lambda spec, paths: make_ringload(spec, paths, "bounded"),
    "sequential": lambda spec, paths: make_ringload(spec, paths, "sequential"),
    "torchcodec-exact": lambda spec, paths: make_torchcodec(spec, paths, "exact"),
    "torchcodec-approx": lambda spec, paths: make_torchcodec(spec, paths, "approximate"),
    "decord": make_decord,
}
RINGLOAD_KINDS = ("strict", "bounded", "sequential")
