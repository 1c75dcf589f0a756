"""What a run reports: the result document's system metadata, the table, the JSON file
and the plots (the ratios and targets are computed in :mod:`ringload.bench.rounds`)."""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import os
import pathlib
import platform
import subprocess
import textwrap
from typing import Any

from ._json import write_json  # noqa: F401  (part of this module's interface)

log = logging.getLogger(__name__)

SCHEMA = "ringload-bench/2"
#: The folder of the ``ringload`` package this harness belongs to.
_PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent


# --- system metadata --------------------------------------------------------------------------


def system_info() -> dict[str, Any]:
    """CPU, cores, RAM, load, versions and git commit, for the result file."""
    info: dict[str, Any] = {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_bytes": _meminfo("MemTotal"),
        "loadavg_start": list(os.getloadavg()),
        "gpu": _gpu_name(),
    }
    # The peers run in another interpreter: their versions are under "peers" (runner.peer_versions).
    for mod in ("torch", "av", "numpy", "PIL", "uvloop", "posix_ipc"):
        try:
            info[f"{mod}_version"] = importlib.import_module(mod).__version__
        except Exception:
            info[f"{mod}_version"] = None
    try:
        import av

        info["ffmpeg_libavcodec"] = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    except Exception:
        info["ffmpeg_libavcodec"] = None
    try:
        import ringload

        info["ringload_version"] = ringload.__version__
    except Exception:
        info["ringload_version"] = None
    info["git_commit"], info["git_dirty"] = _git_state()
    return info


def _cpu_model() -> str | None:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _meminfo(key: str) -> int | None:
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return None


def _git_state() -> tuple[str | None, bool | None]:
    """The commit of the checkout this ``ringload`` was imported from, and whether its
    tracked files differ from it; (None, None) for an installed copy (a wheel in
    site-packages is not the checkout that encloses it, if any)."""
    checkout = _PACKAGE_ROOT.parent

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        if pathlib.Path(git("rev-parse", "--show-toplevel")).resolve() != checkout.resolve():
            return None, None
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None


# --- the table -------------------------------------------------------------------------------

WIDTH = 100  # the table and its notes fit this many columns


def _ratio(s) -> str:
    """``median min-max`` of a spread (one number for one round)."""
    if not s:
        return "-"
    digits = 2 if s["max"] < 10 else 1
    text = f"{s['median']:.{digits}f}"
    if len(s["rounds"]) > 1:
        text += f" {s['min']:.{digits}f}-{s['max']:.{digits}f}"
    return text


def _short(name: str) -> str:
    return name.replace("chunk_len=", "c=").replace("max_per_chunk=", "m=")


def _fmt(v, digits):
    if v is None:
        return "-"
    return f"{v:.{digits}f}"


