"""From rounds to results: each contender's summary over its rounds, and every ratio taken
within a round, then summarised by its median and min-max over the rounds.

A machine shared with other work gives a contender more or less CPU from one minute to the
next, so two contenders measured minutes apart can swap places. Measured in the same
round, a few seconds apart, they share most of that change: the ratio of their images/s
within a round is what this module reports, and its spread over rounds shows how far the
run can be trusted (a target is "met" only when every round meets it).
"""

from __future__ import annotations

import math
from typing import Any

from .contenders import PEER_KINDS

#: A target: (numerator, denominator or "reference", need).
TARGETS = (
    ("bounded", "reference", 0.85),
    ("bounded", "starter", 10.0),
    ("strict", "starter", 1.5),
    ("strict", "torchcodec-exact", 1.0),
)
#: The targets of clip workloads with ``clips_per_video`` (``--kinetics``): clips/s over the per-clip Dataset.
CLIP_TARGETS = (
    ("bounded", "starter", 5.0),
    ("strict", "starter", 5.0),
)


def median(values):
    s = sorted(values)
    if not s:
        return None
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def spread(values: list[float]) -> dict | None:
    """``{"rounds": values, "median", "min", "max"}``, or None without values."""
    if not values:
        return None
    return {"rounds": list(values), "median": median(values), "min": min(values), "max": max(values)}


