"""Turn a ``ringload bench`` JSON result file into PNG plots.

    python -m ringload.bench.plot bench/results/RUN.json --out docs/img

Writes ``bench_throughput.png`` (images/s per contender, the reference marked),
``bench_ratios.png`` (each contender's ratios to the reference and the starter, per round),
``bench_max_per_chunk.png`` (bounded images/s against max_per_chunk, when the run swept it),
``bench_chunk_len.png`` (against chunk_len) and ``bench_sweep.png`` (GOP or resolution sweep).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _ok(results):
    return [r for r in results if r.get("status") == "ok" and r.get("images_per_s")]


def _reference(doc):
    """(name, images/s) of the contender the ratios divide by (sequential, else ceiling)."""
    names = [(doc.get("ratios") or {}).get("reference") or (doc.get("ratios") or {}).get("ceiling_used")]
    for name in [n for n in names if n] + ["sequential", "ceiling"]:
        for r in doc["results"]:
            if r["name"] == name and r.get("status") == "ok":
                return name, r["images_per_s"]
    return None, None


def _err(rows):
    """Error bars from each row's min-max over rounds (schema 2); None for one-pass files."""
    if not any(r.get("images_per_s_range") for r in rows):
        return None
    lo = [r["images_per_s"] - (r.get("images_per_s_range") or [r["images_per_s"]] * 2)[0] for r in rows]
    hi = [(r.get("images_per_s_range") or [r["images_per_s"]] * 2)[1] - r["images_per_s"] for r in rows]
    return [lo, hi]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subtitle(doc):
    s = doc.get("system", {})
    ram = (s.get("ram_bytes") or 0) / 2**30
    return f"{s.get('cpu_model')}, {s.get('cpu_count')} cores, {ram:.0f} GiB; {s.get('time_utc', '')}"


