"""A plan from the user's own samples (``VideoLoader(samples=...)``): batches in their order.

Two forms. A *sample list* is one epoch's samples over all ranks, (video, start) pairs in
the order they are to be seen; batches are cut from it in order and ranks share it the way
sequential mode shares file order (rank r takes the r-th contiguous part, every rank has the
same number of batches, ``drop_last`` as in ``plan_epoch``). *Batches* (a ``ringload.Plan``,
or any sequence of (b, 2) arrays, like DataLoader's ``batch_sampler``) are this rank's
batches as given. Pure: no I/O, no clocks, no processes.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .errors import ConfigError
from .plan import Plan, PlanConfig


def _pairs(value, name: str) -> np.ndarray:
    """``value`` as an int64 (n, 2) array, or a ConfigError naming ``name``."""
    try:
        arr = np.asarray(value if hasattr(value, "__len__") or hasattr(value, "__array__") else list(value))
    except Exception as exc:  # ragged pairs and the like
        raise ConfigError(f"{name}: pass (video, start) pairs, an int array of shape (N, 2) ({exc})") from None
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ConfigError(f"{name}: pass (video, start) pairs, shape (N, 2); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ConfigError(f"{name}: pass integer (video, start) pairs; got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check(arr: np.ndarray, counts: np.ndarray, paths, name: str) -> None:
    """Every (video, start) is a valid sample: a ConfigError names the first that is not."""
    v, s = arr[:, 0], arr[:, 1]
    bad = np.flatnonzero((v < 0) | (v >= len(counts)))
    if len(bad):
        i = int(bad[0])
        raise ConfigError(f"{name}[{i}] = ({v[i]}, {s[i]}): video {v[i]} is out of range; the source has "
                          f"{len(counts)} videos (rows), 0 to {len(counts) - 1}")
    n = counts[v]
    bad = np.flatnonzero(n == 0)
    if len(bad):
        i = int(bad[0])
        raise ConfigError(f"{name}[{i}] = ({v[i]}, {s[i]}): video {v[i]} ({paths[v[i]]}) has no sample: it is "
                          "quarantined, shorter than one sample with short_video='skip', or its range holds no frame")
    bad = np.flatnonzero((s < 0) | (s >= n))
    if len(bad):
        i = int(bad[0])
        raise ConfigError(f"{name}[{i}] = ({v[i]}, {s[i]}): start {s[i]} is outside the valid starts of video "
                          f"{v[i]} ({paths[v[i]]}): 0 to {n[i] - 1}")


def _is_batches(value) -> bool:
    if isinstance(value, Plan) or hasattr(value, "num_batches"):
        return True
    if isinstance(value, np.ndarray) or not isinstance(value, (list, tuple)):
        return False
    try:
        return len(value) > 0 and all(np.ndim(b) == 2 for b in value)
    except ValueError:  # a ragged batch: let _pairs name it
        return False


def list_plan(value, counts: np.ndarray, paths, *, batch_size: int, rank: int, world_size: int, drop_last: bool,
              name: str = "samples") -> ListPlan:
    """The plan of ``value`` (a sample list or this rank's batches, see the module
    docstring), every sample checked against ``counts`` (valid starts per video)."""
    if not _is_batches(value):
        arr = _pairs(value, name)
        if len(arr) == 0:
            raise ConfigError(f"{name} is empty: pass at least one (video, start) pair")
        _check(arr, counts, paths, name)
        return ListPlan(arr, None, batch_size=batch_size, rank=rank, world_size=world_size, drop_last=drop_last)
    cfg = getattr(value, "config", None)
    if isinstance(cfg, PlanConfig) and (cfg.rank, cfg.world_size) != (rank, world_size):
        raise ConfigError(f"{name}: the plan is rank {cfg.rank} of {cfg.world_size}, the loader rank {rank} of "
                          f"{world_size}: build the plan with the loader's rank and world_size")
    batches = []
    for k in range(len(value)):
        b = _pairs(value[k], f"{name}[{k}]")
        if len(b) > batch_size:
            raise ConfigError(f"{name}[{k}] holds {len(b)} samples, more than batch_size={batch_size}: "
                              "pass batch_size of at least the largest batch")
        _check(b, counts, paths, f"{name}[{k}]")
        batches.append(b)
    if not sum(len(b) for b in batches):
        raise ConfigError(f"{name} is empty: pass at least one (video, start) pair")
    bounds = np.zeros(len(batches) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in batches], out=bounds[1:])
    return ListPlan(np.concatenate(batches), bounds, batch_size=batch_size, rank=rank, world_size=world_size,
                    drop_last=drop_last)


class ListPlan:
    """One rank's batches of a sample list: ``len``, ``plan[k]`` (int64 (b, 2)) and the
    attributes the loader reads from a :class:`ringload.Plan` (``chunk_window`` 1: no chunks).
    ``bounds``: where this rank's batches start in ``samples`` (None: cut a global list)."""

    # The sharding arithmetic of plan_epoch's sequential mode, shared rather than copied.
    _shard = Plan._shard

    def __init__(self, samples: np.ndarray, bounds, *, batch_size: int, rank: int, world_size: int, drop_last: bool):
        samples.setflags(write=False)
        self.samples = samples
        self.config = PlanConfig(batch_size=batch_size, seed=0, mode="sequential", rank=rank, world_size=world_size,
                                 drop_last=bool(drop_last))
        self.total_samples = len(samples)
        if bounds is None:
            self._shard()
            b = self.config.batch_size
            starts = self._offset + np.arange(self.num_batches, dtype=np.int64) * b
            ends = np.minimum(starts + b, self._offset + self.num_samples)
            bounds = np.append(starts, ends[-1] if len(ends) else self._offset)
        else:
            self.num_batches, self.num_samples = len(bounds) - 1, len(samples)
        self.bounds = bounds
        self.chunk_window = 1
        self.chunk_len = 1
        self.max_per_chunk = batch_size
        self.num_chunks = self.total_samples

    def digest(self) -> str:
        """Identifies the samples and how they are cut (the resume fingerprint)."""
        h = hashlib.sha256(np.ascontiguousarray(self.samples, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.bounds, dtype="<i8").tobytes())
        return h.hexdigest()[:32]

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, k: int) -> np.ndarray:
        n = self.num_batches
        k = int(k)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"batch {k} out of range: the plan has {n} batches")
        return self.samples[self.bounds[k] : self.bounds[k + 1]]

    def chunks(self, k: int) -> np.ndarray:
        """Every sample is its own chunk: its position in ``samples``."""
        return np.arange(self.bounds[k], self.bounds[k + 1], dtype=np.int64)

    def __repr__(self) -> str:
        c = self.config
        return f"ListPlan(rank={c.rank}/{c.world_size}, batches={self.num_batches}, samples={self.num_samples})"
