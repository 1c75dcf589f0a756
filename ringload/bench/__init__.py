"""The benchmark harness behind ``ringload bench``, split by job:

- :mod:`~ringload.bench.config`: what a run does (``BenchConfig``, ``DatasetSpec``, presets);
- :mod:`~ringload.bench.data`: the generated dataset or SOURCE, ringload's index of it;
- :mod:`~ringload.bench.procfs`: CPU seconds and RSS/PSS of a process tree, from ``/proc``;
- :mod:`~ringload.bench.contenders`: the loaders compared (``starter``, ``ceiling``,
  ringload's modes); :mod:`~ringload.bench.peers`: torchcodec, decord and SPDL, run in the
  ``--peer-python`` interpreter by ``peer_child.py`` (by path, without ``ringload``); with
  :mod:`~ringload.bench.starter` (the exercise's loader, the baseline) and :mod:`~ringload.bench.ceiling` (plain PyAV in file order);
- :mod:`~ringload.bench.measure`: one contender timed in its own process;
- :mod:`~ringload.bench.runner`: the run: plan, interleaved rounds (A B C, A B C, ...),
  processes, time limits, the result document;
- :mod:`~ringload.bench.rounds`: per-contender summaries over rounds, ratios taken within
  a round with their spread over rounds, targets;
- :mod:`~ringload.bench.report`: system metadata, ratios and targets, table, JSON, plots
  (:mod:`~ringload.bench.plot`);
- :mod:`~ringload.bench.s3local`: moto's S3 server on 127.0.0.1 (``LocalS3``), and
  :mod:`~ringload.bench.netproxy`: a proxy in front of it adding latency and faults
  (``Proxy``), for object-storage runs and the tests (imported only where used);
- :mod:`~ringload.bench.remote`: ``ringload bench --remote``, local files against the same
  videos in that bucket behind counting proxies, with the peers' per-sample pattern
  (:mod:`~ringload.bench.fsspec_dataset`: ``fsspec.open`` + ``av.open`` per item).

This module stays light: the processes a contender spawns import it.
"""

from __future__ import annotations

from ._json import jsonable, write_json
from .config import ALL_CONTENDERS, DEFAULT_CONTENDERS, SWEEPS, BenchConfig, DatasetSpec, quick_config
from .data import default_data_dir, list_source, prepare_dataset
from .procfs import tree_cpu_seconds, tree_memory, tree_pids
from .report import SCHEMA, format_table, make_plots, system_info
from .rounds import ratios, spread, summarize
from .runner import plan_runs, run

__all__ = [
    "ALL_CONTENDERS",
    "DEFAULT_CONTENDERS",
    "SCHEMA",
    "SWEEPS",
    "BenchConfig",
    "DatasetSpec",
    "default_data_dir",
    "format_table",
    "jsonable",
    "list_source",
    "make_plots",
    "plan_runs",
    "prepare_dataset",
    "quick_config",
    "ratios",
    "run",
    "spread",
    "summarize",
    "system_info",
    "tree_cpu_seconds",
    "tree_memory",
    "tree_pids",
    "write_json",
]
