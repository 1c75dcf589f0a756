"""`ringload index SOURCE`: parallel indexing into the cache, summary, exit status."""

import os
import subprocess
import sys

import pytest

from helpers import console_script

from ringload.probe import index_paths, probe

from helpers import REPO


def _cli(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    return subprocess.run(
        [*console_script(), "index", *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture
def dataset(tmp_path, videos_dir):
    d = tmp_path / "data"
    (d / "a").mkdir(parents=True)
    os.symlink(videos_dir / "bikes.mp4", d / "a" / "bikes.mp4")
    os.symlink(videos_dir / "carphone_pristine.mp4", d / "a" / "carphone.mp4")
    os.symlink(videos_dir / "flipping_a_pancake.mkv", d / "pancake.mkv")
    return d


def test_index_directory_fills_the_cache(dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    out = _cli(str(dataset), "--workers", "2", "--cache-dir", str(cache))
    assert out.returncode == 0, out.stderr
    assert "indexed 3 of 3 videos: 680 frames" in out.stdout  # 250 + 120 + 310
    assert "indexing" in out.stderr  # the progress bar
    # Every file is now a cache hit: no demuxing or decoding.
    monkeypatch.setattr(sys.modules["ringload.probe"], "_build", lambda *a, **k: pytest.fail("not cached"))
    for p in sorted(dataset.rglob("*.m*")):
        assert probe(p, cache=cache).num_frames in (250, 120, 310)


def test_failures_are_listed_and_exit_non_zero(dataset, tmp_path):
    (dataset / "empty.mp4").write_bytes(b"")
    (dataset / "junk.avi").write_bytes(b"RIFF" + bytes(4000))
    manifest = tmp_path / "m.jsonl"
    rows = [f'{{"path": "{p}"}}' for p in sorted(dataset.rglob("*.*"))]
    manifest.write_text("\n".join(rows) + "\n")
    for source in (str(dataset), str(manifest)):
        out = _cli(source, "--workers", "2", "--cache-dir", str(tmp_path / "c"), "--no-progress")
        assert out.returncode == 1
        assert "indexed 3 of 5 videos" in out.stdout
        assert "2 failed" in out.stdout
        assert "empty.mp4: empty file" in out.stdout and "junk.avi" in out.stdout and "VideoOpenError" in out.stdout


def test_bad_source_is_a_usage_failure(tmp_path):
    out = _cli(str(tmp_path / "nothing-here"), "--no-progress")
    assert out.returncode == 1
    assert "no such file or directory" in out.stderr


def test_index_paths_in_process_keeps_order(videos_dir, tmp_path):
    paths = [videos_dir / "chaplin.mp4", tmp_path / "missing.mp4", videos_dir / "bikes.mp4"]
    seen = []
    res = index_paths(paths, cache=tmp_path / "c", workers=1, on_result=seen.append)
    assert [r.path for r in res] == [str(p) for p in paths]
    assert res[0].info.num_frames == 241 and res[2].info.num_frames == 250
    assert res[1].info is None and res[1].error_type == "VideoOpenError" and "missing.mp4" in res[1].error
    assert len(seen) == 3


def test_short_files_are_indexed_and_listed_in_every_summary(videos_dir, tmp_path):
    """decord_corrupted.mp4 decodes 28 of the 50 frames its header claims: it is indexed
    (exit 0), warned about when indexed, and listed with its counts by every run, cached or not."""
    cache = tmp_path / "cache"
    runs = [_cli(str(videos_dir), "--workers", "2", "--cache-dir", str(cache), "--no-progress") for _ in range(2)]
    for out in runs:
        assert out.returncode == 0, out.stdout + out.stderr
        assert "indexed 26 of 26 videos" in out.stdout
        short = [line for line in out.stdout.splitlines() if "fewer frames than" in line]
        assert short == [
            "1 video decodes fewer frames than its container claims (damaged or cut short; only the frames that "
            f"decode are used): {videos_dir / 'decord_corrupted.mp4'} (28 of 50)"
        ], out.stdout
        assert "dolbyVision-hdr.MOV" not in out.stdout  # 5 in its header, one dropped by its edit list: 4 of 4
    cold, warm = runs
    assert "decodes 28 of the 50 frames its container claims" in cold.stderr  # the warning, once: when indexed
    assert "frames its container claims" not in warm.stderr and "decord_corrupted" not in warm.stderr


def test_a_manifest_of_segments_indexes_each_file_once_and_refuses_out(dataset, tmp_path):
    man = tmp_path / "segments.csv"
    bikes = dataset / "a" / "bikes.mp4"
    man.write_text(f"path,start,end\n{bikes},0,1\n{bikes},2,3\n{dataset / 'pancake.mkv'},,2\n")
    out = _cli(str(man), "--workers", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "indexed 2 of 2 videos" in out.stdout
    out = _cli(str(man), "--out", str(tmp_path / "x.ringindex"), "--no-progress")
    assert out.returncode != 0 and "its rows have start/end" in out.stderr
    assert not (tmp_path / "x.ringindex").exists()
