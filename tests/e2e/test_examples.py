"""Every example runs in smoke mode, reports its throughput, and its loss falls."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # each example runs end to end in a subprocess
EXAMPLES = REPO / "examples"
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("example-data")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")  # the smoke runs share a small machine
    return env


def _result(proc) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no RESULT line in:\n{proc.stdout[-3000:]}"
    assert proc.stdout.rstrip().splitlines()[-1] == lines[-1], "RESULT must be the last line"
    return json.loads(lines[-1][len("RESULT ") :])


def _run(script, *args, data_dir):
    cmd = [sys.executable, str(EXAMPLES / script), "--smoke", "--data-dir", str(data_dir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=REPO)


def _check_training(res: dict, unit: str) -> None:
    assert res["steps"] >= 8
    assert res[f"{unit}_per_s"] > 0
    assert 0.0 <= res["data_wait_fraction"] <= 1.0
    assert res["loss_last"] < res["loss_first"], res
    assert res["loss_fell"] is True


@pytest.mark.parametrize("sampling", ["bounded", "strict"])
def test_frames_example(sampling, data_dir):
    res = _result(_run("frames.py", "--sampling", sampling, data_dir=data_dir))
    assert res["example"] == "frames" and res["sampling"] == sampling
    _check_training(res, "images")


def test_clips_example(data_dir):
    res = _result(_run("clips.py", data_dir=data_dir))
    _check_training(res, "clips")
    # Smoke clips: 8 frames at 4 fps, so the first and last frame are 7 / 4 s apart.
    assert res["clip_len"] == 8
    assert res["clip_span_s"] == pytest.approx(7 / 4, abs=0.1)


@pytest.mark.parametrize("multi", [False, True], ids=["single-label", "multi-label"])
def test_classify_example(multi, data_dir):
    res = _result(_run("classify.py", *(["--multi-label"] if multi else []), data_dir=data_dir))
    _check_training(res, "clips")
    assert res["metric"] == ("mAP" if multi else "top1")
    for key in ("center_clip", "views", "tsn_segments"):
        assert 0.0 <= res[key] <= 1.0
    # Smoke: 2 held-out videos, each evaluated on 1 view and on 2 clips x 3 crops through the loader.
    assert res["val_videos"] == 2
    assert (res["eval_clips"], res["eval_crops"], res["views_per_video"]) == (2, 3, 6)


def test_longtail_example(data_dir):
    res = _result(_run("longtail.py", data_dir=data_dir))
    assert res["example"] == "longtail"
    # Smoke: 4 classes, the seed's split scaled by 0.04: head > 20, middle 4 to 20, tail < 4 videos.
    assert res["train_counts"] == sorted(res["train_counts"], reverse=True)
    assert res["segments"] == {"head": 1, "middle": 1, "tail": 2}
    for run in ("uniform", "repeat_factor"):
        _check_training(res[run], "clips")
        assert set(res[run]["mAP"]) == {"head", "middle", "tail", "all"}
        for v in res[run]["mAP"].values():
            assert 0.0 <= v <= 1.0
    # Class balance repeats the tail's videos: a larger share of the labels seen is a tail label.
    share = res["tail_label_share"]
    assert share["repeat_factor"] > share["uniform"] > 0
    assert res["repeat_factor"]["steps"] == res["uniform"]["steps"] == res["steps"]


def _torchrun(*args, data_dir):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(EXAMPLES / "ddp.py"), "--smoke", "--data-dir", str(data_dir), *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=_env(), cwd=REPO)


def test_ddp_example_resumes_with_the_same_batches(data_dir, tmp_path):
    straight = _result(_torchrun(data_dir=data_dir))
    assert straight["world_size"] == 2 and straight["last_step"] == 12
    _check_training(straight, "images")
    ckpt = tmp_path / "ckpt.pt"
    first = _result(_torchrun("--stop-after", "5", "--checkpoint", str(ckpt), data_dir=data_dir))
    assert first["last_step"] == 5 and ckpt.exists()
    rest = _result(_torchrun("--resume", "--checkpoint", str(ckpt), data_dir=data_dir))
    assert rest["last_step"] == 12
    # The interrupted run plus the resumed run saw exactly the samples of the straight run.
    assert first["step_digests"] + rest["step_digests"] == straight["step_digests"]
