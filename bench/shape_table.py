"""The sweep table of docs/benchmarks.md from bench/shape_sweep.sh's result files: per
shape and contender, images/s, the ratios to the starter and to sequential (median and
min-max over rounds), CPU ms per image, decoded frames per delivered frame, the 95th
percentile wait and the first batch (seconds, and over sequential's per round).

    python bench/shape_table.py bench/results/shape-*.json
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys


def _r(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def rows(path: str):
    d = json.loads(pathlib.Path(path).read_text())
    shape = pathlib.Path(path).stem.removeprefix("shape-")
    res = {r["name"]: r for r in d["results"] if r.get("status") == "ok"}
    ratios = d["ratios"]["contenders"]
    seq_fb = [x.get("first_batch_s") for x in res["sequential"]["rounds"]] if "sequential" in res else None
    for name, r in res.items():
        rat = ratios.get(name, {})
        xs, xq = rat.get("x_starter"), rat.get("x_reference")
        fb = [x.get("first_batch_s") for x in r["rounds"]]
        fbx = statistics.median(a / b for a, b in zip(fb, seq_fb) if a and b) if seq_fb else None
        wait = r.get("wait_ms") or {}
        yield (shape, name, _r(r["images_per_s"], 1),
               f"{_r(xs['median'])} ({_r(xs['min'])}-{_r(xs['max'])})" if xs else "-",
               f"{_r(xq['median'])} ({_r(xq['min'])}-{_r(xq['max'])})" if xq else "-",
               _r(r["cpu_s_per_image"] * 1e3 if r.get("cpu_s_per_image") else None, 1),
               _r(r.get("decoded_per_frame")), _r(wait.get("p95"), 0), _r(r.get("first_batch_s"), 1), _r(fbx))


def main(paths) -> None:
    print("| shape | contender | img/s | x starter | x sequential | CPU ms/img | decoded per frame | wait p95 ms | first batch s | first batch x sequential |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        for row in rows(p):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
