"""`ringload bench`: a tiny end-to-end run in interleaved rounds (schema, sanity of the numbers,
ratios taken within a round), run planning, summaries over rounds, ratios and targets, the
table's width, the peers' batches, process-tree accounting."""

from __future__ import annotations

import json
import os

import pytest

from ringload import bench, cli
from ringload.bench import report, rounds
from ringload.errors import ConfigError

SMOKE = ["--resolution", "320x240", "--seconds", "3", "--names", "12", "--batch-size", "16", "--warmup", "1",
         "--rounds", "2", "--repeats", "1", "--batches", "2", "--budget-s", "40", "--sweep", "none",
         "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_smoke_run_writes_schema(tmp_path, capsys):
    out = tmp_path / "run.json"
    contenders = ["starter", "ceiling", "sequential", "strict", "bounded", "decord"]
    rc = cli.main(
        ["bench", "--data-dir", str(tmp_path / "data"), *SMOKE, "--contenders", ",".join(contenders),
         "--out", str(out), "--plots", str(tmp_path / "img")]
    )  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == bench.SCHEMA == "ringload-bench/2"
    assert doc["complete"] is True
    for key in ("cpu_model", "cpu_count", "ram_bytes", "python", "torch_version", "av_version", "numpy_version",
                "git_commit", "loadavg_start", "loadavg_end"):
        assert key in doc["system"], key
    assert doc["system"]["cpu_count"] >= 1 and doc["system"]["ram_bytes"] > 0
    assert doc["config"]["batch_size"] == 16 and doc["config"]["rounds"] == 2 and doc["rounds"] == 2
    (ds,) = doc["datasets"].values()
    assert ds["files"] == 12 and ds["bytes_per_video"] > 10_000 and ds["ringload_index_s"] > 0
    by_name = {r["name"]: r for r in doc["results"]}
    assert list(by_name) == contenders == doc["order"]
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    # Everything but the peer (not installed here) runs, in both rounds.
    assert {r["name"] for r in ok} >= {"starter", "ceiling", "sequential", "strict", "bounded"}
    for r in ok:
        assert [x["round"] for x in r["rounds"]] == [0, 1] and r["rounds_ok"] == 2
        for x in r["rounds"]:
            assert x["status"] == "ok" and len(x["images_per_s_windows"]) == 1
            assert x["images_measured"] == 2 * 16 and x["images_per_s"] > 0 and x["cpu_s"] >= 0
            assert len(x["wait_ms_batches"]) == 2 and x["loadavg_1m_before"] >= 0
        assert r["images_per_s_rounds"] == [x["images_per_s"] for x in r["rounds"]]
        lo, hi = r["images_per_s_range"]
        assert lo <= r["images_per_s"] <= hi and r["images_per_s"] == pytest.approx((lo + hi) / 2)
        assert r["images_measured"] == 2 * 2 * 16 and r["batches_measured"] == 4
        # Two tiny batches served from a full ring can take less than the 10 ms CPU clock tick:
        # then nothing is reported, never a zero.
        if sum(x["cpu_s"] for x in r["rounds"]) > 0:
            assert r["cpu_s_per_image"] > 0
        else:
            assert r["cpu_s_per_image"] is None
        assert 0 <= r["wait_ms"]["p50"] <= r["wait_ms"]["p95"] <= r["wait_ms"]["p99"]
        assert r["first_batch_s"] > 0
        assert r["peak_rss_bytes"] > 50 * 2**20 and r["peak_pss_bytes"] > 0
        assert r["output"]["shape"] == [16, 3, 224, 224]
    assert by_name["starter"]["cpu_s_per_image"] > 0  # it decodes while it is timed
    assert by_name["ceiling"]["output"]["dtype"] == "uint8"
    assert by_name["starter"]["output"]["dtype"] == "float32"
    assert by_name["ceiling"]["shm_bytes"] > 0
    # Interleaved: every contender once per round, round after round, in the same order.
    started = sorted((x["started_s"], r["name"], x["round"]) for r in doc["results"] for x in r["rounds"]
                     if "started_s" in x)  # fmt: skip
    ran = [n for n in contenders if n != "decord"]  # a peer without --peer-python starts no process
    assert [(n, k) for _, n, k in started] == [(n, 0) for n in ran] + [(n, 1) for n in ran]
    # A contender that cannot run here is reported once, not silently dropped.
    assert by_name["decord"]["status"] == "skipped" and "--peer-python" in by_name["decord"]["note"]
    assert len(by_name["decord"]["rounds"]) == 1
    assert by_name["bounded"]["design_effect_bound"] >= 1 and by_name["bounded"]["max_per_chunk"] >= 1
    # Ratios are taken within each round, from that round's images/s.
    rat = doc["ratios"]
    assert rat["reference"] == "sequential"
    assert rat["contenders"]["starter"]["x_starter"]["rounds"] == [1.0, 1.0]
    for name in ("bounded", "strict", "ceiling"):
        s = rat["contenders"][name]["x_reference"]
        want = [a["images_per_s"] / b["images_per_s"] for a, b in zip(by_name[name]["rounds"],
                                                                       by_name["sequential"]["rounds"])]
        assert s["rounds"] == pytest.approx(want)
        assert s["min"] <= s["median"] <= s["max"]
    assert {t["target"] for t in rat["targets"]} >= {"bounded >= 0.85 x sequential", "strict >= 1.5 x starter"}
    for t in rat["targets"]:
        assert t["verdict"] in ("met", "missed", "unclear") and 0 <= t["rounds_met"] <= 2
    table = capsys.readouterr().out
    assert "starter" in table and "x sequential" in table and str(out) in table
    assert max(len(line) for line in table.splitlines() if not line.startswith(("results:", "plot:"))) <= 100
    for png in ("bench_throughput.png", "bench_ratios.png"):
        assert (tmp_path / "img" / png).stat().st_size > 1000
    # Generated data is reused, not regenerated, by the next run.
    video = next((tmp_path / "data").rglob("cam_0000.mp4"))
    mtime = video.stat().st_mtime_ns
    spec = bench.DatasetSpec(width=320, height=240, seconds=3, names=12)
    paths = bench.prepare_dataset(spec, data_dir=tmp_path / "data")
    assert video.stat().st_mtime_ns == mtime
    assert len(paths) == 12 and all(os.path.samefile(p, video) for p in paths)


def test_plan_runs_sweeps():
    cfg = bench.BenchConfig(contenders=("starter", "strict", "bounded"), sweep="gop")
    runs = bench.plan_runs(cfg)
    assert [r["dataset"].gop for r in runs] == [10, 10, 30, 30, 120, 120, 300, 300]
    assert {r["kind"] for r in runs} == {"strict", "bounded"}
    res = bench.plan_runs(bench.BenchConfig(contenders=("strict",), sweep="resolution"))
    assert [r["dataset"].height for r in res] == [480, 1080]
    chunks = bench.plan_runs(bench.BenchConfig(contenders=("bounded",), sweep="chunks", max_per_chunks=(1, 8),
                                               chunk_lens=(30,)))
    assert [(r.get("chunk_len"), r.get("max_per_chunk")) for r in chunks] == [(None, None), (None, 1), (None, 8),
                                                                             (30, None)]
    threads = bench.plan_runs(bench.BenchConfig(contenders=("starter", "sequential"), decoder_threads=(0, 2)))
    assert [(r["name"], r.get("decoder_threads")) for r in threads] == [
        ("starter", None), ("sequential", None), ("sequential decoder_threads=0", 0), ("sequential decoder_threads=2", 2)]
    with pytest.raises(ConfigError, match="decoder-threads"):
        bench.BenchConfig(decoder_threads=(-1,))


def test_config_validation():
    with pytest.raises(ConfigError, match="contenders"):
        bench.BenchConfig(contenders=("nope",))
    with pytest.raises(ConfigError, match="even"):
        bench.DatasetSpec(width=321)
    with pytest.raises(ConfigError, match="rho"):
        bench.BenchConfig(rho=2.0)
    with pytest.raises(ConfigError, match="rounds"):
        bench.BenchConfig(rounds=0)


def _entry(name, per_round, cpu=None, kind=None):
    """A contender entry as the runner builds it, from images/s (None: failed) per round."""
    rs = []
    for k, v in enumerate(per_round):
        if v is None:
            rs.append({"round": k, "status": "failed", "note": "timed out after 60 s"})
            continue
        c = cpu[k] if cpu else 0.01
        rs.append({"round": k, "status": "ok", "images_per_s": v, "images_measured": 100, "cpu_s": 100 * c,
                   "cpu_s_per_image": c, "wait_ms_batches": [1.0, 2.0], "first_batch_s": 1.0 + k,
                   "peak_rss_bytes": 100 + k, "peak_pss_bytes": 50 + k})  # fmt: skip
    return rounds.summarize({"name": name, "kind": kind or name.split()[0], "rounds": rs, "rho": 0.5})


def test_ratios_are_taken_within_a_round():
    # The machine's load halves every contender's speed in round 2 and doubles it in round 3:
    # taken within a round the ratios do not move; a cross-round comparison would swing 4x.
    load = (1.0, 0.5, 2.0)
    results = [
        _entry("starter", [10.0 * f for f in load]),
        _entry("sequential", [200.0 * f for f in load]),
        _entry("bounded", [180.0 * f for f in load]),
        _entry("strict", [12.0 * f for f in load]),
    ]
    r = bench.ratios(results)
    assert r["reference"] == "sequential"
    b = r["contenders"]["bounded"]
    assert b["x_starter"]["rounds"] == pytest.approx([18.0] * 3)
    assert b["x_reference"]["median"] == pytest.approx(0.9)
    assert b["x_reference"]["min"] == pytest.approx(0.9) == b["x_reference"]["max"]
    targets = {t["target"]: t for t in r["targets"]}
    assert targets["bounded >= 0.85 x sequential"]["verdict"] == "met"
    assert targets["bounded >= 10 x starter"]["rounds_met"] == 3
    assert targets["strict >= 1.5 x starter"]["verdict"] == "missed"
    assert "strict >= 1 x torchcodec-exact" not in targets  # the peer did not run
    assert not r["notes"]


def test_targets_say_when_rounds_disagree_and_a_reference_was_exceeded():
    results = [
        _entry("starter", [10.0, 10.0, 10.0], cpu=[0.1, 0.1, 0.1]),
        _entry("sequential", [200.0, 150.0, 200.0], cpu=[0.004] * 3),
        _entry("bounded", [160.0, 170.0, 180.0], cpu=[0.005] * 3),
    ]
    r = bench.ratios(results)
    t = {t["target"]: t for t in r["targets"]}["bounded >= 0.85 x sequential"]
    assert t["rounds"] == pytest.approx([0.8, 170 / 150, 0.9])
    assert (t["rounds_met"], t["verdict"]) == (2, "unclear")
    assert t["median"] == pytest.approx(0.9) and t["max"] == pytest.approx(170 / 150)
    cpu_t = {t["target"]: t for t in r["targets"]}["bounded >= 0.85 x sequential per CPU-second"]
    assert cpu_t["median"] == pytest.approx(0.8) and cpu_t["verdict"] == "missed"
    (note,) = r["notes"]
    assert "bounded read faster than sequential in 1 of 3 rounds (up to 1.13x)" in note and "not a bound" in note
    text = report.format_table({"results": results, "ratios": r, "rounds": 3, "system": {}})
    assert "UNCLEAR" in text and "met in 2 of 3 rounds" in text and "not a bound" in text


def test_summarize_over_rounds():
    e = _entry("bounded", [100.0, None, 300.0])
    assert e["status"] == "failed" and e["rounds_ok"] == 2
    assert e["note"] == "round 2: timed out after 60 s"
    assert e["images_per_s"] == 200.0 and e["images_per_s_range"] == [100.0, 300.0]
    assert e["images_measured"] == 200 and e["cpu_s_per_image"] == pytest.approx(0.01)
    assert e["first_batch_s"] == 2.0 and e["peak_rss_bytes"] == 102 and e["batches_measured"] == 4
    # Rounds where both ran still give ratios; the failed round is left out.
    r = bench.ratios([_entry("sequential", [200.0, 200.0, 200.0]), e])
    assert r["contenders"]["bounded"]["x_reference"]["rounds"] == [0.5, 1.5]
    skipped = rounds.summarize({"name": "decord", "rounds": [{"status": "skipped", "note": "not installed"}]})
    assert skipped["status"] == "skipped" and skipped["note"] == "not installed"
    assert bench.ratios([skipped])["contenders"] == {}


def test_table_fits_100_columns():
    names = ["starter", "ceiling", "sequential", "strict", "bounded", "bounded chunk_len=120 max_per_chunk=16",
             "bounded [gop300]"]  # fmt: skip
    results = [_entry(n, [12345.6 * (i + 1), 23456.7, 9999.9], cpu=[0.17, 0.2, 0.3]) for i, n in enumerate(names)]
    results.append(rounds.summarize({"name": "torchcodec-approx", "rounds": [
        {"status": "skipped", "note": "torchcodec is not installed (ModuleNotFoundError); pip install torchcodec"}]}))
    doc = {"results": results, "ratios": bench.ratios(results), "rounds": 3,
           "system": {"cpu_model": "Intel(R) Xeon(R) Platinum 8480+ with a long model name", "cpu_count": 224,
                      "ram_bytes": 2**41, "loadavg_start": [12.5], "loadavg_end": [3.25]}}  # fmt: skip
    text = report.format_table(doc)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100, text
    head = lines[0].split()
    assert head[:2] == ["contender", "img/s"] and "ceil" not in lines[0] and "/" not in lines[0].replace("img/s", "")
    assert any(line.startswith("bounded c=120 m=16") for line in lines)
    assert "c = chunk_len, m = max_per_chunk." in text


def _fake_peer(read_shape=None):
    torch = pytest.importorskip("torch")
    from ringload.bench.peers import PeerBatches

    class Fake(PeerBatches):
        library = "fake"

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.calls, self.opens = [], []

        def _open(self, path):
            self.opens.append(path)
            return path

        def _read(self, handle, idx):
            self.calls.append((handle, list(idx)))
            return torch.full((len(idx), 3, self.size, self.size), 7, dtype=torch.uint8)

    return Fake


def test_peer_batches_sample_uniformly_one_read_per_video():
    Fake = _fake_peer()
    paths = [f"v{i}" for i in range(20)]
    lengths = [10 + i for i in range(20)]
    ds = Fake(paths, lengths, [[64, 48]] * 20, batch_size=64, size=16, seed=0)
    it = iter(ds)
    batches = [next(it) for _ in range(30)]
    assert all(b.shape == (64, 3, 16, 16) and b.dtype.is_floating_point is False and (b == 7).all() for b in batches)
    per_batch = len(ds.calls) / 30
    # One read per video per batch: as many reads as distinct videos drawn, never more.
    assert sum(len(i) for _, i in ds.calls) == 30 * 64 and per_batch <= 20
    assert all(0 <= f < lengths[paths.index(v)] for v, idx in ds.calls for f in idx)
    # Uniform over all frames: a video's share of draws follows its length (10 to 29 frames).
    counts = {v: 0 for v in paths}
    for v, idx in ds.calls:
        counts[v] += len(idx)
    assert counts["v19"] > 2 * counts["v0"] * 0.7
    # At most CACHE_FILES open per worker: 20 files drawn over 30 batches must be reopened.
    from ringload.bench.peers import CACHE_FILES

    assert CACHE_FILES < 20 and len(ds.opens) > 20


def test_peer_batches_clips_cover_clip_len_frames_at_stride():
    Fake = _fake_peer()
    ds = Fake(["a", "b"], [12, 5], [[64, 48]] * 2, batch_size=8, size=16, seed=1, clip_len=3, frame_stride=2)
    batch = next(iter(ds))
    assert batch.shape == (8, 3, 3, 16, 16)
    # A clip spans (3 - 1) * 2 + 1 = 5 frames: every frame read lies in its video, and "b"
    # (5 frames) has exactly one clip start.
    for v, idx in ds.calls:
        n = {"a": 12, "b": 5}[v]
        assert all(0 <= f < n for f in idx)
        starts = idx[::3]
        assert idx == [s + 2 * t for s in starts for t in range(3)]
        if v == "b":
            assert set(starts) == {0}
    with pytest.raises(ValueError, match="clip"):
        Fake(["a"], [4], [[64, 48]], batch_size=8, size=16, seed=0, clip_len=3, frame_stride=2)


def test_peer_crop_box_is_ringloads_box_on_wide_video():
    np = pytest.importorskip("numpy")
    from ringload._samples import random_resized_boxes
    from ringload.bench.peers import crop_box

    u = np.random.default_rng(0).random((50, 40))
    for w, h in ((1920, 1080), (854, 480), (320, 180), (480, 854)):
        boxes = random_resized_boxes([w] * 50, [h] * 50, u, (0.9, 1.0), (3 / 4, 4 / 3))
        assert {tuple(b) for b in boxes.tolist()} == {crop_box(w, h)}, (w, h)
    assert crop_box(1920, 1080) == (240, 0, 1440, 1080)
    assert crop_box(480, 854) == (0, 107, 480, 640)  # portrait: the height is clamped instead


def test_peer_child_loads_without_ringload(tmp_path):
    """The peer interpreter has no PyAV (and its own numpy and torch): peer_child.py must import the
    harness modules it needs without ringload/__init__.py (which imports PyAV)."""
    import subprocess
    import sys

    from ringload.bench.peers import CHILD_SCRIPT

    code = (
        "import runpy, sys; sys.argv = ['peer_child.py']; g = runpy.run_path(%r, run_name='peer');"
        "m = g['load']('measure'); p = g['load']('peers');"
        "assert m.measure and p.FACTORIES.keys() == {'torchcodec-exact', 'torchcodec-approx', 'decord', 'spdl'};"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('ringload', 'av', 'PIL'));"
        "print('loaded-ok', bad)"
    ) % CHILD_SCRIPT
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "loaded-ok []" in out.stdout


