"""``ringload bench --remote``: the same videos read from local files and from an S3 bucket
(moto's server on 127.0.0.1, :mod:`ringload.bench.s3local`), side by side in interleaved
rounds, through a proxy (:mod:`ringload.bench.netproxy`) that counts what every client
receives and adds per-request latency.

Contenders (names are ``MODE PLACE``): for each sampling mode (bounded, strict) a
:class:`ringload.VideoLoader` on the local files (``local``), on the ``s3://`` URLs through
the proxy without added latency (``bucket``) and through the one with ``latency_s`` per
request (``bucket+20ms``); and the peers' pattern, a per-sample Dataset opening each item's
video through a plain fsspec file object (:mod:`ringload.bench.fsspec_dataset`), in the same
three places (``per-sample local`` / ``bucket`` / ``bucket+20ms``).

Each contender runs once per round in a fresh process tree (``runner.run_child``, the
harness's ``measure``), with the harness's warm-up and timed windows. Around each timed
window the parent reads what lies outside the contender's tree: the S3 server's CPU
seconds, its own CPU seconds (the proxies and the server's log reader run in it) and the
proxy's counters; the contender reports the deltas of its loader's counters over the same
window (``stats()["remote"]``, ``tasks``, ``frames``). Every per-frame number divides a
window's delta by the frames delivered in that window.

Ratios are taken within a round (``bucket`` over ``local`` of the same mode), then
summarised by their median and min-max over rounds (:func:`ringload.bench.rounds.spread`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import sys
import textwrap
import time
from typing import Any

from ..errors import ConfigError
from ._json import jsonable
from .config import DatasetSpec
from .data import file_size, prepare_dataset, warm_index
from .procfs import process_cpu_seconds
from .report import SCHEMA, system_info
from .rounds import _verdict, spread, summarize

log = logging.getLogger(__name__)

SAMPLINGS = ("bounded", "strict")
PEER = "per-sample"  # the per-sample fsspec Dataset's mode name
BUCKET = "ringload-bench"
#: The acceptance targets: images/s over the same mode on local files, per place.
X_LOCAL_NEED = {"bucket": 0.8, "latency": 0.6}
#: Bytes fetched over the bytes of the GOPs the tasks asked for, at most.
FETCH_OVER_GOP_MAX = 1.3


#: 200 distinct 1080p30 H.264 videos of 3 s (GOP 30, 2 B-frames: the harness's defaults).
DEFAULT_DATASET = DatasetSpec(width=1920, height=1080, seconds=3.0, distinct=200, names=200)


def _place_latency(latency_s: float) -> str:
    return f"bucket+{latency_s * 1000:g}ms"


@dataclasses.dataclass(frozen=True)
class RemoteConfig:
    """One ``ringload bench --remote`` run; validated on construction.

    ``dataset``: distinct generated videos (one name each) uploaded to the bucket;
    ``strict_batches``: strict contenders time one window of this many batches right after
    their first batch (no buffer drain), unless ``batches`` sets every window; None: the
    time-based windows of the others. Strict's look-ahead (up to 256 batches) decodes its
    window's GOPs in one sweep and releases most of its batches at the end of it, so its
    rate is only meaningful over whole sweeps; a fixed count of batches from the pass's
    start is the same work for the local and the bucket contenders;
    ``latency_s``: the delay the second proxy adds to every request; ``remote_cache_bytes``:
    the ringload contenders' block cache per decoder (None: the loader's default);
    ``contenders``: a subset of :meth:`names` (None: all), run in that order.
    """

    dataset: DatasetSpec = dataclasses.field(default_factory=lambda: DEFAULT_DATASET)
    data_dir: str | None = None
    latency_s: float = 0.020
    batch_size: int = 32
    size: int = 224
    workers: int = 0  # 0: os.cpu_count()
    rounds: int = 3
    warmup_batches: int = 2
    repeats: int = 1
    window_s: float = 20.0
    batches: int | None = None
    budget_s: float = 60.0
    strict_batches: int | None = 240
    remote_cache_bytes: int | None = None
    ring_bytes: int | None = None
    seed: int = 0
    contenders: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.dataset.names != self.dataset.distinct:
            raise ConfigError("--remote uploads distinct videos: --names must equal --remote-videos")
        for name in ("batch_size", "size", "rounds", "repeats", "warmup_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)}: must be >= 1")
        if not self.latency_s > 0:
            raise ConfigError(f"--remote-latency-ms={self.latency_s * 1000:g}: must be > 0")
        if not (self.window_s > 0 and self.budget_s > 0):
            raise ConfigError(f"--window-s={self.window_s}, --budget-s={self.budget_s}: must be > 0")
        if self.batches is not None and self.batches < 1:
            raise ConfigError(f"--batches={self.batches}: must be >= 1")
        if self.strict_batches is not None and self.strict_batches < 1:
            raise ConfigError(f"--strict-batches={self.strict_batches}: must be >= 1 (0 on the command line: "
                              "time-based windows like the other contenders)")  # fmt: skip
        if self.remote_cache_bytes is not None and self.remote_cache_bytes < 0:
            raise ConfigError(f"--remote-cache-bytes={self.remote_cache_bytes}: must be >= 0")
        if self.contenders is not None:
            unknown = [c for c in self.contenders if c not in self.names(all_=True)]
            if unknown or not self.contenders:
                raise ConfigError(f"--contenders: unknown {unknown}; choose from {', '.join(self.names(all_=True))}")

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def places(self) -> tuple[str, ...]:
        return ("local", "bucket", _place_latency(self.latency_s))

    def names(self, all_: bool = False) -> tuple[str, ...]:
        """Contender names in run order (rounds run them in this order every time)."""
        every = tuple(f"{mode} {place}" for mode in (*SAMPLINGS, PEER) for place in self.places)
        return every if all_ or self.contenders is None else tuple(self.contenders)


# ---------------------------------------------------------------------------------- the run


def run(cfg: RemoteConfig, *, progress: bool = True, checkpoint=None) -> dict:
    """Generate and upload the data, then run ``cfg.rounds`` interleaved rounds; returns the
    result document (``checkpoint(doc)`` after every contender run, as ``runner.run``)."""
    from tqdm import tqdm

    from .netproxy import Proxy
    from .runner import run_child
    from .s3local import HOST, LocalS3

    names = cfg.names()
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "preset": "remote",
        "system": system_info(),
        "config": jsonable(dataclasses.asdict(cfg)),
        "rounds": cfg.rounds,
        "order": list(names),
        "datasets": {},
        "results": [],
    }
    bar = tqdm(total=len(names) * cfg.rounds, unit="run", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    t_run = time.perf_counter()
    s3 = None
    proxies: dict[str, Proxy] = {}
    try:
        paths, urls, pts = _prepare_local(cfg, doc, bar)
        s3 = LocalS3()
        doc["s3"] = {"startup_s": s3.startup_s, "pid": s3.pid, "bucket": BUCKET}
        _upload(s3, paths, urls, doc, bar)
        proxies = {"bucket": Proxy(HOST, s3.port), cfg.places[2]: Proxy(HOST, s3.port, latency_s=cfg.latency_s)}
        doc["proxies"] = {place: {"latency_s": p.latency_s} for place, p in proxies.items()}
        _index_bucket(s3, urls, cfg, doc, bar)
        specs = _specs(cfg, names, paths, urls, pts, {place: s3.storage_options(p.endpoint_url)
                                                       for place, p in proxies.items()})  # fmt: skip
        for spec in specs:
            doc["results"].append({"name": spec["name"], "kind": spec["kind"], "mode": spec["mode"],
                                   "place": spec["place"], "workers": spec["workers"],
                                   "batch_size": spec["batch_size"], "dataset": spec["dataset_key"],
                                   "status": "pending", "rounds": []})  # fmt: skip
        cores = os.cpu_count() or 1
        for r in range(cfg.rounds):
            for spec, entry in zip(specs, doc["results"]):
                if entry["status"] == "skipped":
                    continue
                bar.set_description(f"round {r + 1}/{cfg.rounds}: {spec['name']}")
                probe = _WindowProbe(s3, proxies.get(spec["place"]))
                child = {k: v for k, v in spec.items() if k not in ("dataset_key", "mode", "place")}
                child["seed"] = cfg.seed + r
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                # Fixed-batch windows may outrun the budget: they get an hour before they are stopped.
                limit = cfg.budget_s + (3600 if child.get("batches") else 300)
                result = run_child(child, timeout_s=limit, on_window=probe.on_window)
                result.update(round=r, started_s=t0 - t_run, process_s=time.perf_counter() - t0,
                              loadavg_1m_before=load)  # fmt: skip
                if result.get("status") == "ok":
                    result["remote"] = _round_metrics(result, probe, cores)
                entry["rounds"].append(result)
                summarize(entry)
                _summarize_remote(entry)
                bar.update(1)
                if result.get("status") != "ok":
                    log.info("%s, round %d: %s (%s)", spec["name"], r + 1, result.get("status"), result.get("note"))
                if checkpoint is not None:
                    doc["ratios"] = ratios(doc["results"], cfg)
                    checkpoint(doc)
    finally:
        bar.close()
        for p in proxies.values():
            p.close()
        if s3 is not None:
            doc.setdefault("s3", {})["cpu_s_total"] = s3.cpu_seconds() if s3.running() else None
            s3.close()
    doc["system"]["loadavg_end"] = list(os.getloadavg())
    doc["ratios"] = ratios(doc["results"], cfg)
    return doc


def _prepare_local(cfg: RemoteConfig, doc: dict, bar) -> tuple[list[str], list[str], list[list[int]]]:
    """The local videos (generated or cached), indexed; their bucket URLs; each one's frame pts."""
    from ..probe import probe

    ds = cfg.dataset
    key = ds.key()
    t0 = time.perf_counter()
    paths = prepare_dataset(ds, data_dir=cfg.data_dir, seed=cfg.seed, progress=bar.set_description,
                            workers=cfg.num_workers)  # fmt: skip
    prepare_s = time.perf_counter() - t0
    sizes = [file_size(p) or 0 for p in paths]
    bar.set_description(f"ringload index ({len(paths)} local files)")
    index_s = warm_index(paths, cfg.num_workers)
    pts = [probe(p).pts.tolist() for p in paths]
    urls = [f"s3://{BUCKET}/videos/{pathlib.Path(p).name}" for p in paths]
    doc["datasets"][key] = {
        **dataclasses.asdict(ds),
        "files": len(paths),
        "bytes_per_video": sizes[0] if sizes else None,
        "bytes_total": sum(sizes),
        "frames_total": sum(len(p) for p in pts),
        "prepare_s": prepare_s,
        "ringload_index_s": index_s,
        "root": str(pathlib.Path(paths[0]).parent.parent),
        "bucket_prefix": f"s3://{BUCKET}/videos/",
    }
    return paths, urls, pts


