"""Benchmark ringload against the exercise's starter loader, plain-PyAV decoding in file order
(the ceiling) and peer libraries (torchcodec, decord, SPDL, from the interpreter that
--peer-python names; bash bench/peers_env.sh builds it), on the same files, in interleaved
rounds (every contender once per round, each time in a fresh process tree), and write a
table with each ratio's median and min-max over the rounds, a JSON result file
(docs/benchmarks.md, "The result file") and PNG plots.

Without SOURCE it generates the default dataset: one camera-like 1080p30 H.264 video
(GOP 30, 2 B-frames, 20 s) visible under 200 file names (links), batch 128, output 224x224.
Sweeps: --sweep chunks (bounded over chunk_len and max_per_chunk), --sweep gop
(GOP 10/30/120/300), --sweep resolution (480p, 1080p); sweeps take several minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import pathlib
import sys

from .errors import ConfigError

HELP = "measure loaders side by side: starter baseline, ceiling, ringload modes, peers"


def _resolution(text: str) -> tuple[int, int]:
    presets = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080), "2160p": (3840, 2160)}
    if text in presets:
        return presets[text]
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use WxH (e.g. 1920x1080) or 480p/720p/1080p") from None


def _bytes(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in "KMG" else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: bytes, e.g. 4G or 536870912") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of integers") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", metavar="SOURCE", help="existing videos: directory, glob or list file")
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true",
                        help="480p data, 3 rounds of one 2 s window (docs/benchmarks.md gives measured times)")
    preset.add_argument("--kinetics", action="store_true",
                        help="Kinetics-shaped workload: 2000 names of 10 s 340p videos, one random 16-frame clip per "
                             "video per epoch, batch 16, against a per-clip Dataset (starter)")
    preset.add_argument("--remote", action="store_true",
                        help="the same videos from local files and from a local S3 bucket (moto's server on 127.0.0.1) "
                             "behind a counting proxy, with and without added latency, bounded and strict, against a "
                             "per-sample fsspec Dataset; bytes and requests per frame, the server's CPU share "
                             "(docs/benchmarks.md, 'Remote storage')")
    preset.add_argument("--smoke", action="store_true",
                        help="tiny data, 2 rounds of 2 batches: checks that every contender runs; not for numbers")
    p.add_argument("--contenders", default=None, help="comma-separated subset (default: all that can run)")
    p.add_argument("--peer-python", default=None, metavar="PATH",
                   help="interpreter the peers (torchcodec, decord, SPDL) run in; bash bench/peers_env.sh "
                        "builds it (without it they are reported as skipped)")
    g = p.add_argument_group("generated dataset")
    g.add_argument("--data-dir", default=None, help="cache folder for generated videos (default: /tmp/ringload-bench)")
    g.add_argument("--videos", type=int, default=None, help="distinct videos (default 1)")
    g.add_argument("--names", type=int, default=None, help="file names the videos appear under (default 200)")
    g.add_argument("--resolution", type=_resolution, default=None, help="WxH or 480p/720p/1080p (default 1080p)")
    g.add_argument("--fps", type=int, default=None, help="frame rate (default 30)")
    g.add_argument("--gop", type=int, default=None, help="keyframe interval in frames (default 30)")
    g.add_argument("--bframes", type=int, default=None, help="B-frames between references (default 2)")
    g.add_argument("--codec", choices=("h264", "hevc", "vp9", "av1"), default=None)
    g.add_argument("--seconds", type=float, default=None, help="duration of each video (default 20)")
    m = p.add_argument_group("measurement")
    m.add_argument("--batch-size", type=int, default=None, help="default 128 (16 with --smoke)")
    m.add_argument("--size", type=int, default=224, help="output side in pixels")
    m.add_argument("--workers", type=int, default=0, help="decoder processes per contender (default: cores)")
    m.add_argument("--clip-len", type=int, default=None, help="frames per sample (>1: clips; default 1)")
    m.add_argument("--frame-stride", type=int, default=None)
    m.add_argument("--clips-per-video", type=int, default=None,
                   help="ringload contenders: this many clips per video per epoch (needs --clip-len >= 2)")
    m.add_argument("--rounds", type=int, default=None,
                   help="rounds; each runs every contender once, in the same order (default 3)")
    m.add_argument("--warmup", type=int, default=None, help="warm-up batches, the first included")
    m.add_argument("--repeats", type=int, default=None, help="timed windows per contender per round (default 1)")
    m.add_argument("--window-s", type=float, default=None, help="minimum seconds per timed window")
    m.add_argument("--batches", type=int, default=None, help="fixed batches per timed window")
    m.add_argument("--budget-s", type=float, default=None,
                   help="time limit per contender per round, from its first batch (warm-up included)")
    m.add_argument("--chunk-len", type=_ints, default=(), help="bounded chunk_len values to sweep, e.g. 30,60")
    m.add_argument("--max-per-chunk", type=_ints, default=(), help="bounded max_per_chunk values, e.g. 1,4,16")
    m.add_argument("--sweep", choices=("none", "chunks", "gop", "resolution"), default=None,
                   help="chunks (default without --quick), gop, resolution, or none")
    m.add_argument("--rho", type=float, default=0.5, help="within-chunk correlation for the design-effect bound")
    m.add_argument("--ring-bytes", type=_bytes, default=None,
                   help="ring_bytes of the ringload contenders, e.g. 4G (default: the loader's, 1G)")
    m.add_argument("--decoder-threads", type=_ints, default=(),
                   help="ringload contenders: also run each once per FFmpeg thread count per decoder, e.g. 0,2 "
                        "(0: FFmpeg's auto), beside the loader's default (the cores left per decoder)")
    m.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("remote storage (--remote)")
    r.add_argument("--remote-videos", type=int, default=None,
                   help="distinct videos generated and uploaded to the bucket (default 200, 1080p, 3 s)")
    r.add_argument("--remote-latency-ms", type=float, default=None,
                   help="latency the second proxy adds to every request (default 20)")
    r.add_argument("--strict-batches", type=int, default=None,
                   help="strict contenders: one timed window of this many batches from their first batch "
                        "(default 240: a whole look-ahead sweep; 0: time-based windows; --batches overrides)")
    r.add_argument("--remote-cache-bytes", type=_bytes, default=None,
                   help="the ringload contenders' remote_cache_bytes per decoder (default: the loader's, 256M)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="JSON result file (default bench/results/<time>.json or ./)")
    o.add_argument("--plots", default=None, help="folder for PNG plots (default: next to the JSON)")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--no-progress", action="store_true")


def config_from_args(args) -> "BenchConfig":  # noqa: F821
    from .bench.config import BenchConfig, kinetics_config, quick_config, smoke_config

    ds_over = {}
    if args.resolution:
        ds_over["width"], ds_over["height"] = args.resolution
    for name in ("fps", "gop", "bframes", "codec", "seconds"):
        if getattr(args, name) is not None:
            ds_over[name] = getattr(args, name)
    if args.videos is not None:
        ds_over["distinct"] = args.videos
    if args.names is not None:
        ds_over["names"] = args.names
    over = dict(
        source=args.source,
        data_dir=args.data_dir,
        size=args.size,
        workers=args.workers,
        chunk_lens=args.chunk_len,
        max_per_chunks=args.max_per_chunk,
        rho=args.rho,
        ring_bytes=args.ring_bytes,
        decoder_threads=args.decoder_threads,
        seed=args.seed,
        peer_python=args.peer_python,
    )
    for arg, field in (("warmup", "warmup_batches"), ("repeats", "repeats"), ("window_s", "window_s"),
                       ("budget_s", "budget_s"), ("rounds", "rounds"), ("batch_size", "batch_size"),
                       ("batches", "batches"), ("clip_len", "clip_len"), ("frame_stride", "frame_stride"),
                       ("clips_per_video", "clips_per_video")):
        if getattr(args, arg) is not None:
            over[field] = getattr(args, arg)
    if args.contenders:
        over["contenders"] = tuple(c.strip() for c in args.contenders.split(",") if c.strip())
    over["sweep"] = args.sweep or ("none" if args.quick or args.smoke or args.kinetics else "chunks")
    base = (quick_config() if args.quick else smoke_config() if args.smoke else kinetics_config() if args.kinetics
            else BenchConfig())
    over["dataset"] = dataclasses.replace(base.dataset, **ds_over)
    return dataclasses.replace(base, **over)


def remote_config_from_args(args):
    """The ``--remote`` run's ``bench.remote.RemoteConfig``: its defaults and the options given."""
    from .bench.remote import RemoteConfig

    if args.source:
        raise ConfigError("--remote generates and uploads its own videos; drop SOURCE")
    if args.peer_python or args.sweep not in (None, "none") or args.chunk_len or args.max_per_chunk:
        raise ConfigError("--remote runs its own contenders: drop --peer-python, --sweep, --chunk-len, --max-per-chunk")
    if any(getattr(args, a) is not None for a in ("clip_len", "frame_stride", "clips_per_video")):
        raise ConfigError("--remote samples frames: drop --clip-len, --frame-stride, --clips-per-video")
    base = RemoteConfig()
    ds_over = {}
    if args.resolution:
        ds_over["width"], ds_over["height"] = args.resolution
    for name in ("fps", "gop", "bframes", "codec", "seconds"):
        if getattr(args, name) is not None:
            ds_over[name] = getattr(args, name)
    if args.videos is not None or args.names is not None:
        raise ConfigError("--remote: use --remote-videos N (distinct videos, one name each)")
    if args.remote_videos is not None:
        ds_over["distinct"] = ds_over["names"] = args.remote_videos
    over = {"dataset": dataclasses.replace(base.dataset, **ds_over), "data_dir": args.data_dir, "size": args.size,
            "workers": args.workers, "seed": args.seed, "ring_bytes": args.ring_bytes,
            "remote_cache_bytes": args.remote_cache_bytes}  # fmt: skip
    if args.remote_latency_ms is not None:
        over["latency_s"] = args.remote_latency_ms / 1000.0
    if args.strict_batches is not None:
        over["strict_batches"] = args.strict_batches or None
    for arg, field in (("warmup", "warmup_batches"), ("repeats", "repeats"), ("window_s", "window_s"),
                       ("budget_s", "budget_s"), ("rounds", "rounds"), ("batch_size", "batch_size"),
                       ("batches", "batches")):  # fmt: skip
        if getattr(args, arg) is not None:
            over[field] = getattr(args, arg)
    if args.contenders:
        over["contenders"] = tuple(c.strip() for c in args.contenders.split(",") if c.strip())
    return dataclasses.replace(base, **over)