def test_peers_skipped_with_the_command_that_enables_them(tmp_path, capsys):
    rc = cli.main(["bench", "--data-dir", str(tmp_path / "data"), *SMOKE, "--contenders",
                   "torchcodec-exact,torchcodec-approx,decord,spdl", "--out", str(tmp_path / "r.json"),
                   "--no-plots"])  # fmt: skip
    assert rc == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in doc["results"]] == ["torchcodec-exact", "torchcodec-approx", "decord", "spdl"]
    for r in doc["results"]:
        assert r["status"] == "skipped" and len(r["rounds"]) == 1 and "started_s" not in r["rounds"][0]
        assert "bash bench/peers_env.sh && ringload bench --peer-python" in r["note"]
    assert "peers" not in doc["system"]
    table = capsys.readouterr().out
    for name in ("torchcodec-exact", "decord", "spdl"):
        assert f"note: {name}: skipped: peers run in their own interpreter: bash bench/peers_env.sh" in table


def test_peer_python_must_be_an_executable(tmp_path):
    with pytest.raises(ConfigError, match="--peer-python"):
        bench.BenchConfig(peer_python=str(tmp_path / "no-such-python"))
    (tmp_path / "plain.txt").write_text("")
    with pytest.raises(ConfigError, match="--peer-python"):
        bench.BenchConfig(peer_python=str(tmp_path / "plain.txt"))


