"""Orchestration: which contender runs on which data with which settings (``plan_runs``),
and the run itself (``run``): interleaved rounds, each contender in each round in a fresh
process tree (``python -m ringload.bench.measure``; a peer: ``PEER_PYTHON peer_child.py``)
under a time limit (``budget_s`` from its first batch, plus 300 s for start-up and
shut-down), results collected into the result document (``report.SCHEMA``, summarised by
``rounds``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from ..errors import ConfigError
from ._json import jsonable
from .config import BenchConfig
from .config import PEER_CONTENDERS
from .contenders import RINGLOAD_KINDS
from .data import file_size, frame_counts, list_source, prepare_dataset, warm_index
from .measure import PROTO
from .peers import CHILD_SCRIPT, enable_hint
from .report import _PACKAGE_ROOT, SCHEMA, system_info
from .rounds import CLIP_TARGETS, TARGETS, ratios, summarize

log = logging.getLogger(__name__)


def child_command(peer_python: str | None = None) -> tuple[list[str], dict]:
    """The command and environment of a contender's process: this interpreter running
    ``ringload.bench.measure``, or for a peer ``peer_python`` running ``peer_child.py`` by
    path (it imports none of ringload's dependencies, and no PYTHONPATH leads it to them)."""
    env = dict(os.environ)
    if peer_python:
        env.pop("PYTHONPATH", None)
        return [peer_python, CHILD_SCRIPT], env
    # The child imports the same ringload as this process (a checkout or an installed copy).
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_PACKAGE_ROOT.parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return [sys.executable, "-m", "ringload.bench.measure"], env


def peer_versions(peer_python: str) -> dict:
    """Python and library versions of the peer interpreter (``peer_child.py --versions``)."""
    cmd, env = child_command(peer_python)
    try:
        out = subprocess.run(cmd + ["--versions"], capture_output=True, text=True, env=env, timeout=120, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.warning("peer interpreter %s: no versions (%s)", peer_python, exc)
        return {"executable": peer_python, "error": f"{type(exc).__name__}: {exc}"}


def run_child(spec: dict, *, timeout_s: float, on_progress=None, peer_python: str | None = None,
              on_window=None) -> dict:
    """Run one contender in its own process group (``child_command``) and return its result.

    ``on_progress(batches)`` follows its batches; ``on_window(msg)`` is called as each timed
    window starts and ends (``{"window": i, "edge": "start" | "end"}``), for what the parent
    measures around it (a server's CPU, a proxy's counters)."""
    cmd, env = child_command(peer_python)
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: a timeout can stop the whole tree
        )
        lines: queue.Queue = queue.Queue()

        def reader():
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        reader_thread = threading.Thread(target=reader, daemon=True, name="bench-child-reader")
        reader_thread.start()
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        deadline = time.monotonic() + timeout_s
        result = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill_group(proc)
                result = {"status": "failed", "note": f"timed out after {timeout_s:.0f} s"}
                break
            try:
                line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                break
            if not line.startswith(PROTO):
                continue
            msg = json.loads(line[len(PROTO) :])
            if "progress" in msg and on_progress:
                on_progress(msg["progress"])
            if "window" in msg and on_window:
                on_window(msg)
            if "result" in msg:
                result = msg["result"]
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
        # Whatever the contender left behind (a stuck worker) goes with its process group.
        _kill_group(proc, quiet=True)
        reader_thread.join(timeout=10)
        proc.stdout.close()
        if result is None:
            err.seek(0)
            tail = err.read()[-1500:]
            result = {"status": "failed", "note": f"exit code {proc.returncode}; stderr: {tail.strip()}"}
        elif result.get("status") == "failed":
            err.seek(0)
            result["stderr_tail"] = err.read()[-1500:]
    return result


def _kill_group(proc, quiet=False):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if not quiet:
            log.debug("process group %d already gone", proc.pid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("contender process %d did not exit after SIGKILL", proc.pid)


def plan_runs(cfg: BenchConfig) -> list[dict]:
    """The contender specs of one run: (name, kind, dataset, settings), in run order."""
    runs = []
    base = {
        "batch_size": cfg.batch_size,
        "size": cfg.size,
        "workers": cfg.num_workers,
        "clip_len": cfg.clip_len,
        "frame_stride": cfg.frame_stride,
        "clips_per_video": cfg.clips_per_video,
        "warmup_batches": cfg.warmup_batches,
        "repeats": cfg.repeats,
        "window_s": cfg.window_s,
        "min_window_batches": 2,
        "batches": cfg.batches,
        "budget_s": cfg.budget_s,
        "seed": cfg.seed,
        "ring_bytes": cfg.ring_bytes,
    }
    # (the peers get the same settings; the runner adds their frame counts and sizes)
    if cfg.sweep in ("gop", "resolution"):
        if cfg.source:
            raise ConfigError("--sweep gop/resolution generates its own data; drop SOURCE")
        if cfg.sweep == "gop":
            variants = [dataclasses.replace(cfg.dataset, gop=g) for g in (10, 30, 120, 300)]
        else:
            variants = [dataclasses.replace(cfg.dataset, width=w, height=h) for w, h in ((854, 480), (1920, 1080))]
        for ds in variants:
            tag = f"gop{ds.gop}" if cfg.sweep == "gop" else f"{ds.height}p"
            for kind in ("ceiling", "strict", "bounded"):
                if kind in cfg.contenders:
                    runs.append({**base, "name": f"{kind} [{tag}]", "kind": kind, "dataset": ds, "sweep": {cfg.sweep: tag}})
        return runs
    for kind in cfg.contenders:
        runs.append({**base, "name": kind, "kind": kind, "dataset": cfg.dataset})
        # Beside the loader's default thread count, once per value asked for.
        for t in cfg.decoder_threads if kind in RINGLOAD_KINDS else ():
            runs.append({**base, "name": f"{kind} decoder_threads={t}", "kind": kind, "dataset": cfg.dataset,
                         "decoder_threads": t, "sweep": {"decoder_threads": t}})
    if "bounded" in cfg.contenders:
        points = []
        if cfg.sweep == "chunks":
            points += [(None, m) for m in (cfg.max_per_chunks or (1, 2, 4, 8, 16, 32))]
            points += [(c, None) for c in (cfg.chunk_lens or (15, 30, 60, 120))]
        else:
            points += [(c, m) for c in cfg.chunk_lens for m in (cfg.max_per_chunks or (None,))]
            if not cfg.chunk_lens:
                points += [(None, m) for m in cfg.max_per_chunks]
        for c, m in points:
            name = "bounded " + " ".join(f"{k}={v}" for k, v in (("chunk_len", c), ("max_per_chunk", m)) if v)
            runs.append(
                {**base, "name": name, "kind": "bounded", "dataset": cfg.dataset, "chunk_len": c, "max_per_chunk": m,
                 "sweep": {"chunk_len": c, "max_per_chunk": m}}
            )
    return runs


def run(cfg: BenchConfig, *, progress: bool = True, checkpoint=None) -> dict:
    """Run the benchmark described by ``cfg``; return the result document (see SCHEMA).

    Data are generated and indexed first. Then ``cfg.rounds`` rounds each run every
    contender once, in the same order (A B C, A B C, ...), each in a fresh process tree
    with seed ``cfg.seed + round``, so that a change of outside load hits all contenders
    of a round alike and each ratio can be taken within a round. A contender skipped in
    the first round (not installed) is not tried again.

    ``checkpoint(doc)``, when given, is called after every contender run with the document
    so far, so that a long run that is interrupted still leaves its results.
    """
    from tqdm import tqdm

    runs = plan_runs(cfg)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "system": system_info(),
        "config": jsonable(dataclasses.asdict(cfg)),
        "rounds": cfg.rounds,
        "order": [spec["name"] for spec in runs],
        "datasets": {},
        "results": [],
    }
    peers_wanted = any(spec["kind"] in PEER_CONTENDERS for spec in runs)
    if peers_wanted and cfg.peer_python:
        doc["system"]["peers"] = peer_versions(cfg.peer_python)
    expected = cfg.warmup_batches + cfg.repeats * (cfg.batches or 4)
    bar = tqdm(total=len(runs) * cfg.rounds * expected, unit="batch", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)  # fmt: skip
    t_run = time.perf_counter()
    try:
        paths = _prepare(cfg, runs, doc, bar)
        frames = {}
        if peers_wanted and cfg.peer_python:
            for key in {spec["dataset_key"] for spec in runs if spec["kind"] in PEER_CONTENDERS}:
                frames[key] = frame_counts(paths[key])
        for spec in runs:
            entry = {k: spec[k] for k in ("name", "kind", "workers", "batch_size", "sweep") if k in spec}
            entry.update(dataset=spec["dataset_key"], status="pending", rounds=[])
            if spec["kind"] == "bounded":
                entry.update(chunk_len=spec.get("chunk_len"), max_per_chunk=spec.get("max_per_chunk"), rho=cfg.rho)
            doc["results"].append(entry)
        for spec, entry in zip(runs, doc["results"]):
            if spec["kind"] in PEER_CONTENDERS and not cfg.peer_python:
                # Reported, not dropped: the note is the command that enables it.
                entry["rounds"].append({"round": 0, "status": "skipped",
                                        "note": f"peers run in their own interpreter: {enable_hint()}"})  # fmt: skip
                summarize(entry)
        for r in range(cfg.rounds):
            for spec, entry in zip(runs, doc["results"]):
                if entry["status"] == "skipped":
                    continue
                bar.set_description(f"round {r + 1}/{cfg.rounds}: {spec['name']}")
                base_n = bar.n

                def on_progress(done, base_n=base_n):
                    bar.n = min(base_n + done, bar.total)
                    bar.refresh()

                child = {**spec, "seed": cfg.seed + r, "paths": paths[spec["dataset_key"]]}
                peer = spec["kind"] in PEER_CONTENDERS
                if peer:
                    child["num_frames"], child["frame_sizes"] = frames[spec["dataset_key"]]
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                result = run_child(child, timeout_s=cfg.budget_s + 300, on_progress=on_progress,
                                   peer_python=cfg.peer_python if peer else None)  # fmt: skip
                result.update(round=r, started_s=t0 - t_run, process_s=time.perf_counter() - t0, loadavg_1m_before=load)
                bar.n = base_n + expected
                bar.refresh()
                entry["rounds"].append(result)
                summarize(entry)
                if result.get("status") != "ok":
                    log.info("%s, round %d: %s (%s)", spec["name"], r + 1, result.get("status"), result.get("note"))
                if checkpoint is not None:
                    doc["ratios"] = ratios(doc["results"], CLIP_TARGETS if cfg.clips_per_video else TARGETS)
                    checkpoint(doc)
    finally:
        bar.close()
    doc["system"]["loadavg_end"] = list(os.getloadavg())
    doc["ratios"] = ratios(doc["results"], CLIP_TARGETS if cfg.clips_per_video else TARGETS)
    return doc


def _prepare(cfg: BenchConfig, runs: list[dict], doc: dict, bar) -> dict[str, list[str]]:
    """Generate or list every dataset the runs read and index it for ringload, before any
    contender runs; returns paths by dataset key (and sets each spec's ``dataset_key``)."""
    paths: dict[str, list[str]] = {}
    for spec in runs:
        ds = spec.pop("dataset")
        key = spec["dataset_key"] = "source" if cfg.source else ds.key()
        if key not in paths:
            t0 = time.perf_counter()
            if cfg.source:
                paths[key] = list_source(cfg.source)
                doc["datasets"][key] = {"source": cfg.source, "files": len(paths[key])}
            else:
                paths[key] = prepare_dataset(ds, data_dir=cfg.data_dir, seed=cfg.seed, progress=bar.set_description)
                doc["datasets"][key] = {
                    **dataclasses.asdict(ds),
                    "files": len(paths[key]),
                    "bytes_per_video": file_size(paths[key][0]),
                    "prepare_s": time.perf_counter() - t0,
                    "root": str(pathlib.Path(paths[key][0]).parent.parent),
                }
        indexed = RINGLOAD_KINDS + (PEER_CONTENDERS if cfg.peer_python else ())
        if spec["kind"] in indexed and "ringload_index_s" not in doc["datasets"][key]:
            bar.set_description(f"ringload index ({len(paths[key])} files)")
            doc["datasets"][key]["ringload_index_s"] = warm_index(paths[key], cfg.num_workers)
    return paths
