"""The peers side by side: `ringload bench --quick --peer-python <venv>/bin/python` runs every
peer row to status ok (issue 19's acceptance).

Skipped in CI and where the peer venv is absent: it needs the venv that bench/peers_env.sh
builds (several GB from PyPI) and takes 10 to 15 minutes on the 2-core machine. By hand:

    bash bench/peers_env.sh
    RINGLOAD_PEERS_OUT=bench/results/peers-quick.json python -m pytest -q -s tests/e2e/test_bench_peers.py
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

VENV = pathlib.Path(os.environ.get("RINGLOAD_PEERS_VENV", pathlib.Path.home() / ".cache/ringload/peers-venv"))
PEER_PYTHON = VENV / "bin" / "python"
ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(os.environ.get("CI")), reason="CI: needs the peer venv (GBs) and ~15 minutes"),
    pytest.mark.skipif(not PEER_PYTHON.exists(),
                       reason=f"no peer venv at {VENV} (bash bench/peers_env.sh builds it; RINGLOAD_PEERS_VENV)"),
]  # fmt: skip


def test_quick_run_every_peer_ok(tmp_path):
    out = pathlib.Path(os.environ.get("RINGLOAD_PEERS_OUT") or tmp_path / "peers-quick.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "ringload.cli", "bench", "--quick", "--peer-python", str(PEER_PYTHON),
           "--no-progress", "--no-plots", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=2400, check=False)
    sys.stdout.write(proc.stdout)  # the table, kept with pytest -s
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    by_name = {r["name"]: r for r in doc["results"]}
    peers = ("torchcodec-exact", "torchcodec-approx", "decord", "spdl")
    for name in peers:
        r = by_name[name]
        assert r["status"] == "ok", (name, r.get("note"))
        assert r["rounds_ok"] == doc["rounds"] == 3
        assert r["output"] == {"shape": [128, 3, 224, 224], "dtype": "uint8"}
        assert r["images_per_s"] > 0 and r["cpu_s_per_image"] > 0 and r["peak_rss_bytes"] > 0
        assert r["first_batch_s"] > 0 and r["workers"] == by_name["strict"]["workers"]
        # In the same rounds as everyone else: one run per round, interleaved with the others.
        assert [x["round"] for x in r["rounds"]] == [0, 1, 2]
    versions = doc["system"]["peers"]
    assert versions["torchcodec"].startswith("0.17") and versions["decord"] == "0.6.0" and versions["spdl.io"]
    best = doc["ratios"]["best_peer"]
    assert len(best["rounds"]) == 3 and all(name in peers for name in best["rounds"])
    assert doc["ratios"]["contenders"]["strict"]["x_best_peer"]["median"] > 0