def test_process_tree_accounting():
    pid = os.getpid()
    assert pid in bench.tree_pids(pid)
    assert bench.tree_cpu_seconds(pid) > 0
    rss, pss = bench.tree_memory(pid)
    assert rss > 10 * 2**20 and pss > 0


def test_starter_crop_follows_torchvision_rule_with_torch_seed():
    torch = pytest.importorskip("torch")
    pytest.importorskip("PIL")
    from ringload.bench.starter import RandomResizedCrop

    crop = RandomResizedCrop(224, scale=(0.9, 1.0))
    torch.manual_seed(3)
    first = [crop.get_params(400, 360) for _ in range(50)]
    torch.manual_seed(3)
    assert [crop.get_params(400, 360) for _ in range(50)] == first  # torch's seed fixes it, as torchvision's
    assert len(set(first)) > 10
    for top, left, h, w in first:
        assert 0 <= top <= 360 - h and 0 <= left <= 400 - w
        assert 0.9 * 400 * 360 * 0.99 <= w * h <= 400 * 360 and 3 / 4 * 0.98 <= w / h <= 4 / 3 * 1.02
    # 16:9 at scale >= 0.9 cannot have an aspect ratio <= 4/3: torchvision's centre-crop fallback.
    assert {crop.get_params(640, 360) for _ in range(20)} == {(0, 80, 360, 480)}