def _default_out(prefix: str = "bench") -> pathlib.Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results = pathlib.Path("bench") / "results"
    folder = results if results.is_dir() else pathlib.Path(".")
    return folder / f"{prefix}-{stamp}.json"


def run_remote(args) -> int:
    from . import bench
    from .bench import remote

    try:
        cfg = remote_config_from_args(args)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    out = pathlib.Path(args.out) if args.out else _default_out("remote")
    cli_args = {k: v for k, v in vars(args).items() if not k.startswith("_")}

    def checkpoint(doc):
        doc["system"]["argv"] = sys.argv
        doc["cli_args"] = bench.jsonable(cli_args)
        doc["complete"] = False
        bench.write_json(doc, out)

    doc = remote.run(cfg, progress=not args.no_progress, checkpoint=checkpoint)
    checkpoint(doc)
    doc["complete"] = True
    bench.write_json(doc, out)
    sys.stdout.write(remote.format_table(doc) + "\n")
    sys.stdout.write(f"results: {out}\n")
    failed = [r["name"] for r in doc["results"] if r.get("status") == "failed"]
    return 1 if failed else 0


def run(args) -> int:
    from . import bench

    if args.remote:
        return run_remote(args)
    try:
        cfg = config_from_args(args)
    except TypeError as exc:  # a dataclass field error is a usage error
        raise ConfigError(str(exc)) from None
    out = pathlib.Path(args.out) if args.out else _default_out()
    cli_args = {k: v for k, v in vars(args).items() if not k.startswith("_")}

    def checkpoint(doc):
        doc["system"]["argv"] = sys.argv
        doc["cli_args"] = bench.jsonable(cli_args)
        doc["preset"] = "quick" if args.quick else "smoke" if args.smoke else "kinetics" if args.kinetics else None
        doc["complete"] = False
        bench.write_json(doc, out)

    doc = bench.run(cfg, progress=not args.no_progress, checkpoint=checkpoint)
    checkpoint(doc)
    doc["complete"] = True
    bench.write_json(doc, out)
    sys.stdout.write(bench.format_table(doc) + "\n")
    sys.stdout.write(f"results: {out}\n")
    if not args.no_plots:
        for png in bench.make_plots(out, args.plots or out.parent):
            sys.stdout.write(f"plot: {png}\n")
    failed = [r["name"] for r in doc["results"] if r.get("status") == "failed"]
    return 1 if failed else 0