def _upload(s3, paths: list[str], urls: list[str], doc: dict, bar) -> None:
    t0 = time.perf_counter()
    s3.make_bucket(BUCKET)
    for i, (path, url) in enumerate(zip(paths, urls)):
        if i % 20 == 0:
            bar.set_description(f"uploading {i}/{len(paths)} videos to the local bucket")
        s3.upload(os.path.realpath(path), url)
    doc["s3"]["upload_s"] = time.perf_counter() - t0


def _index_bucket(s3, urls: list[str], cfg: RemoteConfig, doc: dict, bar) -> None:
    """Index the objects once (straight from the server, no proxy) so that no contender's
    start is charged with it; the entries are cached on disk by URL, size and ETag."""
    from .. import _remote

    bar.set_description(f"ringload index ({len(urls)} objects)")
    with _remote.using(_remote.Storage(s3.storage_options())):
        index_s = warm_index(urls, cfg.num_workers)
    doc["s3"]["ringload_index_s"] = index_s
    if index_s is None:
        raise ConfigError("indexing the bucket's objects failed; see the log")


def _specs(cfg: RemoteConfig, names, paths, urls, pts, options: dict[str, dict]) -> list[dict]:
    base = {
        "batch_size": cfg.batch_size,
        "size": cfg.size,
        "workers": cfg.num_workers,
        "clip_len": 1,
        "frame_stride": 1,
        "warmup_batches": cfg.warmup_batches,
        "repeats": cfg.repeats,
        "window_s": cfg.window_s,
        "min_window_batches": 2,
        "batches": cfg.batches,
        "budget_s": cfg.budget_s,
        "ring_bytes": cfg.ring_bytes,
        "remote_cache_bytes": cfg.remote_cache_bytes,
        "dataset_key": cfg.dataset.key(),
    }
    specs = []
    for name in names:
        mode, place = name.split(" ", 1)
        spec = {**base, "name": name, "mode": mode, "place": place,
                "kind": "fsspec-dataset" if mode == PEER else mode,
                "paths": paths if place == "local" else urls}  # fmt: skip
        if place != "local":
            spec["storage_options"] = options[place]
        if mode == "strict" and cfg.batches is None and cfg.strict_batches:
            spec.update(batches=cfg.strict_batches, warmup_batches=1, drain=False)
        if mode == PEER:
            spec["frame_pts"] = pts
        specs.append(spec)
    return specs


