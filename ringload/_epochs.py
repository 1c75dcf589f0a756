"""Each epoch's plan for one loader rank: ringload's (``plan_epoch`` with the loader's data and
settings) or the user's (``samples=``), cached for the current epoch; and the per-video
weights a loader plans with."""

from __future__ import annotations

import logging

from ._config import check_weighted
from ._listplan import list_plan
from .errors import ConfigError

log = logging.getLogger(__name__)


class Epochs:
    """``plan(epoch)``: this rank's plan of ``epoch`` (the last one is cached)."""

    def __init__(self, cfg, data, labels, rank: int, world: int, weights, samples):
        self.cfg, self.data, self.labels = cfg, data, labels
        self.rank, self.world, self.weights = rank, world, weights
        self._cache = None
        self._fixed, self._fn = self._take_samples(samples)

    @property
    def listed(self) -> bool:
        """The user gave the samples (``samples=``)."""
        return self._fixed is not None or self._fn is not None

    @property
    def from_callable(self) -> bool:
        return self._fn is not None

    def samples_digest(self) -> str:
        """The fixed list's digest, or "callable" (its lists are checked per epoch on resume)."""
        return self._fixed.digest() if self._fixed is not None else "callable"

    def _take_samples(self, samples):
        """(fixed sample list, or None; callable epoch -> list, or None) from ``samples=``."""
        if samples is None:
            return None, None
        cfg = self.cfg
        for name in ("clips_per_video", "chunk_len", "max_per_chunk", "min_effective_batch", "balance"):
            if getattr(cfg, name) is not None:
                raise ConfigError(f"samples= gives the order of every sample; {name}={getattr(cfg, name)!r} shapes a "
                                  f"plan ringload would make: leave {name} unset")
        if self.weights is not None:
            raise ConfigError("samples= gives the order of every sample; weights shape a plan ringload would make: "
                              "leave weights unset (weights=False ignores a manifest's 'weight' column)")
        if callable(samples):
            return None, samples
        return self._list_plan(samples, "samples"), None

    def _list_plan(self, value, name: str):
        cfg = self.cfg
        return list_plan(value, self.data.counts, self.data.rows.paths, batch_size=cfg.batch_size, rank=self.rank,
                         world_size=self.world, drop_last=bool(cfg.drop_last), name=name)

    def plan(self, epoch: int):
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.listed:
            plan = self._fixed if self._fixed is not None else self._list_plan(self._fn(epoch), f"samples({epoch})")
            self._cache = (epoch, plan)
            return plan
        from .plan import plan_epoch

        cfg, data = self.cfg, self.data
        clips_native = cfg.sample == "clips" and cfg.fps is None
        plan = plan_epoch(
            data.plan_lengths,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            epoch=epoch,
            mode=cfg.sampling,
            clip_len=cfg.clip_len if clips_native else 1,
            frame_stride=cfg.frame_stride if clips_native else 1,
            chunk_len=data.chunk_len,
            max_per_chunk=data.max_per_chunk,
            rank=self.rank,
            world_size=self.world,
            drop_last=bool(cfg.drop_last),
            clips_per_video=cfg.clips_per_video,
            views_per_clip=cfg.views_per_clip,
            weights=self.weights,
            labels=self.labels if cfg.balance is not None else None,
            balance=cfg.balance,
            balance_threshold=cfg.balance_threshold,
            balance_power=cfg.balance_power,
            cut_grid=data.bounded.cut_grid if data.bounded is not None else 1,
        )
        if getattr(plan, "weighted", False) and self._cache is None:
            log.info(
                "weighted epochs: %.6g samples per epoch expected over all ranks (epoch %d: %d); repeat factors "
                "%.4g to %.4g, %d videos left out", plan.expected_samples, epoch, plan.total_samples,
                float(plan.repeat_factors[plan.repeat_factors > 0].min()), float(plan.repeat_factors.max()),
                int(((plan.repeat_factors == 0) & (plan.starts_per_video > 0)).sum()),
            )
        self._cache = (epoch, plan)
        return plan


def resolve_weights(weights, source, cfg):
    """float64 per-video weights (``weights=``, else the source's ``weight`` column), or None."""
    from ._weights import check_weights

    if weights is False:  # the source's weight column is not used
        return None
    if weights is not None:
        if source.weights is not None:
            raise ConfigError("weights: the source has a 'weight' column and weights= was passed too: pass one "
                              "(weights=False ignores the column)")
        return check_weights(weights, len(source.paths))
    if source.weights is None:
        return None
    if cfg.sampling == "sequential":
        log.info("the source's 'weight' column is not used: sampling='sequential' visits every video alike")
        return None
    try:
        check_weighted("weights", cfg)
    except ConfigError as exc:
        raise ConfigError(f"the source has a 'weight' column; {exc} (weights=False ignores the column)") from None
    return source.weights
