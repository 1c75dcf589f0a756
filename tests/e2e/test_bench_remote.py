"""`ringload bench --remote`: a smoke-size run (4 tiny videos, one round of 2 batches per
contender) checks the result file's fields and that its ratios are positive numbers, not
speed; the window arithmetic, ratios and table are checked on made-up rounds."""

from __future__ import annotations

import json
import math
import os
import types

import pytest

from ringload import cli
from ringload._cli_bench import remote_config_from_args
from ringload.bench import remote
from ringload.errors import ConfigError

SMOKE = ["bench", "--remote", "--remote-videos", "4", "--resolution", "160x120", "--seconds", "1", "--rounds", "1",
         "--warmup", "1", "--batches", "2", "--batch-size", "8", "--size", "64", "--budget-s", "30",
         "--no-progress"]  # fmt: skip


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_smoke_run_writes_the_remote_fields(tmp_path, capsys):
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    out = tmp_path / "remote.json"
    rc = cli.main([*SMOKE, "--data-dir", str(tmp_path / "data"), "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "ringload-bench/2" and doc["preset"] == "remote" and doc["complete"] is True
    for key in ("cpu_count", "git_commit", "av_version", "torch_version", "loadavg_start", "loadavg_end", "argv"):
        assert key in doc["system"], key
    names = [f"{m} {p}" for m in ("bounded", "strict", "per-sample") for p in ("local", "bucket", "bucket+20ms")]
    assert doc["order"] == names == [r["name"] for r in doc["results"]]
    (ds,) = doc["datasets"].values()
    assert ds["files"] == 4 and ds["width"] == 160 and ds["bytes_total"] > 0 and ds["frames_total"] == 120
    assert doc["s3"]["upload_s"] > 0 and doc["s3"]["ringload_index_s"] > 0
    assert doc["proxies"]["bucket"]["latency_s"] == 0 and doc["proxies"]["bucket+20ms"]["latency_s"] == 0.02
    with pytest.raises(ProcessLookupError):  # the S3 server is gone with the run
        os.kill(doc["s3"]["pid"], 0)
    for e in doc["results"]:
        assert e["status"] == "ok", (e["name"], e.get("note"))
        (r,) = e["rounds"]
        assert _positive(r["images_per_s"]) and r["images_measured"] == 16
        m = r["remote"]
        assert m["frames"] == 16 and _positive(m["window_wall_s"]) and m["cores"] >= 1
        assert m["s3_cpu_share"] >= 0 and m["harness_cpu_share"] >= 0
        if e["place"] != "local":
            assert set(m["proxy"]) == {"bytes_to_client", "requests"}
        if e["mode"] != "per-sample":
            assert set(m["loader"]) >= {"bytes_fetched", "requests", "gop_bytes", "cache_hits", "tasks"}
            if e["place"] != "local":
                # The ring may hold the whole tiny dataset, so the windows can fetch nothing;
                # since the loader's construction it has fetched.
                since = m["since_start"]
                assert _positive(since["fetched_over_gop"]) and _positive(since["requests_per_task"])
                assert _positive(e["remote"]["since_start"]["fetched_over_gop"]["median"])
        else:
            assert "loader" not in m
            if e["place"] != "local":  # every item opens its object: bytes and requests in the window
                assert _positive(m["proxy_bytes_per_frame"]) and _positive(m["proxy_requests_per_frame"])
    ratios = doc["ratios"]["contenders"]
    for mode in ("bounded", "strict", "per-sample"):
        for place in ("bucket", "bucket+20ms"):
            s = ratios[f"{mode} {place}"]["x_local"]
            assert _positive(s["median"]) and len(s["rounds"]) == 1
    for name in ("bounded local", "strict bucket"):
        assert _positive(ratios[name]["x_per_sample"]["median"])
    targets = {t["target"] for t in doc["ratios"]["targets"]}
    assert "bounded bucket >= 0.8 x bounded local" in targets and "strict bucket+20ms >= 0.6 x strict local" in targets
    text = capsys.readouterr().out
    assert "per-sample bucket+20ms" in text and "fetch/GOP" in text and "S3 CPU" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def _round(name, r, ips, **remote_):
    return {"round": r, "status": "ok", "images_per_s": ips, "remote": remote_}


def _entry(name, rounds):
    mode, place = name.split(" ", 1)
    e = {"name": name, "mode": mode, "place": place, "status": "ok", "rounds": rounds}
    remote._summarize_remote(e)
    return e


def test_ratios_are_taken_within_rounds_and_bytes_targets_are_upper_bounds():
    cfg = remote.RemoteConfig(dataset=remote.DEFAULT_DATASET)
    results = [
        _entry("bounded local", [_round("", 0, 100.0), _round("", 1, 50.0)]),
        _entry("bounded bucket", [_round("", 0, 90.0, fetched_over_gop=1.1), _round("", 1, 30.0, fetched_over_gop=1.4)]),
        _entry("bounded bucket+20ms", [_round("", 0, 70.0, fetched_over_gop=1.0), _round("", 1, 40.0, fetched_over_gop=1.2)]),
        _entry("per-sample bucket", [_round("", 0, 10.0), _round("", 1, 5.0)]),
    ]  # fmt: skip
    out = remote.ratios(results, cfg)
    assert out["contenders"]["bounded bucket"]["x_local"]["rounds"] == [0.9, 0.6]
    assert out["contenders"]["bounded bucket"]["x_per_sample"]["rounds"] == [9.0, 6.0]
    assert out["contenders"]["bounded bucket+20ms"]["x_local"]["rounds"] == [0.7, 0.8]
    by = {t["target"]: t for t in out["targets"]}
    assert by["bounded bucket >= 0.8 x bounded local"]["verdict"] == "unclear"
    assert by["bounded bucket+20ms >= 0.6 x bounded local"]["verdict"] == "met"
    assert by["bounded bucket: bytes fetched <= 1.3 x GOP bytes"]["verdict"] == "unclear"
    assert by["bounded bucket+20ms: bytes fetched <= 1.3 x GOP bytes"]["verdict"] == "met"


def test_round_metrics_divide_window_deltas_by_the_frames_delivered_in_them():
    probe = types.SimpleNamespace(totals={"wall_s": 10.0, "s3_cpu_s": 4.0, "harness_cpu_s": 1.0,
                                          "proxy_bytes_to_client": 1_300_000, "proxy_requests": 30})  # fmt: skip

    result = {"images_measured": 100, "window_counters": {
        "frames": 100, "tasks": 10, "remote_bytes_fetched": 1_200_000, "remote_gop_bytes": 1_000_000,
        "remote_requests": 20, "remote_cache_hits": 3, "remote_cache_misses": 1}}  # fmt: skip
    m = remote._round_metrics(result, probe, cores=2)
    assert m["s3_cpu_share"] == pytest.approx(0.2) and m["harness_cpu_share"] == pytest.approx(0.05)
    assert m["bytes_per_frame"] == 12_000 and m["proxy_bytes_per_frame"] == 13_000
    assert m["gop_bytes_per_frame"] == 10_000 and m["fetched_over_gop"] == pytest.approx(1.2)
    assert m["proxy_over_gop"] == pytest.approx(1.3)
    assert m["requests_per_task"] == 2 and m["proxy_requests_per_task"] == 3 and m["frames_per_task"] == 10
    assert m["cache_hit_share"] == 0.75 and m["s3_cpu_ms_per_frame"] == pytest.approx(40.0)


def test_config_checks():
    cfg = remote.RemoteConfig(contenders=("strict bucket", "per-sample bucket+20ms"))
    assert cfg.names() == ("strict bucket", "per-sample bucket+20ms")
    assert remote.RemoteConfig(latency_s=0.05).places == ("local", "bucket", "bucket+50ms")
    with pytest.raises(ConfigError, match="unknown"):
        remote.RemoteConfig(contenders=("strict s3",))
    parse = cli.build_parser().parse_args
    with pytest.raises(ConfigError, match="--remote-videos"):
        remote_config_from_args(parse(["bench", "--remote", "--videos", "3"]))
    with pytest.raises(ConfigError, match="SOURCE"):
        remote_config_from_args(parse(["bench", "--remote", "some/dir"]))
    cfg = remote_config_from_args(parse(["bench", "--remote", "--remote-videos", "7", "--remote-latency-ms", "50",
                                         "--window-s", "5", "--seconds", "2"]))  # fmt: skip
    assert (cfg.dataset.distinct, cfg.dataset.names, cfg.dataset.seconds, cfg.dataset.height) == (7, 7, 2.0, 1080)
    assert cfg.latency_s == 0.05 and cfg.window_s == 5 and cfg.budget_s == 60 and cfg.batch_size == 32