def test_list_source_reads_like_the_loader(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("b.mp4", "a.mkv", "notes.txt"):
        (tmp_path / "v" / name).write_bytes(b"x")
    (tmp_path / "v" / "link.mp4").symlink_to(tmp_path / "v" / "b.mp4")  # the same real file: listed once
    found = bench.list_source(str(tmp_path / "v"))
    assert [os.path.basename(p) for p in found] == ["a.mkv", "b.mp4"]
    listing = tmp_path / "files.txt"
    listing.write_text("/data/one.mp4\n\n/data/two.mp4\n")
    assert bench.list_source(str(listing)) == ["/data/one.mp4", "/data/two.mp4"]
    assert [os.path.basename(p) for p in bench.list_source(str(tmp_path / "v" / "*.mkv"))] == ["a.mkv"]
    with pytest.raises(ConfigError):
        bench.list_source(str(tmp_path / "nothing-here"))


def test_ratio_to_the_fastest_peer_of_each_round():
    # Round 1: decord is the fastest peer, round 2: spdl; ratios divide by that round's.
    results = [
        _entry("strict", [30.0, 40.0]),
        _entry("decord", [20.0, 10.0]),
        _entry("spdl", [15.0, 25.0]),
        _entry("torchcodec-exact", [None, 5.0]),  # failed in round 1: left out of that round
    ]
    r = bench.ratios(results)
    assert r["best_peer"] == {"round_ids": [0, 1], "rounds": ["decord", "spdl"], "images_per_s": [20.0, 25.0]}
    assert r["contenders"]["strict"]["x_best_peer"]["rounds"] == pytest.approx([1.5, 1.6])
    assert "x_best_peer" not in r["contenders"]["spdl"]
    text = report.format_table({"results": results, "ratios": r, "rounds": 2,
                                "system": {"peers": {"python": "3.11.7", "spdl.io": "0.8.0", "executable": "/v/py"}}})
    assert "fastest peer per round: decord, spdl; over it in the same round: strict 1.55 1.50-1.60." in text
    assert "peers: python 3.11.7, spdl.io 0.8.0 (/v/py)" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_ring_bytes_reaches_every_ringload_contender_and_decoded_per_frame_is_summarised():
    from ringload._cli_bench import config_from_args
    from ringload.bench.runner import plan_runs

    args = cli.build_parser().parse_args(["bench", "--smoke", "--ring-bytes", "4G", "--contenders", "strict,bounded"])
    cfg = config_from_args(args)
    assert cfg.ring_bytes == 4 << 30
    assert {r["ring_bytes"] for r in plan_runs(cfg)} == {4 << 30}
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--ring-bytes", "lots"])
    with pytest.raises(ConfigError, match="ring-bytes"):
        config_from_args(cli.build_parser().parse_args(["bench", "--ring-bytes", "10K"]))
    entry = _entry("strict", [10.0, 20.0, 30.0])
    assert entry["decoded_per_frame"] is None  # no round counted decoded frames
    for r, d in zip(entry["rounds"], (3.0, 5.0, 4.0)):
        r["decoded_per_frame"] = d
    assert rounds.summarize(entry)["decoded_per_frame"] == 4.0


def test_kinetics_preset_is_one_random_clip_per_video_against_the_clip_dataset():
    from ringload._cli_bench import config_from_args
    from ringload.bench.runner import plan_runs

    cfg = config_from_args(cli.build_parser().parse_args(["bench", "--kinetics"]))
    assert (cfg.clip_len, cfg.clips_per_video, cfg.batch_size) == (16, 1, 16)
    assert (cfg.dataset.height, cfg.dataset.seconds, cfg.dataset.names) == (340, 10.0, 2000)
    assert {r["clips_per_video"] for r in plan_runs(cfg)} == {1}
    with pytest.raises(ConfigError, match="clips-per-video"):
        config_from_args(cli.build_parser().parse_args(["bench", "--smoke", "--clips-per-video", "1"]))


def test_clip_dataset_reads_the_frames_of_one_clip(tmp_path):
    import numpy as np
    import torch

    from ringload import read_frames
    from ringload.bench import starter
    from ringload.synth import make_video

    path = make_video(tmp_path / "v.mp4", width=160, height=120, fps=30, seconds=2, gop=10, bframes=2, seed=1)
    ds = starter.VideoClipDataset([path], clip_len=4, frame_stride=2, clips_per_video=3, size=120)
    ds.crop.scale = (1.0, 1.0)
    ds.crop.ratio = (160 / 120, 160 / 120)  # the whole frame: compare pixels with the decoder's
    assert len(ds) == 3
    torch.manual_seed(0)
    clip = ds[1]
    assert clip.shape == (4, 3, 120, 120) and clip.dtype == torch.float32
    # The clip is 4 frames 2 apart of the video: find its start by matching the first frame.
    whole = read_frames(path, list(range(60)), size=(120, 120)).data.numpy().astype(np.float32) / 255
    got = clip.numpy()  # (T, 3, H, W), as read_frames gives
    nearest = [int(np.argmin([np.abs(whole[i] - got[j]).mean() for i in range(60)])) for j in range(4)]
    assert np.diff(nearest).tolist() == [2, 2, 2]  # each clip frame is nearest to its own frame
    assert max(np.abs(whole[i] - got[j]).mean() for j, i in enumerate(nearest)) < 0.02


def test_clip_workloads_are_judged_by_the_clip_targets():
    results = [_entry("starter", [10.0, 10.0]), _entry("bounded", [60.0, 40.0])]
    got = {t["target"]: t["verdict"] for t in rounds.ratios(results, rounds.CLIP_TARGETS)["targets"]}
    assert got["bounded >= 5 x starter"] == "unclear"
    assert not any("10 x" in t for t in got)
