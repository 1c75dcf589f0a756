"""One contender in one process: ``measure()`` times it, ``child_main()`` is the process.

The parent (``runner``) starts ``python -m ringload.bench.measure`` in a fresh process
group for each contender and round, writes the spec as JSON on its stdin and reads lines
that start with ``PROTO`` on its stdout: progress (batches done) and the result.

Per run it measures images/s per timed window after a warm-up that drains whatever the
loader buffered while starting, CPU seconds of the whole process tree over the timed
windows, the consumer's wait per batch, time to first batch, peak RSS/PSS of the tree.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from .contenders import FACTORIES, Skip
from .procfs import MemorySampler, tree_cpu_seconds
from .rounds import percentile

log = logging.getLogger(__name__)

PROTO = "@@ringload-bench "


def measure(spec: dict, paths: list[str], emit=lambda msg: None, factories=None) -> dict:
    """Run one contender in this process and return its measurements (see module docstring).

    ``factories`` maps contender kinds to factories (default ``contenders.FACTORIES``; the
    peer interpreter passes ``peers.FACTORIES``)."""
    kind = spec["kind"]
    me = os.getpid()
    result: dict[str, Any] = {"status": "ok"}
    t_start = time.perf_counter()
    with MemorySampler(me) as mem:
        try:
            contender = (factories or FACTORIES)[kind](spec, paths)
        except Skip as exc:
            return {"status": "skipped", "note": str(exc)}
        it = contender.iterate()
        try:
            waits: list[float] = []
            windows: list[float] = []
            windows_s: list[float] = []
            images = 0
            frames_per_sample = 1
            cpu = 0.0
            decoded: int | None = 0
            counted: dict[str, float] = {}  # deltas of the contender's counters over the windows
            batch = next(it)
            result["first_batch_s"] = time.perf_counter() - t_start
            result["output"] = {"shape": list(batch.shape), "dtype": str(batch.dtype).replace("torch.", "")}
            done = 1
            emit({"progress": done})
            # Warm-up: at least warmup_batches, and enough to drain what the loader buffered
            # while it started (else the first window times a full buffer), unless the
            # contender is so slow that a quarter of the budget passes first (then the
            # buffer is a small share of a window anyway).
            t_first = time.perf_counter()
            # (spec["drain"] False: exactly warmup_batches, for windows of a fixed number of
            # batches that must start at the same point of the plan for every contender.)
            drain = contender.buffered_batches() + 1 if spec.get("drain", True) else 0
            warm_deadline = t_first + 0.25 * spec["budget_s"]
            warmup = 1
            while warmup < spec["warmup_batches"] or (warmup < drain and time.perf_counter() < warm_deadline):
                next(it)
                warmup += 1
                done += 1
                emit({"progress": done})
            result["warmup_batches"] = warmup
            # Windows hold a multiple of the worker count (a DataLoader delivers its workers'
            # batches in bursts) and at least min_window_batches.
            step = max(1, spec["workers"])
            min_n = max(spec["min_window_batches"], step)
            min_n += (-min_n) % step
            # The budget runs from the first batch (start-up has the parent's timeout); past
            # it, one window is still measured.
            deadline = t_first + spec["budget_s"]
            for _ in range(spec["repeats"]):
                if windows and time.perf_counter() > deadline:
                    result["over_budget"] = True
                    break
                cpu0 = tree_cpu_seconds(me)
                dec0 = contender.decoded_frames()
                c0 = contender.counters()
                # The parent can read what lies outside this tree (a server's CPU, a proxy's
                # counters) at the window's edges.
                emit({"window": len(windows), "edge": "start"})
                t0 = time.perf_counter()
                n = 0
                while True:
                    ts = time.perf_counter()
                    b = next(it)
                    waits.append(time.perf_counter() - ts)
                    n += 1
                    done += 1
                    emit({"progress": done})
                    elapsed = time.perf_counter() - t0
                    if spec.get("batches"):
                        if n >= spec["batches"]:
                            break
                    elif n >= min_n and n % step == 0 and (
                        elapsed >= spec["window_s"] or time.perf_counter() > deadline
                    ):
                        break
                elapsed = time.perf_counter() - t0
                emit({"window": len(windows), "edge": "end", "seconds": elapsed})
                cpu += tree_cpu_seconds(me) - cpu0
                c1 = contender.counters()
                if c0 is not None and c1 is not None:
                    for k in c0.keys() & c1.keys():
                        counted[k] = counted.get(k, 0) + c1[k] - c0[k]
                dec1 = contender.decoded_frames()
                # Decoded over delivered within the windows: the ring's prefetch is steady there.
                decoded = decoded + dec1 - dec0 if decoded is not None and dec0 is not None and dec1 is not None else None
                windows.append(n * b.shape[0] / elapsed)
                windows_s.append(elapsed)
                frames_per_sample = int(b.shape[1]) if b.ndim == 5 else 1  # (B, T, C, H, W) clips
                images += n * b.shape[0]
            result.update(contender.info())
            mem.sample()  # the peak at the end, while the loader is still open
        finally:
            it.close()  # drops the loader's iterator (a DataLoader shuts its workers down)
            contender.close()
    windows_sorted = sorted(windows)
    result.update(
        images_per_s=percentile(windows_sorted, 50),
        images_per_s_windows=windows,
        images_measured=images,
        cpu_s=cpu,
        cpu_s_per_image=cpu / images if images else None,
        decoded_per_frame=decoded / (images * frames_per_sample) if images and decoded else None,
        wait_ms={f"p{q}": 1000 * percentile(waits, q) for q in (50, 95, 99)},
        wait_ms_batches=[round(1000 * w, 3) for w in waits],
        batches_measured=len(waits),
        peak_rss_bytes=mem.peak_rss,
        peak_pss_bytes=mem.peak_pss,
        wall_s=time.perf_counter() - t_start,
    )
    if counted:
        result["window_counters"] = counted
    result["windows_s"] = windows_s
    stats = result.get("loader_stats") or {}
    if result.get("shm_bytes") is None and isinstance(stats, dict):
        for key in ("shm_bytes", "ring_bytes", "shared_memory_bytes"):
            if isinstance(stats.get(key), (int, float)):
                result["shm_bytes"] = int(stats[key])
                break
    return result


def child_main(factories=None) -> int:
    """``python -m ringload.bench.measure``: read one contender spec on stdin, report on stdout
    (``peer_child.py`` calls it in the peer interpreter with the peers' factories)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = json.loads(sys.stdin.read())
    out = sys.stdout

    def emit(msg):
        out.write(PROTO + json.dumps(msg) + "\n")
        out.flush()

    try:
        result = measure(spec, spec["paths"], emit, factories)
    except Exception as exc:
        log.exception("contender %s failed", spec.get("name"))
        result = {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}
    emit({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
