"""`ringload bench` from a fresh install: a new virtual environment, `pip install` of a copy of
this checkout (not editable), then `ringload bench --smoke` from another folder. Every
contender runs from the installed package (the starter and the plots ship inside it), and
the result file and the plots are written.

About 1 minute on the 2-core development machine: venv 2 s, pip install 25 s (the torch
wheel on local disk, the others in pip's cache; 45 s the first time), bench --smoke 32 s
(55 s under load), its data generated in the test's own folder.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from helpers import REPO

from ringload.bench.peers import PEERS

# What a wheel does not need; a stale build/ or egg-info folder must not leak into it either.
_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 ".hypothesis", "out", "results", "img", "shared")  # fmt: skip


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INPUT"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(cmd, *, cwd, timeout):
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc, time.perf_counter() - t0


@pytest.mark.slow
def test_bench_smoke_from_a_fresh_install(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE, symlinks=True)
    venv = tmp_path / "venv"
    _, venv_s = _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, timeout=300)
    py = venv / "bin" / "python"
    # With build isolation (pip's default): the setuptools that a fresh venv of Python 3.11
    # holds (65.x) cannot build a wheel without the `wheel` package, so --no-build-isolation
    # would need an upgrade first: measured, 27 s for upgrade + install against 25 s.
    _, install_s = _run(
        [py, "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt", f"{src}[bench]"], cwd=tmp_path, timeout=900
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where, _ = _run([py, "-c", "import ringload; print(ringload.__file__)"], cwd=elsewhere, timeout=120)
    assert pathlib.Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    out = elsewhere / "bench.json"
    bench, bench_s = _run(
        [venv / "bin" / "ringload", "bench", "--smoke", "--data-dir", tmp_path / "data", "--out", out, "--no-progress"],
        cwd=elsewhere, timeout=900,
    )  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["complete"] is True and doc["rounds"] == 2
    assert doc["system"]["git_commit"] is None  # an installed copy is not a checkout
    status = {r["name"]: r for r in doc["results"]}
    assert set(status) == {"starter", "ceiling", "sequential", "strict", "bounded", *PEERS}
    for name, r in status.items():
        if name in PEERS:  # no --peer-python: skipped with the command that enables them
            assert r["status"] == "skipped" and "--peer-python" in r["note"], (name, r.get("note"))
            continue
        assert r["status"] == "ok", (name, r.get("note"), r.get("rounds"))
        assert len(r["rounds"]) == 2 and r["images_per_s"] > 0
    assert "transforms" in status["starter"]["note"]  # the starter ran from the package, not skipped
    for png in ("bench_throughput.png", "bench_ratios.png"):
        assert (elsewhere / png).stat().st_size > 1000, png
        assert f"plot: {elsewhere / png}" in bench.stdout
    sys.stdout.write(f"fresh venv {venv_s:.0f} s, pip install {install_s:.0f} s, bench --smoke {bench_s:.0f} s\n")
