"""CUDA and worker processes: why forked DataLoader workers that decode on the GPU fail with
CUDA_ERROR_NOT_INITIALIZED, and why ringload's decoders cannot.

A process that has initialised CUDA cannot use CUDA in a child made by fork(): the driver's
state is not valid in the copy, so cuInit(0) in the child returns CUDA_ERROR_NOT_INITIALIZED (3)
and torch refuses with "Cannot re-initialize CUDA in forked subprocess". FFmpeg's NVDEC
(h264_cuvid / hwaccel cuda) calls cuInit in whatever process decodes, so GPU decoding in
forked DataLoader workers of a training process that already uses the GPU fails exactly so.
ringload starts decoders with ``spawn`` and keeps CUDA (and torch) out of them.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO
CUDA_ERROR_NOT_INITIALIZED = 3

# Modules that run inside decoder processes.
DECODER_SIDE = ["ringload._decoder", "ringload._protocol", "ringload._decode", "ringload._videoinfo", "ringload._ring", "ringload._rng"]

CHILD_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, multiprocessing as mp, sys, warnings

    def child(conn, use_cuda):
        res = {}
        if use_cuda:
            try:
                res["cuInit"] = int(ctypes.CDLL("libcuda.so.1").cuInit(0))
            except OSError as e:
                res["cuInit"] = "libcuda not loadable: %s" % e
            import torch
            try:
                torch.zeros(1, device="cuda")
                res["torch"] = "ok"
            except Exception as e:
                res["torch"] = "%s: %s" % (type(e).__name__, e)
        else:
            import numpy as np  # CPU work only, as a ringload decoder does
            res["cpu"] = int(np.arange(10).sum())
        conn.send(res)
        conn.close()

    if __name__ == "__main__":
        method, use_cuda = sys.argv[1], sys.argv[2] == "1"
        import torch
        torch.zeros(1, device="cuda")  # the training process uses the GPU before workers start
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a multi-threaded process
        ctx = mp.get_context(method)
        here, there = ctx.Pipe()
        p = ctx.Process(target=child, args=(there, use_cuda))
        p.start()
        res = here.recv() if here.poll(120) else {"timeout": True}
        p.join(60)
        if p.is_alive():
            p.kill()
            p.join(10)
        res["exitcode"] = p.exitcode
        print(json.dumps(res))
    """
)


def _run_child(tmp_path, method: str, use_cuda: bool) -> dict:
    script = tmp_path / "fork_child.py"
    script.write_text(CHILD_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), method, "1" if use_cuda else "0"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.cuda
def test_forked_child_of_a_cuda_process_cannot_use_cuda(tmp_path):
    res = _run_child(tmp_path, "fork", use_cuda=True)
    # The driver-level failure FFmpeg's NVDEC reports as "cu->cuInit(0) failed".
    assert res["cuInit"] == CUDA_ERROR_NOT_INITIALIZED, res
    assert "Cannot re-initialize CUDA in forked subprocess" in res["torch"], res


@pytest.mark.cuda
def test_spawned_child_of_a_cuda_process_can_use_cuda(tmp_path):
    res = _run_child(tmp_path, "spawn", use_cuda=True)
    assert res["cuInit"] == 0 and res["torch"] == "ok", res
    assert res["exitcode"] == 0


@pytest.mark.cuda
def test_children_that_keep_off_cuda_work_either_way(tmp_path):
    for method in ("fork", "spawn"):
        res = _run_child(tmp_path, method, use_cuda=False)
        assert res["cpu"] == 45 and res["exitcode"] == 0, (method, res)


# ---- runs everywhere (CI) ----


def test_decoder_side_modules_never_import_torch_or_cuda():
    present = [m for m in DECODER_SIDE if importlib.util.find_spec(m) is not None]
    assert present == DECODER_SIDE, "a decoder-side module was renamed: update DECODER_SIDE"
    code = textwrap.dedent(
        f"""
        import importlib, json, sys
        mods = {present!r}
        for m in mods:
            importlib.import_module(m)
        print(json.dumps({{"torch": "torch" in sys.modules,
                          "cuda": [k for k in sys.modules if "cuda" in k.lower()]}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res == {"torch": False, "cuda": []}, (present, res)


def _fork_offenders(source: str, filename: str) -> list[str]:
    offenders = []
    for call in (n for n in ast.walk(ast.parse(source, filename=filename)) if isinstance(n, ast.Call)):
        name = ast.unparse(call.func)
        where = f"{filename}:{call.lineno}"
        if name in ("os.fork", "os.forkpty", "fork"):
            offenders.append(f"{where} {name}")
        if name.endswith(("get_context", "set_start_method")) and call.args:
            arg = call.args[0]
            if not (isinstance(arg, ast.Constant) and arg.value == "spawn"):
                offenders.append(f"{where} {ast.unparse(call)}")
        if name in ("multiprocessing.Process", "mp.Process", "Process", "multiprocessing.Pool", "Pool"):
            offenders.append(f"{where} {name} without a spawn context")
    return offenders


def test_no_ringload_module_forks_or_uses_a_fork_start_method():
    """Every process ringload starts is spawned: no os.fork, no 'fork'/'forkserver' context,
    no bare multiprocessing.Process (which forks by default on Linux before Python 3.14)."""
    offenders = []
    for path in sorted((REPO / "ringload").glob("*.py")):
        offenders += _fork_offenders(path.read_text(), path.name)
    assert offenders == []


def test_the_static_check_catches_a_fork():
    """Control for the test above: the same check flags code that forks, and passes spawn."""
    bad = "import multiprocessing as mp, os\nctx = mp.get_context('fork')\nos.fork()\np = mp.Process()\n"
    assert len(_fork_offenders(bad, "bad.py")) == 3
    good = "import multiprocessing as mp\nctx = mp.get_context('spawn')\np = ctx.Process()\n"
    assert _fork_offenders(good, "good.py") == []