class _WindowProbe:
    """What the parent measures around a contender's timed windows: wall time, the S3
    server's CPU, this process's CPU (the proxies' and the server's log reader's threads)
    and the proxy's counters, summed over the windows."""

    def __init__(self, s3, proxy):
        self.s3, self.proxy = s3, proxy
        self.me = os.getpid()
        self.totals: dict[str, float] = {}
        self._start: dict[str, float] | None = None

    def _snapshot(self) -> dict[str, float]:
        snap = {"wall_s": time.perf_counter(), "s3_cpu_s": self.s3.cpu_seconds(),
                "harness_cpu_s": process_cpu_seconds(self.me) or 0.0}  # fmt: skip
        if self.proxy is not None:
            c = self.proxy.counters()
            snap["proxy_bytes_to_client"] = c["bytes_to_client"]
            snap["proxy_requests"] = c["requests"]
        return snap

    def on_window(self, msg: dict) -> None:
        if msg.get("edge") == "start":
            self._start = self._snapshot()
        elif msg.get("edge") == "end" and self._start is not None:
            end = self._snapshot()
            for k, v in end.items():
                self.totals[k] = self.totals.get(k, 0) + v - self._start[k]
            self._start = None


def _div(a, b):
    return a / b if a is not None and b else None


def _round_metrics(result: dict, probe: _WindowProbe, cores: int) -> dict:
    """One round's remote numbers, all over the timed windows (see the module docstring)."""
    t = probe.totals
    c = result.get("window_counters") or {}
    frames = c.get("frames") or result.get("images_measured") or 0
    out: dict[str, Any] = {"frames": frames, "window_wall_s": t.get("wall_s"), "cores": cores}
    loader = {k.removeprefix("remote_"): v for k, v in c.items() if k.startswith("remote_")}
    if loader:
        loader["tasks"] = c.get("tasks")
        out["loader"] = loader
    if "proxy_bytes_to_client" in t:
        out["proxy"] = {"bytes_to_client": t["proxy_bytes_to_client"], "requests": t["proxy_requests"]}
    wall = t.get("wall_s")
    out["s3_cpu_s"] = t.get("s3_cpu_s")
    out["harness_cpu_s"] = t.get("harness_cpu_s")
    out["s3_cpu_share"] = _div(t.get("s3_cpu_s"), wall * cores if wall else None)
    out["harness_cpu_share"] = _div(t.get("harness_cpu_s"), wall * cores if wall else None)
    out["s3_cpu_ms_per_frame"] = _div(1000 * t["s3_cpu_s"], frames) if "s3_cpu_s" in t else None
    gop = loader.get("gop_bytes")
    fetched = loader.get("bytes_fetched")
    proxy_bytes = (out.get("proxy") or {}).get("bytes_to_client")
    out.update(
        bytes_per_frame=_div(fetched, frames),
        proxy_bytes_per_frame=_div(proxy_bytes, frames),
        gop_bytes_per_frame=_div(gop, frames),
        fetched_over_gop=_div(fetched, gop),
        proxy_over_gop=_div(proxy_bytes, gop),
        requests_per_task=_div(loader.get("requests"), loader.get("tasks")),
        proxy_requests_per_task=_div((out.get("proxy") or {}).get("requests"), loader.get("tasks")),
        proxy_requests_per_frame=_div((out.get("proxy") or {}).get("requests"), frames),
        frames_per_task=_div(frames, loader.get("tasks")),
        cache_hit_share=_div(loader.get("cache_hits"), (loader.get("cache_hits") or 0) + (loader.get("cache_misses") or 0)),
    )
    # The same from the loader's construction to the end of its last window (warm-up and
    # start included; its stats() at the end of the run), for a check on the windows' numbers.
    st = result.get("loader_stats") or {}
    rem = st.get("remote") or {}
    if rem:
        out["since_start"] = {
            "frames": st.get("frames"), "tasks": st.get("tasks"),
            **{k: v for k, v in rem.items() if k != "cache_bytes"},
            "fetched_over_gop": _div(rem.get("bytes_fetched"), rem.get("gop_bytes")),
            "requests_per_task": _div(rem.get("requests"), st.get("tasks")),
            "bytes_per_frame": _div(rem.get("bytes_fetched"), st.get("frames")),
        }  # fmt: skip
    return out


