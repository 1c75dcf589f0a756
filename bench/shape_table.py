"""The sweep table (and plot) of docs/benchmarks.md from bench/shape_sweep.sh's result
files: per shape and contender, images/s, the ratios to the starter and to sequential
(median and min-max over rounds), CPU ms per image, decoded frames per delivered frame,
the 95th percentile wait and the first batch (seconds, and over sequential's per round).

    python bench/shape_table.py [--plot docs/img/bench_shapes.png] bench/results/shape-*.json

A shape is the file name's first word after ``shape-`` (``shape-gop10-final.json`` is
GOP 10), so several runs of one shape (sequential and bounded in one, the starter,
ceiling and strict in another) make one group of rows. Ratios are side by side within a
run; a ratio to a contender of another run of the shape is marked with ``*``. A contender
that two runs of a shape hold appears twice, the second time with its file's tag
(``strict (strict120)``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

ORDER = ["starter", "ceiling", "sequential", "strict", "bounded"]
SHAPES = ["default", "5s", "60s", "gop10", "gop250", "480p", "20distinct"]
LABELS = {"default": "default (GOP 30, 10 s)", "5s": "5 s videos", "60s": "60 s videos", "gop10": "GOP 10",
          "gop250": "GOP 250", "480p": "854x480", "20distinct": "20 distinct contents"}


def _r(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def _span(rs):
    return f"{_r(statistics.median(rs))} ({_r(min(rs))}-{_r(max(rs))})" if rs else "-"


def load(paths):
    """{shape: {contender: (result, run)}} where run is the file's results by name."""
    shapes: dict[str, dict[str, tuple[dict, dict]]] = {}
    for p in paths:
        d = json.loads(pathlib.Path(p).read_text())
        shape, _, tag = pathlib.Path(p).stem.removeprefix("shape-").partition("-")
        run = {r["name"]: r for r in d["results"] if r.get("status") == "ok"}
        for name, r in run.items():
            # A contender met again in another run of the shape is told apart by that run's tag.
            key = name if name not in shapes.setdefault(shape, {}) else f"{name} ({tag or p})"
            shapes[shape][key] = (r, run)
    return shapes


def _ratio(shape_rows, name, base_name, field="images_per_s"):
    """(text, per-round list) of name's ``field`` over base_name's in the shape: per round
    where both ran in one run, else of the summaries, marked ``*``."""
    if base_name not in shape_rows or name not in shape_rows:
        return "-", None
    r, run = shape_rows[name]
    if base_name in run:  # side by side: the base of the row's own run
        a = [x.get(field) for x in r["rounds"]]
        b = [x.get(field) for x in run[base_name]["rounds"]]
        rs = [x / y for x, y in zip(a, b) if x and y] if len(a) == len(b) else None
        return _span(rs), rs
    x, y = r.get(field), shape_rows[base_name][0].get(field)
    return (_r(x / y) + "*" if x and y else "-"), None


def _rank(name):
    base = name.split(" (")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), name)


def rows(shapes):
    for shape in [s for s in SHAPES if s in shapes] + sorted(set(shapes) - set(SHAPES)):
        got = shapes[shape]
        for name in sorted(got, key=_rank):
            r, _ = got[name]
            wait = r.get("wait_ms") or {}
            cpu = r.get("cpu_s_per_image")
            yield (LABELS.get(shape, shape), name, _r(r["images_per_s"], 1), _ratio(got, name, "starter")[0],
                   _ratio(got, name, "sequential")[0], _r(cpu * 1e3 if cpu else None, 1),
                   _r(r.get("decoded_per_frame")), _r(wait.get("p95"), 0), _r(r.get("first_batch_s"), 1),
                   _ratio(got, name, "sequential", "first_batch_s")[0])


def plot(shapes, out: pathlib.Path) -> None:
    """Left: images/s per shape and contender (log scale; a contender two runs of a shape
    hold, from the later file). Right: bounded over sequential per round, 0.85 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [s for s in SHAPES if s in shapes]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    # One bar per contender: where two runs of a shape hold it, the later file's.
    last = {s: {k.split(" (")[0]: v for k, v in shapes[s].items()} for s in order}
    names = [n for n in ORDER if any(n in last[s] for s in order)]
    w = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * w for j, s in enumerate(order) if name in last[s]]
        ys = [last[s][name][0]["images_per_s"] for s in order if name in last[s]]
        ax.bar(xs, ys, w, label=name, color=f"C{ORDER.index(name)}" if name in ORDER else None)
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * 4)  # room for the legend above the bars
    ax.set_xticks(range(len(order)), [LABELS.get(s, s) for s in order], rotation=20, ha="right")
    ax.set_ylabel("images/s (median over rounds)")
    ax.legend(fontsize=8, ncol=len(names), loc="upper center")
    ax.set_title("throughput by dataset shape, 2 decoders, batch 128 at 224x224")
    for j, s in enumerate(order):
        _, rs = _ratio(shapes[s], "bounded", "sequential")
        if rs:
            bx.plot([j] * len(rs), rs, "o", color="C4")
            bx.plot([j - 0.2, j + 0.2], [statistics.median(rs)] * 2, "-", color="C4")
    bx.axhline(0.85, color="grey", ls="--", lw=1)
    bx.text(len(order) - 0.5, 0.855, "0.85 target", ha="right", va="bottom", fontsize=8, color="grey")
    bx.set_xticks(range(len(order)), [LABELS.get(s, s) for s in order], rotation=20, ha="right")
    bx.set_ylabel("bounded / sequential images/s, per round")
    bx.set_title("bounded against sequential")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--plot", type=pathlib.Path, help="also write the plot (PNG) here")
    args = ap.parse_args(argv)
    shapes = load(args.files)
    print("| shape | contender | img/s | x starter | x sequential | CPU ms/img | decoded per frame | wait p95 ms | "
          "first batch s | first batch x sequential |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows(shapes):
        print("| " + " | ".join(row) + " |")
    if args.plot:
        plot(shapes, args.plot)


if __name__ == "__main__":
    main()