def plot_throughput(doc, out: pathlib.Path) -> pathlib.Path | None:
    """Images/s (median, with min-max over rounds) and images per CPU-second per contender,
    the reference marked on both."""
    plt = _figure()
    rows = [r for r in _ok(doc["results"]) if "sweep" not in r]
    if not rows:
        return None
    names = [r["name"] for r in rows][::-1]
    colors = ["#888888" if n in ("starter", "ceiling") else "#1f77b4" for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.9), sharey=True)
    cname, _ = _reference(doc)
    rounds = doc.get("rounds")
    panels = (
        (f"images/s (median{f' and min-max over {rounds} rounds' if rounds and rounds > 1 else ''})",
         lambda r: r["images_per_s"], _err(rows)),
        ("images per CPU-second (all its processes)",
         lambda r: 1.0 / r["cpu_s_per_image"] if r.get("cpu_s_per_image") else 0.0, None),
    )
    for ax, (label, fn, err) in zip(axes, panels):
        vals = [fn(r) for r in rows][::-1]
        ax.barh(names, vals, color=colors, xerr=[e[::-1] for e in err] if err else None, capsize=2)
        ends = [v + e for v, e in zip(vals, err[1][::-1])] if err else vals
        for y, (v, end) in enumerate(zip(vals, ends)):
            ax.text(end, y, f" {v:.1f}" if v < 10 else f" {v:.0f}", va="center", fontsize=8)
        cval = next((fn(r) for r in rows if r["name"] == cname), None)
        top = max(ends + [cval or 0])
        ax.set_xlim(0, top * 1.18)
        if cval:
            ax.axvline(cval, color="#d62728", linestyle="--", label=cname)
            ax.axvline(0.85 * cval, color="#d62728", linestyle=":", label=f"0.85 x {cname}")
            ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
        ax.set_xlabel(label, fontsize=9)
    fig.suptitle(f"Batch {rows[0].get('batch_size')}, {rows[0].get('workers')} workers; {_subtitle(doc)}", fontsize=9)
    fig.tight_layout()
    path = out / "bench_throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ratios(doc, out: pathlib.Path) -> pathlib.Path | None:
    """Each contender's ratio to the reference (left) and to the starter (right), one dot
    per round and a bar at the median: the spread over rounds is the run's noise."""
    rat = doc.get("ratios") or {}
    per = rat.get("contenders")
    ref = rat.get("reference")
    if not per or not ref or (doc.get("rounds") or 1) < 2:
        return None
    names = [r["name"] for r in doc["results"] if r["name"] in per and "sweep" not in r][::-1]
    if not names:
        return None
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.9), sharey=True)
    for ax, key, label, lines in (
        (axes[0], "x_reference", f"images/s over {ref}'s in the same round", (1.0, 0.85)),
        (axes[1], "x_starter", "images/s over the starter's in the same round", (1.0,)),
    ):
        for y, name in enumerate(names):
            s = per[name].get(key)
            if not s:
                continue
            ax.plot(s["rounds"], [y] * len(s["rounds"]), "o", color="#1f77b4", alpha=0.6, markersize=4)
            ax.plot([s["median"]] * 2, [y - 0.3, y + 0.3], color="#d62728")
            ax.text(s["max"], y, f"  {s['median']:.2f}", va="center", fontsize=8)
        for x in lines:
            ax.axvline(x, color="#888888", linestyle="--" if x == 1.0 else ":", linewidth=1)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names)
        ax.set_xlabel(label, fontsize=9)
        if key == "x_starter":
            ax.set_xscale("log")
    fig.suptitle(f"Ratios per round (dots), median (bar), {doc.get('rounds')} rounds; {_subtitle(doc)}", fontsize=9)
    fig.tight_layout()
    path = out / "bench_ratios.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bounded(doc, out: pathlib.Path, key: str) -> pathlib.Path | None:
    plt = _figure()
    pts = sorted(
        (r["sweep"][key], r["images_per_s"], r.get("design_effect_bound"))
        for r in _ok(doc["results"])
        if isinstance(r.get("sweep"), dict) and r["sweep"].get(key)
    )
    if len(pts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [p[0] for p in pts]
    ax.plot(xs, [p[1] for p in pts], "o-", label="bounded")
    cname, cval = _reference(doc)
    if cval:
        ax.axhline(cval, color="#d62728", linestyle="--", label=cname)
    for r in _ok(doc["results"]):
        if r["name"] in ("strict", "starter"):
            ax.axhline(r["images_per_s"], color="#888888", linestyle=":", label=r["name"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel(key)
    ax.set_ylabel("images/s")
    if key == "max_per_chunk" and any(p[2] for p in pts):
        rho = next((r.get("rho") for r in doc["results"] if r.get("rho") is not None), None)
        ax2 = ax.twinx()
        ax2.plot(xs, [p[2] for p in pts], "s--", color="#2ca02c", alpha=0.6)
        ax2.set_ylabel(f"design-effect bound (rho={rho})", color="#2ca02c")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Bounded sampling: throughput against {key}\n{_subtitle(doc)}", fontsize=9)
    fig.tight_layout()
    path = out / f"bench_{key}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(doc, out: pathlib.Path) -> pathlib.Path | None:
    plt = _figure()
    rows = [r for r in _ok(doc["results"]) if isinstance(r.get("sweep"), dict) and
            ("gop" in r["sweep"] or "resolution" in r["sweep"])]
    if not rows:
        return None
    key = "gop" if "gop" in rows[0]["sweep"] else "resolution"
    tags = list(dict.fromkeys(r["sweep"][key] for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        vals = [next((r["images_per_s"] for r in rows if r["kind"] == kind and r["sweep"][key] == t), 0) for t in tags]
        ax.bar([i + k * width for i in range(len(tags))], vals, width, label=kind)
    ax.set_xticks([i + width * (len(kinds) - 1) / 2 for i in range(len(tags))])
    ax.set_xticklabels(tags)
    ax.set_ylabel("images/s")
    ax.legend(fontsize=8)
    ax.set_title(f"Throughput by {key}\n{_subtitle(doc)}", fontsize=9)
    fig.tight_layout()
    path = out / f"bench_sweep_{key}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(json_path, out_dir) -> list[pathlib.Path]:
    """All plots that the result file has data for; returns the files written."""
    doc = json.loads(pathlib.Path(json_path).read_text())
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = [plot_throughput(doc, out), plot_ratios(doc, out), plot_bounded(doc, out, "max_per_chunk"), plot_bounded(doc, out, "chunk_len"),
            plot_sweep(doc, out)]
    return [p for p in made if p]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json")
    parser.add_argument("--out", default="docs/img")
    args = parser.parse_args(argv)
    for p in plot(args.json, args.out):
        sys.stdout.write(f"{p}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