#: Per-round remote numbers summarised over rounds (median, min-max) in each entry's ``remote``.
REMOTE_KEYS = (
    "bytes_per_frame", "proxy_bytes_per_frame", "gop_bytes_per_frame", "fetched_over_gop", "proxy_over_gop",
    "requests_per_task", "proxy_requests_per_task", "proxy_requests_per_frame", "frames_per_task",
    "cache_hit_share", "s3_cpu_share", "harness_cpu_share", "s3_cpu_ms_per_frame",
)  # fmt: skip


def _summarize_remote(entry: dict) -> None:
    ok = [r["remote"] for r in entry.get("rounds") or () if r.get("status") == "ok" and r.get("remote")]
    out = {}
    for k in REMOTE_KEYS:
        s = spread([m[k] for m in ok if m.get(k) is not None])
        if s:
            out[k] = s
    since = {}
    for k in ("fetched_over_gop", "requests_per_task", "bytes_per_frame"):
        s = spread([m["since_start"][k] for m in ok if (m.get("since_start") or {}).get(k) is not None])
        if s:
            since[k] = s
    if since:
        out["since_start"] = since
    entry["remote"] = out


# ------------------------------------------------------------------------------------ ratios


def _ips_by_round(entry: dict) -> dict[int, float]:
    return {r["round"]: r["images_per_s"] for r in entry.get("rounds") or ()
            if r.get("status") == "ok" and r.get("images_per_s")}  # fmt: skip


