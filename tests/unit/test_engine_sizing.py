"""How deep the window is, from the settings and the slot size alone (never the machine)."""

from __future__ import annotations

import logging

import pytest

from ringload import _engine
from ringload._config import LoaderConfig
from ringload.errors import ConfigError

MiB = 1 << 20


@pytest.mark.parametrize(
    "kw, slot, chunk_window, workers, depth",
    [
        (dict(sampling="strict"), 19 * MiB, 1, 2, (1 << 30) // (19 * MiB) - 1),  # 52: as many as fit
        (dict(sampling="strict"), 1 * MiB, 1, 2, _engine.MAX_STRICT_DEPTH),  # capped
        (dict(sampling="strict", ring_bytes=4 << 30), 19 * MiB, 1, 2, 214),
        (dict(sampling="sequential"), 1 * MiB, 1, 2, _engine.SEQUENTIAL_DEPTH),
        (dict(sampling="bounded"), 1 * MiB, 15, 2, 19),  # a chunk's batches + 2 per decoder
        (dict(sampling="bounded"), 1 * MiB, 15, 12, 15 + 24),
        (dict(sampling="bounded"), 1 * MiB, 2, 2, 8),
        (dict(sampling="bounded"), 19 * MiB, 50, 2, (1 << 30) // (19 * MiB) - 1),  # as many as fit
        (dict(sampling="strict", prefetch_batches=5), 19 * MiB, 1, 2, 5),  # explicit wins
        (dict(sampling="strict"), 900 * MiB, 1, 2, _engine.MIN_DEPTH),  # default budget too small: the minimum
    ],
)
def test_window_depth(kw, slot, chunk_window, workers, depth):
    assert _engine.window_depth(LoaderConfig(**kw), slot, chunk_window, workers) == depth


def test_a_ring_budget_that_holds_too_few_batches_names_the_setting():
    with pytest.raises(ConfigError, match="ring_bytes"):
        _engine.window_depth(LoaderConfig(sampling="strict", ring_bytes=40 * MiB), 19 * MiB, 1, 2)
    with pytest.raises(ConfigError, match="prefetch_batches.*ring_bytes"):
        LoaderConfig(prefetch_batches=4, ring_bytes=1 << 30)


def test_bounded_says_when_the_ring_cannot_hold_its_window(caplog):
    caplog.set_level(logging.WARNING, logger="ringload._engine")
    cfg = LoaderConfig(sampling="bounded", ring_bytes=10 * 19 * MiB)
    assert _engine.window_depth(cfg, 19 * MiB, 15, 2) == 9
    assert any("raise ring_bytes" in r.getMessage() for r in caplog.records)


def test_threads_per_decoder_never_oversubscribe():
    cores = _engine.usable_cores()
    for workers in (1, 2, cores, 2 * cores):
        threads = _engine.default_threads(workers)
        assert threads >= 1 and (threads * workers <= cores or threads == 1)


def test_decoder_threads_zero_lets_ffmpeg_choose_and_negative_is_refused():
    assert LoaderConfig(decoder_threads=0).decoder_threads == 0
    with pytest.raises(ConfigError, match="decoder_threads"):
        LoaderConfig(decoder_threads=-1)
