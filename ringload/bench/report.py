"""What a run reports: the result document's system metadata, the ratios and targets,
the table, the JSON file and the plots."""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import os
import pathlib
import platform
import subprocess
from typing import Any

from ._json import write_json  # noqa: F401  (part of this module's interface)

log = logging.getLogger(__name__)

SCHEMA = "ringload-bench/1"
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
    for mod in ("torch", "av", "numpy", "PIL", "uvloop", "posix_ipc", "torchcodec", "decord"):
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


# --- ratios, table, plots -------------------------------------------------------------------


def ratios(results: list[dict]) -> dict:
    """Ratios against the starter and the ceiling, for the issue's targets.

    ``x_*`` compare images/s. ``cpu_x_*`` compare images per CPU-second (the inverse of
    CPU s/img): on a machine shared with other work, a contender's images/s depends on how
    much CPU it was given while it ran, its CPU cost per image much less, so both are kept.
    """

    def get(name, key):
        for r in results:
            if r["name"] == name and r.get("status") == "ok":
                return r.get(key)
        return None

    def ips(name):
        return get(name, "images_per_s")

    def eff(name):
        c = get(name, "cpu_s_per_image")
        return 1.0 / c if c else None

    out: dict[str, Any] = {}
    ceiling_name = "sequential" if ips("sequential") else ("ceiling" if ips("ceiling") else None)
    out["ceiling_used"] = ceiling_name
    base, ceiling = ips("starter"), ips(ceiling_name) if ceiling_name else None
    base_e, ceiling_e = eff("starter"), eff(ceiling_name) if ceiling_name else None
    for r in results:
        if r.get("status") != "ok" or not r.get("images_per_s"):
            continue
        v, e = r["images_per_s"], eff(r["name"])
        row = {}
        if base:
            row["x_starter"] = v / base
        if ceiling:
            row["x_ceiling"] = v / ceiling
        if ips("ceiling"):
            row["x_plain_ceiling"] = v / ips("ceiling")
        if e and base_e:
            row["cpu_x_starter"] = e / base_e
        if e and ceiling_e:
            row["cpu_x_ceiling"] = e / ceiling_e
        out[r["name"]] = row
    targets = {}
    for label, num, den, need in (
        ("bounded >= 0.85 x ceiling", "bounded", ceiling_name, 0.85),
        ("bounded >= 10 x starter", "bounded", "starter", 10.0),
        ("strict >= 1.5 x starter", "strict", "starter", 1.5),
        ("strict >= torchcodec exact", "strict", "torchcodec-exact", 1.0),
    ):
        if den and ips(num) and ips(den):
            targets[label] = ips(num) / ips(den) >= need
            if eff(num) and eff(den):
                targets[label + " (per CPU-second)"] = eff(num) / eff(den) >= need
    out["targets"] = targets
    return out


def format_table(doc: dict) -> str:
    """The human-readable result table."""
    rat = doc.get("ratios", {})
    head = ["contender", "img/s", "x starter", "x ceiling", "CPU s/img", "x st/ceil per CPU", "wait p50/p95/p99 ms",
            "1st batch s",
            "peak RSS MB", "PSS MB", "shm MB", "bound"]
    rows = [head]
    notes = []
    for r in doc["results"]:
        if r.get("status") != "ok":
            rows.append([r["name"], r.get("status", "?")] + [""] * (len(head) - 2))
            notes.append(f"{r['name']}: {r.get('status')}: {r.get('note')}")
            continue
        rr = rat.get(r["name"], {})
        w = r.get("wait_ms") or {}
        bound = ""
        if r.get("design_effect_bound") is not None:
            bound = f"c={r.get('chunk_len')} m={r.get('max_per_chunk')} deff<={r['design_effect_bound']:.2f}"
        elif r["kind"] == "bounded":
            bound = f"c={r.get('chunk_len')} m={r.get('max_per_chunk')}"
        rows.append(
            [
                r["name"],
                _fmt(r.get("images_per_s"), 1),
                _fmt(rr.get("x_starter"), 2),
                _fmt(rr.get("x_ceiling"), 2),
                _fmt(r.get("cpu_s_per_image"), 4),
                f"{_fmt(rr.get('cpu_x_starter'), 2)}/{_fmt(rr.get('cpu_x_ceiling'), 2)}",
                "/".join(_fmt(w.get(k), 0) for k in ("p50", "p95", "p99")),
                _fmt(r.get("first_batch_s"), 1),
                _fmt((r.get("peak_rss_bytes") or 0) / 2**20, 0),
                _fmt((r.get("peak_pss_bytes") or 0) / 2**20, 0),
                _fmt(r["shm_bytes"] / 2**20, 0) if r.get("shm_bytes") else "-",
                bound,
            ]
        )
        if r.get("note"):
            notes.append(f"{r['name']}: {r['note']}")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    sysinfo = doc.get("system", {})
    lines.append("")
    lines.append(
        f"machine: {sysinfo.get('cpu_model')}, {sysinfo.get('cpu_count')} cores, "
        f"{(sysinfo.get('ram_bytes') or 0) / 2**30:.0f} GiB RAM, GPU: {sysinfo.get('gpu') or 'none'}; "
        f"load average at start {_fmt((sysinfo.get('loadavg_start') or [None])[0], 2)}, "
        f"end {_fmt((sysinfo.get('loadavg_end') or [None])[0], 2)}"
    )
    if rat.get("ceiling_used"):
        lines.append(f"ceiling for ratios: {rat['ceiling_used']}")
    for k, v in (rat.get("targets") or {}).items():
        lines.append(f"target {k}: {'met' if v else 'MISSED'}")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def _fmt(v, digits):
    if v is None:
        return "-"
    return f"{v:.{digits}f}"