def ratios(results: list[dict], cfg: RemoteConfig) -> dict:
    """Within-round ratios: every contender over the same mode on local files (``x_local``)
    and every ringload contender over the per-sample Dataset in the same place
    (``x_per_sample``); the targets with their verdicts."""
    entries = {e["name"]: e for e in results if e.get("status") not in ("skipped", "pending")}
    ips = {n: _ips_by_round(e) for n, e in entries.items()}

    def ratio(num, den):
        if num not in ips or den not in ips:
            return None
        common = sorted(set(ips[num]) & set(ips[den]))
        return spread([ips[num][r] / ips[den][r] for r in common])

    out: dict[str, Any] = {"reference": "local", "contenders": {}, "targets": [], "notes": []}
    for name, e in entries.items():
        row = {}
        if e["place"] != "local":
            row["x_local"] = ratio(name, f"{e['mode']} local")
        if e["mode"] != PEER:
            row["x_per_sample"] = ratio(name, f"{PEER} {e['place']}")
        out["contenders"][name] = {k: v for k, v in row.items() if v}
    lat = cfg.places[2]
    for mode in SAMPLINGS:
        for place, need in (("bucket", X_LOCAL_NEED["bucket"]), (lat, X_LOCAL_NEED["latency"])):
            s = ratio(f"{mode} {place}", f"{mode} local")
            if s:
                out["targets"].append(_verdict(f"{mode} {place}", f"{mode} local", need, "images/s", s))
        for place in ("bucket", lat):
            e = entries.get(f"{mode} {place}")
            s = (e or {}).get("remote", {}).get("fetched_over_gop")
            if s:
                met = sum(v <= FETCH_OVER_GOP_MAX for v in s["rounds"])
                n = len(s["rounds"])
                out["targets"].append({
                    "target": f"{mode} {place}: bytes fetched <= {FETCH_OVER_GOP_MAX:g} x GOP bytes",
                    "numerator": f"{mode} {place}", "denominator": "gop_bytes", "need": FETCH_OVER_GOP_MAX,
                    "per": "bytes", **s, "rounds_met": met,
                    "verdict": "met" if met == n else ("missed" if met == 0 else "unclear"),
                })  # fmt: skip
    return out


