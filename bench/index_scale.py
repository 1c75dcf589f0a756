"""How does ``VideoLoader("data.ringindex")`` scale to 10^4 .. 10^6 videos?

    python bench/index_scale.py                         # 1e4, 1e5, 1e6; writes bench/results/index_scale.json
    python bench/index_scale.py --sizes 10000 --modes strict

Every entry is real: a few real files are probed (``probe``, cache off) and their rows are
replicated under many names (symbolic links to the real files, 1000 per folder), so the
loader's decoders really open and decode the entry a batch names. The large index is built
from the replicated columns (``np.tile``), not from 10^6 probes. For each size and
sampling mode, one fresh process (so RSS is its own) measures:

  * ``construct_s``: ``VideoLoader(index, ...)`` until it returns (decoders started);
  * ``first_batch_s``: from there to the first batch;
  * ``consumer_rss_growth_mib``: the consumer's peak RSS (VmHWM) after the first batch less
    its RSS before the constructor (torch and ringload already imported);
  * ``decoder_rss_growth_mib``: a decoder's peak RSS after the first batch, less the peak of
    a decoder of a 4-video index measured the same way (``baseline``).

Plus the file's size. Targets at 10^6 (issue 15): constructor < 5 s, consumer growth < 1 GiB,
decoder growth < 200 MiB, file < 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
log = logging.getLogger("bench.index_scale")

REAL = ["bikes.mp4", "carphone_pristine.mp4", "flipping_a_pancake.mkv", "mv_with_2_top_shots.mp4"]
TARGETS = {"construct_s": 5.0, "consumer_rss_growth_mib": 1024.0, "decoder_rss_growth_mib": 200.0, "file_mib": 1024.0}


def _system() -> dict:
    import av

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "machine": platform.platform(), "cpu": platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0)), "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(), "numpy": np.__version__, "pyav": av.__version__, "commit": commit,
        "mem_total_kib": int(open("/proc/meminfo").read().split()[1]),
    }  # fmt: skip


def replicate(cols: dict, reps: int, paths: list[str]) -> dict:
    """The columns of ``len(paths)`` rows: the k rows of ``cols`` tiled ``reps`` times."""
    from ringload._indexfile_write import _strings

    k = len(cols["ok"])
    out = {}
    for name, arr in cols.items():
        if name.endswith("_off") or name in ("pts", "keyframes", "keyframe_pos", "path_data", "error_data"):
            continue
        out[name] = np.tile(arr, (reps,) + (1,) * (arr.ndim - 1))
    for off, datas in (("pts_off", ("pts",)), ("kf_off", ("keyframes", "keyframe_pos")), ("error_off", ("error_data",))):
        lens = np.diff(cols[off])
        out[off] = np.concatenate([[0], np.cumsum(np.tile(lens, reps))]).astype("<i8")
        for d in datas:
            out[d] = np.tile(cols[d], reps)
    out["path_off"], out["path_data"] = _strings(paths)
    assert len(out["ok"]) == k * reps == len(paths)
    return out


def make_links(root: str, real: list[str], n: int) -> list[str]:
    """n names (symbolic links, 1000 per folder) cycling through the real files."""
    paths = []
    for i in range(n):
        src = real[i % len(real)]
        d = os.path.join(root, f"{i // 1000:05d}")
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"v{i:07d}{os.path.splitext(src)[1]}")
        if not os.path.lexists(p):
            os.symlink(src, p)
        paths.append(p)
    return paths


def build(work: str, n: int, infos) -> tuple[str, float]:
    from ringload._indexfile_write import columns_from_rows, write_index

    out = os.path.join(work, f"scale-{n}.ringindex")
    t0 = time.perf_counter()
    paths = make_links(os.path.join(work, "links"), [i.path for i in infos], n)
    t_links = time.perf_counter() - t0
    cols, cats = columns_from_rows(infos)
    reps = n // len(infos)
    big = replicate(cols, reps, paths[: reps * len(infos)])
    t1 = time.perf_counter()
    write_index(out, big, cats, {"bench": "index_scale"})
    log.info("%d videos: links %.1f s, columns + write %.1f s", n, t_links, time.perf_counter() - t1)
    return out, os.path.getsize(out)


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def measure(index: str, mode: str) -> dict:
    """Runs in a fresh process (``--measure``): one loader, one first batch."""
    import torch  # noqa: F401  (imported before the baseline RSS, as in a training script)

    import ringload

    rss0 = _status(os.getpid(), "VmRSS")
    t0 = time.perf_counter()
    loader = ringload.VideoLoader(index, batch_size=16, size=(64, 64), sampling=mode, num_workers=1, seed=1)
    t1 = time.perf_counter()
    batch = next(iter(loader))
    t2 = time.perf_counter()
    assert batch.frames.shape[0] == 16
    dec = [d["pid"] for d in loader.stats()["decoders"]]
    out = {
        "construct_s": t1 - t0, "first_batch_s": t2 - t1,
        "consumer_rss_before_mib": rss0 / 1024, "consumer_hwm_mib": _status(os.getpid(), "VmHWM") / 1024,
        "decoder_hwm_mib": max(_status(p, "VmHWM") for p in dec) / 1024,
    }  # fmt: skip
    out["consumer_rss_growth_mib"] = out["consumer_hwm_mib"] - out["consumer_rss_before_mib"]
    loader.close()
    return out


def run_measure(index: str, mode: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", index, mode]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--modes", nargs="+", default=["strict", "bounded", "sequential"])
    ap.add_argument("--work", default="/tmp/ringload-index-scale")
    ap.add_argument("--videos", default=os.path.join(os.path.dirname(REPO), "shared", "videos"))
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "index_scale.json"))
    ap.add_argument("--measure", nargs=2, metavar=("INDEX", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from ringload.probe import probe

    os.makedirs(args.work, exist_ok=True)
    report = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "system": _system(),
              "real_files": REAL, "targets_at_1e6": TARGETS, "results": []}  # fmt: skip
    infos = [probe(os.path.join(args.videos, f), cache=False) for f in REAL]
    base_index, _ = build(args.work, len(infos), infos)
    baseline = {m: run_measure(base_index, m) for m in args.modes}
    report["baseline"] = baseline
    for n in args.sizes:
        index, size = build(args.work, n, infos)
        for mode in args.modes:
            r = run_measure(index, mode)
            r.update(videos=n, mode=mode, file_mib=size / 2**20)
            r["decoder_rss_growth_mib"] = r["decoder_hwm_mib"] - baseline[mode]["decoder_hwm_mib"]
            log.info("%s", json.dumps(r))
            report["results"].append(r)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(f"{'videos':>9} {'mode':>10} {'construct s':>11} {'1st batch s':>11} {'consumer +MiB':>13} "
          f"{'decoder +MiB':>12} {'file MiB':>8}")  # fmt: skip
    for r in report["results"]:
        print(f"{r['videos']:>9} {r['mode']:>10} {r['construct_s']:>11.2f} {r['first_batch_s']:>11.2f} "
              f"{r['consumer_rss_growth_mib']:>13.0f} {r['decoder_rss_growth_mib']:>12.0f} {r['file_mib']:>8.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
