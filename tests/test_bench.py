"""`ringload bench`: a tiny end-to-end run (schema and sanity of the numbers), run planning, ratios."""

from __future__ import annotations

import json
import os

import pytest

from ringload import bench, cli
from ringload.errors import ConfigError


def test_smoke_run_writes_schema(tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = cli.main(
        [
            "bench", "--data-dir", str(tmp_path / "data"), "--resolution", "320x240", "--seconds", "3",
            "--names", "12", "--batch-size", "16", "--warmup", "1", "--repeats", "2", "--batches", "2",
            "--budget-s", "40", "--contenders", "starter,ceiling,sequential,strict,bounded,decord",
            "--sweep", "none", "--out", str(out), "--plots", str(tmp_path / "img"), "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == bench.SCHEMA
    for key in ("cpu_model", "cpu_count", "ram_bytes", "python", "torch_version", "av_version", "numpy_version",
                "git_commit", "loadavg_start", "loadavg_end"):
        assert key in doc["system"], key
    assert doc["system"]["cpu_count"] >= 1 and doc["system"]["ram_bytes"] > 0
    assert doc["config"]["batch_size"] == 16
    (ds,) = doc["datasets"].values()
    assert ds["files"] == 12 and ds["bytes_per_video"] > 10_000
    by_name = {r["name"]: r for r in doc["results"]}
    assert set(by_name) == {"starter", "ceiling", "sequential", "strict", "bounded", "decord"}
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    assert {"starter", "ceiling"} <= {r["name"] for r in ok}
    for r in ok:
        assert r["images_per_s"] > 0 and all(v > 0 for v in r["images_per_s_windows"])
        assert len(r["images_per_s_windows"]) == 2
        assert r["images_measured"] == 2 * 2 * 16
        assert r["cpu_s_per_image"] > 0
        assert 0 <= r["wait_ms"]["p50"] <= r["wait_ms"]["p95"] <= r["wait_ms"]["p99"]
        assert r["first_batch_s"] > 0
        assert r["peak_rss_bytes"] > 50 * 2**20 and r["peak_pss_bytes"] > 0
        assert r["output"]["shape"] == [16, 3, 224, 224]
    assert by_name["ceiling"]["output"]["dtype"] == "uint8"
    assert by_name["ceiling"]["shm_bytes"] > 0
    # A contender that cannot run here is reported, not silently dropped.
    for r in doc["results"]:
        if r["status"] == "skipped":
            assert r["note"]
    if by_name["bounded"]["status"] == "ok":
        assert by_name["bounded"]["design_effect_bound"] >= 1
    assert doc["ratios"]["starter"]["x_starter"] == pytest.approx(1.0)
    table = capsys.readouterr().out
    assert "starter" in table and "ceiling" in table and str(out) in table
    assert (tmp_path / "img" / "bench_throughput.png").stat().st_size > 1000
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


def test_config_validation():
    with pytest.raises(ConfigError, match="contenders"):
        bench.BenchConfig(contenders=("nope",))
    with pytest.raises(ConfigError, match="even"):
        bench.DatasetSpec(width=321)
    with pytest.raises(ConfigError, match="rho"):
        bench.BenchConfig(rho=2.0)


def test_ratios_and_targets():
    results = [
        {"name": "starter", "status": "ok", "images_per_s": 10.0},
        {"name": "sequential", "status": "ok", "images_per_s": 200.0},
        {"name": "bounded", "status": "ok", "images_per_s": 180.0},
        {"name": "strict", "status": "ok", "images_per_s": 12.0},
    ]
    r = bench.ratios(results)
    assert r["ceiling_used"] == "sequential"
    assert r["bounded"]["x_starter"] == pytest.approx(18.0)
    assert r["bounded"]["x_ceiling"] == pytest.approx(0.9)
    assert r["targets"] == {
        "bounded >= 0.85 x ceiling": True,
        "bounded >= 10 x starter": True,
        "strict >= 1.5 x starter": False,
    }
    for row, cpu in zip(results, (0.1, 0.004, 0.005, 0.05)):
        row["cpu_s_per_image"] = cpu
    r = bench.ratios(results)
    assert r["strict"]["cpu_x_starter"] == pytest.approx(2.0)
    assert r["bounded"]["cpu_x_ceiling"] == pytest.approx(0.8)
    assert r["targets"]["strict >= 1.5 x starter (per CPU-second)"] is True
    assert r["targets"]["bounded >= 0.85 x ceiling (per CPU-second)"] is False


def test_process_tree_accounting():
    pid = os.getpid()
    assert pid in bench.tree_pids(pid)
    assert bench.tree_cpu_seconds(pid) > 0
    rss, pss = bench.tree_memory(pid)
    assert rss > 10 * 2**20 and pss > 0