def percentile(values, q):
    """The ``q``-th percentile (0 to 100) with linear interpolation; None without values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(entry: dict) -> dict:
    """Fill ``entry``'s summary fields from ``entry["rounds"]`` (in place; returns it).

    status: "skipped" when the first round was, "failed" when any round failed, else "ok"
    (or "pending" before any round). images_per_s and first_batch_s: median over the ok
    rounds, with ``*_range`` [min, max]; cpu_s_per_image: CPU over images of all ok rounds;
    wait_ms: percentiles of every timed batch's wait; peak RSS/PSS: the largest round's.
    """
    rounds = entry.get("rounds") or []
    ok = [r for r in rounds if r.get("status") == "ok"]
    failed = [r for r in rounds if r.get("status") not in ("ok", "skipped")]
    if not rounds:
        entry["status"] = "pending"
    elif rounds[0].get("status") == "skipped":
        entry.update(status="skipped", note=rounds[0].get("note"))
        return entry
    else:
        entry["status"] = "failed" if failed else "ok"
    entry["rounds_ok"] = len(ok)
    if failed:
        entry["note"] = "; ".join(f"round {r.get('round', 0) + 1}: {r.get('note')}" for r in failed)
    if not ok:
        return entry
    first = ok[0]
    for key in ("output", "shm_bytes", "loader_kwargs"):
        if key in first:
            entry[key] = first[key]
    if not failed and first.get("note"):
        entry["note"] = first["note"]
    ips = [r["images_per_s"] for r in ok if r.get("images_per_s")]
    entry["images_per_s"] = median(ips)
    entry["images_per_s_range"] = [min(ips), max(ips)] if ips else None
    entry["images_per_s_rounds"] = ips
    images = sum(r.get("images_measured") or 0 for r in ok)
    cpu = sum(r.get("cpu_s") or 0.0 for r in ok)
    entry["images_measured"] = images
    entry["cpu_s_per_image"] = cpu / images if images and cpu else None
    waits = [w for r in ok for w in r.get("wait_ms_batches") or ()]
    entry["wait_ms"] = {f"p{q}": percentile(waits, q) for q in (50, 95, 99)} if waits else None
    entry["batches_measured"] = len(waits)
    starts = [r["first_batch_s"] for r in ok if r.get("first_batch_s") is not None]
    entry["first_batch_s"] = median(starts)
    entry["first_batch_s_range"] = [min(starts), max(starts)] if starts else None
    dec = [r["decoded_per_frame"] for r in ok if r.get("decoded_per_frame")]
    entry["decoded_per_frame"] = median(dec)
    entry["peak_rss_bytes"] = max(r.get("peak_rss_bytes") or 0 for r in ok)
    entry["peak_pss_bytes"] = max(r.get("peak_pss_bytes") or 0 for r in ok)
    if entry.get("kind") == "bounded":
        entry["chunk_len"] = first.get("chunk_len", entry.get("chunk_len"))
        entry["max_per_chunk"] = m = first.get("max_per_chunk", entry.get("max_per_chunk"))
        from .._bounded import design_effect_bound

        rho = entry.get("rho")
        entry["design_effect_bound"] = design_effect_bound(m, rho) if isinstance(m, int) and rho is not None else None
    return entry


def _by_round(entry: dict, value) -> dict[int, float]:
    out = {}
    for i, r in enumerate(entry.get("rounds") or ()):
        if r.get("status") == "ok":
            v = value(r)
            if v:
                out[r.get("round", i)] = v
    return out


def _ips(r):
    return r.get("images_per_s")


def _per_cpu(r):
    c = r.get("cpu_s_per_image")
    return 1.0 / c if c else None


def ratios(results: list[dict], targets=TARGETS) -> dict:
    """Every contender's ratios to the starter, the reference and the plain-PyAV ceiling,
    each taken within a round and summarised with :func:`spread`; the targets; notes.

    The reference is ``sequential`` (ringload reading every frame in file order) when it
    ran, else ``ceiling``. ``x_*`` compare images/s; ``cpu_x_*`` compare images per
    CPU-second of the contender's own processes, which moves less with outside load.
    """
    entries = {e["name"]: e for e in results if e.get("status") not in ("skipped", "pending")}
    ips = {n: _by_round(e, _ips) for n, e in entries.items()}
    eff = {n: _by_round(e, _per_cpu) for n, e in entries.items()}
    reference = next((n for n in ("sequential", "ceiling") if ips.get(n)), None)

    def ratio(table, num, den):
        if num not in table or den not in table:
            return None
        common = sorted(set(table[num]) & set(table[den]))
        return spread([table[num][r] / table[den][r] for r in common])

    out: dict[str, Any] = {"reference": reference, "contenders": {}, "targets": [], "notes": []}
    for name in entries:
        row = {}
        for key, den in (("starter", "starter"), ("reference", reference), ("ceiling", "ceiling")):
            if den:
                row[f"x_{key}"] = ratio(ips, name, den)
                row[f"cpu_x_{key}"] = ratio(eff, name, den)
        out["contenders"][name] = {k: v for k, v in row.items() if v}
    for num, den, need in targets:
        den = reference if den == "reference" else den
        for per, table in (("images/s", ips), ("per CPU-second", eff)):
            s = ratio(table, num, den) if den else None
            if s:
                out["targets"].append(_verdict(num, den, need, per, s))
    out["notes"] = _exceeded(ips, reference, ratio)
    # The fastest peer of each round, and every other contender over it in that round.
    peers = [n for n in ips if n in PEER_KINDS and ips[n]]
    best = {}
    for r in sorted({r for n in peers for r in ips[n]}):
        name = max((n for n in peers if r in ips[n]), key=lambda n: ips[n][r])
        best[r] = (name, ips[name][r])
    if best:
        out["best_peer"] = {"round_ids": list(best), "rounds": [b[0] for b in best.values()],
                            "images_per_s": [b[1] for b in best.values()]}  # fmt: skip
        for name in entries:
            if name in PEER_KINDS:
                continue
            common = [r for r in best if r in ips.get(name, {})]
            s = spread([ips[name][r] / best[r][1] for r in common])
            if s:
                out["contenders"].setdefault(name, {})["x_best_peer"] = s
    return out


def _verdict(num, den, need, per, s) -> dict:
    met = sum(v >= need for v in s["rounds"])
    n = len(s["rounds"])
    verdict = "met" if met == n else ("missed" if met == 0 else "unclear")
    label = f"{num} >= {need:g} x {den}" + ("" if per == "images/s" else " per CPU-second")
    return {"target": label, "numerator": num, "denominator": den, "need": need, "per": per, **s,
            "rounds_met": met, "verdict": verdict}  # fmt: skip


def _exceeded(ips, reference, ratio) -> list[str]:
    """Say so when a contender read faster than the reference or the plain-PyAV ceiling in
    some round: neither is a bound then, and ratios that close to 1 are within the noise."""
    notes = []
    for den in dict.fromkeys(d for d in (reference, "ceiling") if d and ips.get(d)):
        for name in ips:
            if name == den:
                continue
            s = ratio(ips, name, den)
            if not s or s["max"] <= 1.0:
                continue
            k = sum(v > 1.0 for v in s["rounds"])
            notes.append(
                f"{name} read faster than {den} in {k} of {len(s['rounds'])} rounds (up to {s['max']:.2f}x): "
                f"{den} is a measured reference, not a bound, at this run's load"
            )
    return notes