def format_table(doc: dict) -> str:
    """The human-readable result: a table of at most ``WIDTH`` columns, then what the
    columns mean, the machine, the targets and notes. Everything else is in the JSON."""
    rat = doc.get("ratios") or {}
    ref = rat.get("reference") or "reference"
    per = rat.get("contenders") or {}
    # Rates count samples: images, or clips when a sample is a clip.
    unit = "clips/s" if ((doc.get("config") or {}).get("clip_len") or 1) > 1 else "img/s"
    head = ["contender", unit, "x starter", f"x {ref}", "CPU ms", "dec", "wait ms", "start s", "PSS MB"]
    rows, notes, bounds = [head], [], []
    for r in doc["results"]:
        name = _short(r["name"])
        if r.get("status") not in ("ok", "failed") or not r.get("images_per_s"):
            rows.append([name, r.get("status", "?")] + [""] * (len(head) - 2))
            notes.append(f"{r['name']}: {r.get('status')}: {r.get('note')}")
            continue
        rr = per.get(r["name"], {})
        w = r.get("wait_ms") or {}
        cpu = r.get("cpu_s_per_image")
        rows.append([
            name + (" (failed)" if r.get("status") == "failed" else ""),
            _fmt(r.get("images_per_s"), 1),
            _ratio(rr.get("x_starter")),
            _ratio(rr.get("x_reference")),
            _fmt(cpu * 1000 if cpu else None, 1),
            _fmt(r.get("decoded_per_frame"), 2),
            _fmt(w.get("p95"), 0),
            _fmt(r.get("first_batch_s"), 1),
            _fmt((r.get("peak_pss_bytes") or 0) / 2**20, 0),
        ])  # fmt: skip
        if r.get("design_effect_bound") is not None:
            bounds.append(f"{name}: chunk_len {r.get('chunk_len')}, max_per_chunk {r.get('max_per_chunk')}, "
                          f"design-effect bound {r['design_effect_bound']:.2f} (rho {r.get('rho')})")  # fmt: skip
        if r.get("note"):
            notes.append(f"{r['name']}: {r['note']}")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    right = {1, 4, 5, 6, 7, 8}

    def line(row):
        return "  ".join(str(c).rjust(widths[i]) if i in right else str(c).ljust(widths[i]) for i, c in enumerate(row))

    lines = []
    if doc.get("preset") == "smoke":
        lines.append("smoke run: tiny data and windows, the numbers say nothing about speed")
    lines += [line(rows[0]).rstrip(), "  ".join("-" * w for w in widths)] + [line(row).rstrip() for row in rows[1:]]
    n = doc.get("rounds") or 1
    lines.append("")
    text = [
        f"{n} round{'s' if n != 1 else ''}, contenders interleaved (A B C, A B C, ...), each run in a fresh "
        f"process tree. {unit}: median over rounds. x starter, x " + ref + f": {unit} over the starter's "
        f"({ref}'s) in the same round" + (", median and min-max over rounds." if n > 1 else "."),
        f"CPU ms: CPU milliseconds per {'image' if unit == 'img/s' else 'clip'}, all its processes. wait ms: 95th percentile of the wait "
        "for a batch. start s: to the first batch (median). PSS MB: peak, summed over its processes. "
        "dec: frames the decoders produced (walks from keyframes included) per delivered frame, "
        "in the timed windows (ringload only).",
    ]
    if any(_short(r["name"]) != r["name"] for r in doc["results"]):
        text.append("c = chunk_len, m = max_per_chunk.")
    s = doc.get("system", {})
    text.append(
        f"machine: {s.get('cpu_model')}, {s.get('cpu_count')} cores, {(s.get('ram_bytes') or 0) / 2**30:.0f} GiB "
        f"RAM, GPU: {s.get('gpu') or 'none'}; 1-minute load average {_fmt((s.get('loadavg_start') or [None])[0], 2)} "
        f"at the start, {_fmt((s.get('loadavg_end') or [None])[0], 2)} at the end (before each run in the JSON)."
    )
    for t in rat.get("targets") or ():
        k, m = t["rounds_met"], len(t["rounds"])
        every = "in every round" if m > 1 else "in its one round"
        verdict = {"met": f"met {every}", "missed": f"MISSED {every}",
                   "unclear": f"UNCLEAR, met in {k} of {m} rounds"}[t["verdict"]]  # fmt: skip
        d = 2 if t["max"] < 10 else 1
        spread = f"median {t['median']:.{d}f}" + (f", {t['min']:.{d}f} to {t['max']:.{d}f}" if m > 1 else "")
        text.append(f"target {t['target']}: {verdict} ({spread})")
    best = rat.get("best_peer")
    if best:
        line = f"fastest peer per round: {', '.join(best['rounds'])}; over it in the same round:"
        parts = [f"{_short(n)} {_ratio(v['x_best_peer'])}" for n, v in per.items() if v.get("x_best_peer")]
        text.append(line + " " + "; ".join(parts) + ".")
    peers = s.get("peers")
    if peers:
        text.append("peers: " + ", ".join(f"{k} {v}" for k, v in peers.items() if k not in ("executable",)) +
                    f" ({peers.get('executable')})")  # fmt: skip
    text += bounds
    text += [f"note: {x}" for x in (rat.get("notes") or []) + notes]
    for item in text:
        lines += textwrap.wrap(item, WIDTH, subsequent_indent="  ", break_on_hyphens=False) or [""]
    return "\n".join(lines)


def make_plots(json_path, out_dir) -> list[str]:
    """Render the PNG plots (:mod:`ringload.bench.plot`); returns the files written
    ([] without matplotlib, which is in the bench extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        log.warning("no plots: %s (pip install 'ringload[bench]')", exc)
        return []
    from . import plot

    return [str(p) for p in plot.plot(json_path, out_dir)]