def format_table(doc: dict) -> str:
    """The human-readable result table."""
    rat = doc.get("ratios", {})
    head = ["contender", "img/s", "x starter", "x ceiling", "CPU s/img", "x st/ceil per CPU", "wait p50/p95/p99 ms",
            "1st batch s",
            "peak RSS MB", "PSS MB", "shm MB", "bound"]
    rows = [head]
    notes = []
    for r in doc["results"]:
        if r.get("status") != "ok":
            rows.append([r["name"], r.get("status", "?")] + [""] * (len(head) - 2))
            notes.append(f"{r['name']}: {r.get('status')}: {r.get('note')}")
            continue
        rr = rat.get(r["name"], {})
        w = r.get("wait_ms") or {}
        bound = ""
        if r.get("design_effect_bound") is not None:
            bound = f"c={r.get('chunk_len')} m={r.get('max_per_chunk')} deff<={r['design_effect_bound']:.2f}"
        elif r["kind"] == "bounded":
            bound = f"c={r.get('chunk_len')} m={r.get('max_per_chunk')}"
        rows.append(
            [
                r["name"],
                _fmt(r.get("images_per_s"), 1),
                _fmt(rr.get("x_starter"), 2),
                _fmt(rr.get("x_ceiling"), 2),
                _fmt(r.get("cpu_s_per_image"), 4),
                f"{_fmt(rr.get('cpu_x_starter'), 2)}/{_fmt(rr.get('cpu_x_ceiling'), 2)}",
                "/".join(_fmt(w.get(k), 0) for k in ("p50", "p95", "p99")),
                _fmt(r.get("first_batch_s"), 1),
                _fmt((r.get("peak_rss_bytes") or 0) / 2**20, 0),
                _fmt((r.get("peak_pss_bytes") or 0) / 2**20, 0),
                _fmt(r["shm_bytes"] / 2**20, 0) if r.get("shm_bytes") else "-",
                bound,
            ]
        )
        if r.get("note"):
            notes.append(f"{r['name']}: {r['note']}")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    sysinfo = doc.get("system", {})
    lines.append("")
    lines.append(
        f"machine: {sysinfo.get('cpu_model')}, {sysinfo.get('cpu_count')} cores, "
        f"{(sysinfo.get('ram_bytes') or 0) / 2**30:.0f} GiB RAM, GPU: {sysinfo.get('gpu') or 'none'}; "
        f"load average at start {_fmt((sysinfo.get('loadavg_start') or [None])[0], 2)}, "
        f"end {_fmt((sysinfo.get('loadavg_end') or [None])[0], 2)}"
    )
    if rat.get("ceiling_used"):
        lines.append(f"ceiling for ratios: {rat['ceiling_used']}")
    for k, v in (rat.get("targets") or {}).items():
        lines.append(f"target {k}: {'met' if v else 'MISSED'}")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def _fmt(v, digits):
    if v is None:
        return "-"
    return f"{v:.{digits}f}"


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