# ------------------------------------------------------------------------------------- table

WIDTH = 100


def _fmt(v, digits=1, scale=1.0):
    return "-" if v is None else f"{v * scale:.{digits}f}"


def _med(s, digits=2, scale=1.0):
    return "-" if not s else _fmt(s["median"], digits, scale)


def _rng(s, digits=2):
    """``median min-max`` of a spread (one decimal from 10 up, as the harness's table)."""
    if not s:
        return "-"
    digits = digits if s["max"] < 10 else 1
    text = f"{s['median']:.{digits}f}"
    if len(s["rounds"]) > 1:
        text += f" {s['min']:.{digits}f}-{s['max']:.{digits}f}"
    return text


def _table(rows, right) -> list[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]

    def line(row):
        return "  ".join(str(c).rjust(widths[i]) if i in right else str(c).ljust(widths[i])
                         for i, c in enumerate(row)).rstrip()  # fmt: skip

    return [line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]


def format_table(doc: dict) -> str:
    """Two tables (throughput and CPU; bytes and requests), what the columns mean, the
    machine and the targets, each line at most ``WIDTH`` columns."""
    per = (doc.get("ratios") or {}).get("contenders") or {}
    head1 = ["contender", "img/s", "min-max", "x local", "x per-sample", "CPU ms", "S3 CPU", "proxy CPU"]
    head2 = ["contender", "KB/f", "proxy KB/f", "GOP KB/f", "fetch/GOP", "proxy/GOP", "req/task", "f/task"]
    rows1, rows2, notes = [head1], [head2], []
    for r in doc["results"]:
        name = r["name"]
        if r.get("status") not in ("ok", "failed") or not r.get("images_per_s"):
            rows1.append([name, r.get("status", "?")] + [""] * (len(head1) - 2))
            notes.append(f"{name}: {r.get('status')}: {r.get('note')}")
            continue
        rr, m = per.get(name, {}), r.get("remote") or {}
        lo, hi = r.get("images_per_s_range") or (None, None)
        cpu = r.get("cpu_s_per_image")
        rows1.append([
            name + (" (failed)" if r.get("status") == "failed" else ""), _fmt(r["images_per_s"]),
            f"{_fmt(lo, 0 if lo >= 100 else 1)}-{_fmt(hi, 0 if hi >= 100 else 1)}", _rng(rr.get("x_local")),
            _rng(rr.get("x_per_sample")),
            _fmt(cpu * 1000 if cpu else None), _med(m.get("s3_cpu_share"), 1, 100) + "%",
            _med(m.get("harness_cpu_share"), 1, 100) + "%",
        ])  # fmt: skip
        if r["place"] != "local":
            rows2.append([
                name, _med(m.get("bytes_per_frame"), 0, 1 / 1024), _med(m.get("proxy_bytes_per_frame"), 0, 1 / 1024),
                _med(m.get("gop_bytes_per_frame"), 0, 1 / 1024), _rng(m.get("fetched_over_gop")),
                _rng(m.get("proxy_over_gop")),
                # An item of the per-sample Dataset is its task: its requests as the proxy saw them.
                _med(m.get("requests_per_task") if r["mode"] != PEER else m.get("proxy_requests_per_frame"), 2),
                _med(m.get("frames_per_task"), 1) if r["mode"] != PEER else "1",
            ])  # fmt: skip
        if r.get("note") and r.get("status") == "failed":
            notes.append(f"{name}: {r['note']}")
    n = doc.get("rounds") or 1
    lines = _table(rows1, {1, 5, 6, 7}) + [""] + _table(rows2, {1, 2, 3, 6, 7}) + [""]
    s = doc.get("system", {})
    ds = next(iter((doc.get("datasets") or {}).values()), {})
    text = [
        (f"{n} round{'s' if n != 1 else ''}, contenders interleaved, each in a fresh process tree; img/s: median "
         "over rounds (min-max). x local: img/s over the same mode on local files in the same round; x per-sample: "
         "over the per-sample fsspec Dataset in the same place; median and min-max over rounds. CPU ms: CPU per "
         "image of the contender's processes. S3 CPU, proxy CPU: the S3 server's and the harness process's "
         "(proxies, log reader) CPU seconds over the window's wall seconds x cores."),
        ("Over the timed windows, per delivered frame: KB/f: bytes the decoders fetched (stats()['remote']); "
         "proxy KB/f: bytes the proxy sent the client (HTTP heads included); GOP KB/f: bytes of the GOP runs the "
         "tasks asked for (gop_bytes); fetch/GOP, proxy/GOP: their ratios; req/task: requests (HEADs included) "
         "per decoder task (per-sample: per item, as the proxy counted them); f/task: delivered frames per task."),
        (f"data: {ds.get('files')} videos {ds.get('width')}x{ds.get('height')} {ds.get('codec')}, "
         f"{ds.get('seconds')} s at {ds.get('fps')} fps, GOP {ds.get('gop')}, {ds.get('bframes')} B-frames, "
         f"{(ds.get('bytes_total') or 0) / 2**20:.0f} MiB in all."),
        (f"machine: {s.get('cpu_model')}, {s.get('cpu_count')} cores; 1-minute load average "
         f"{_fmt((s.get('loadavg_start') or [None])[0], 2)} at the start, "
         f"{_fmt((s.get('loadavg_end') or [None])[0], 2)} at the end."),
    ]
    for t in (doc.get("ratios") or {}).get("targets") or ():
        k, m = t["rounds_met"], len(t["rounds"])
        every = "in every round" if m > 1 else "in its one round"
        verdict = {"met": f"met {every}", "missed": f"MISSED {every}",
                   "unclear": f"UNCLEAR, met in {k} of {m} rounds"}[t["verdict"]]  # fmt: skip
        spread_ = f"median {t['median']:.2f}" + (f", {t['min']:.2f} to {t['max']:.2f}" if m > 1 else "")
        text.append(f"target {t['target']}: {verdict} ({spread_})")
    text += [f"note: {x}" for x in notes]
    for item in text:
        lines += textwrap.wrap(item, WIDTH, subsequent_indent="  ", break_on_hyphens=False) or [""]
    return "\n".join(lines)
