import importlib.util
import io
import json
import os
import re
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import console_script

from ringload import _cli_inspect, cli

from helpers import REPO


def _cli(*args, timeout=120, cache=None):
    """``ringload ARGS`` as a user runs it: a fresh interpreter on this checkout."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if cache is not None:
        env["RINGLOAD_CACHE_DIR"] = str(cache)
    return subprocess.run(
        [*console_script(), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _decoded_counts(videos_dir):
    """File -> {stream: decoded frame count} from the SOURCES.md table (None: the first video stream)."""
    counts = {}
    for line in (videos_dir / "SOURCES.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 10 and cells[1].startswith("`"):
            m = re.match(r"\**(\d+)", cells[8])
            if m:
                per_stream = {None: int(m.group(1))}
                for s, n in re.findall(r"stream(\d+) \([^)]*\): (\d+)", cells[8]):
                    per_stream[int(s)] = int(n)
                counts[cells[1].strip("`")] = per_stream
    return counts


def test_gop_stats_uses_complete_intervals():
    g = _cli_inspect.gop_stats([0, 30, 60, 90], 100)  # tail of 10 frames is cut by the file end
    assert (g.count, g.min, g.median, g.max, g.regular) == (4, 30, 30.0, 30, True)
    g = _cli_inspect.gop_stats([0, 12, 40, 50], 55)
    assert (g.min, g.median, g.max, g.regular) == (10, 12.0, 28, False)
    g = _cli_inspect.gop_stats([0], 77)  # one keyframe: the whole file is one GOP
    assert (g.count, g.min, g.median, g.max) == (1, 77, 77.0, 77)


@pytest.mark.parametrize(
    ("gop", "expected"),
    [(30, 120), (25, 100), (1, 64), (12, 72), (60, 240), (250, 250), (3000, 256), (29.5, 118)],
)
def test_suggested_chunk_len(gop, expected):
    from ringload import plan

    got = _cli_inspect.suggest_chunk_len(gop)
    assert got == expected
    if got < plan.MAX_AUTO_CHUNK_LEN:  # below the cap chunks read at 85 % of sequential speed or better
        assert _cli_inspect.sequential_speed_share(got, gop) >= 0.85


def test_suggestion_is_the_loader_default():
    from ringload import plan

    assert _cli_inspect.suggest_chunk_len(1) == plan.DEFAULT_CHUNK_LEN
    assert _cli_inspect.suggest_chunk_len(30) == plan.chunk_len_for_gop(30)
    assert _cli_inspect.sequential_speed_share(64, 1) == 1.0
    # docs/sampling.md's table: GOP 30, C=64 reads at 0.82 of sequential speed; GOP 250 at 0.34.
    assert round(_cli_inspect.sequential_speed_share(64, 30), 2) == 0.82
    assert round(_cli_inspect.sequential_speed_share(64, 250), 2) == 0.34
    # Whole GOPs cut on keyframes walk nothing.
    assert _cli_inspect.sequential_speed_share(120, 30) == 1.0


def test_inspect_every_shared_video(videos_dir, tmp_path):
    from ringload import plan

    paths = sorted(p for p in videos_dir.iterdir() if p.name != "SOURCES.md")
    assert len(paths) >= 26
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    out = io.StringIO()
    args = SimpleNamespace(paths=[str(p) for p in paths] + [str(garbage), str(empty)], stream=None, json=True)
    rc = _cli_inspect.run(args, out=out)
    doc = json.loads(out.getvalue())
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in doc["files"]}
    assert rc == 1  # the bad files fail, the rest are still reported
    for bad in (garbage, empty):
        rec = by_name[bad.name]
        assert not rec["ok"] and str(bad) in rec["error"]["message"]
        assert rec["error"]["type"] in {"VideoOpenError", "NoVideoStreamError", "DecodeError", "VideoError"}
    counts = _decoded_counts(videos_dir)
    corrupted = by_name["decord_corrupted.mp4"]
    if corrupted["ok"]:  # probe reports the frames that really decode, and the header's claim
        assert corrupted["num_frames"] == counts["decord_corrupted.mp4"][None]
        assert corrupted["container_frames"] == 50
    else:  # ... or refuses the file with a typed error that names it
        assert "decord_corrupted.mp4" in corrupted["error"]["message"]
    for p in paths:
        rec = by_name[p.name]
        if p.name == "decord_corrupted.mp4":
            continue
        assert rec["ok"], rec
        known = counts[p.name]
        assert rec["num_frames"] == known.get(rec["stream"], known[None]), p.name
        assert rec["width"] > 0 and rec["height"] > 0 and rec["fps"] > 0 and rec["duration_seconds"] > 0
        g = rec["gop"]
        assert 1 <= g["keyframes"] <= rec["num_frames"]
        assert 1 <= g["min"] <= g["median"] <= g["max"] <= rec["num_frames"]
        if g["keyframes"] > 1:
            assert rec["suggested_chunk_len"] == min(rec["num_frames"], _cli_inspect.suggest_chunk_len(g["median"]))
            # Where the cap binds (four GOPs past 256 frames) the chunk is shorter than four GOPs.
            capped = rec["suggested_chunk_len"] == rec["num_frames"] or 4 * g["median"] > plan.MAX_AUTO_CHUNK_LEN
            assert 0.85 <= rec["speed_vs_sequential"] <= 1.0 or capped
        else:
            assert rec["suggested_chunk_len"] == min(rec["num_frames"], 64) and rec["speed_vs_sequential"] is None
    assert doc["suggested_chunk_len"] >= 1


def test_inspect_text_output_and_typed_error_from_the_command_line(videos_dir, tmp_path):
    garbage = tmp_path / "not_a_video.mkv"
    garbage.write_bytes(b"\x00garbage" * 500)
    good = videos_dir / "bikes.mp4"
    proc = _cli("inspect", str(good), str(garbage), cache=tmp_path / "cache")
    assert proc.returncode == cli.EXIT_FAILURE
    assert str(garbage) in proc.stderr
    assert "bikes.mp4" in proc.stdout and "frames 250 " in proc.stdout and "suggested chunk_len" in proc.stdout
    assert "1 of 2 files read, 1 failed" in proc.stdout
    assert "bounded defaults at batch_size=128, 224x224" in proc.stdout and "effective batch size" in proc.stdout


def test_inspect_reports_the_bounded_defaults_the_loader_would_choose(videos_dir, tmp_path):
    from ringload._bounded import choose, design_effect_bound
    from ringload._ring import RingLayout

    good = videos_dir / "bikes.mp4"
    proc = _cli("inspect", "--json", "--batch-size", "64", "--size", "112", "--rho", "0.5", str(good),
                cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    b = doc["bounded"]
    want = choose(median_gop=doc["files"][0]["gop"]["median"], batch_size=64,
                  slot_bytes=RingLayout(1, (64, 1, 112, 112, 3)).slot_stride)
    assert (b["chunk_len"], b["max_per_chunk"]) == (want.chunk_len, want.max_per_chunk)
    assert b["design_effect_bound"] == design_effect_bound(want.max_per_chunk, 0.5)
    assert b["effective_batch_size"] == pytest.approx(64 / b["design_effect_bound"], abs=0.01)
    bad = _cli("inspect", "--rho", "1.5", str(good), cache=tmp_path / "cache")
    assert bad.returncode == 2 and "--rho" in bad.stderr


def test_inspect_usage_error_exits_2():
    proc = _cli("inspect")
    assert proc.returncode == cli.EXIT_USAGE
    assert "PATH" in proc.stderr


def test_top_level_help_lists_every_command():
    proc = _cli("--help")
    assert proc.returncode == cli.EXIT_OK
    listed = set(re.findall(r"^    ([a-z]+) ", proc.stdout, flags=re.M))
    present = set()
    for name, module in cli._COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            present.add(name)
    assert {"index", "inspect", "bench"} <= present <= listed, (present, listed)
    for name in sorted(present):  # each command has its own help, and it exits 0
        sub = _cli(name, "--help")
        assert sub.returncode == cli.EXIT_OK, sub.stderr
        assert f"usage: ringload {name}" in sub.stdout


def test_no_command_is_a_usage_error():
    proc = _cli()
    assert proc.returncode == cli.EXIT_USAGE
    assert "COMMAND" in proc.stdout + proc.stderr


@pytest.fixture
def dataset(tmp_path, videos_dir):
    """A folder with two good videos (one in a subfolder) and one that is not a video."""
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    os.symlink(videos_dir / "bikes.mp4", d / "bikes.mp4")
    os.symlink(videos_dir / "sample_av1.mp4", d / "sub" / "sample_av1.mp4")
    (d / "sub" / "zz_garbage.mp4").write_bytes(b"this is not a video" * 100)
    return d


def _blocks(stdout: str) -> dict[str, str]:
    """Path -> its block of text output."""
    out, cur = {}, None
    for line in stdout.splitlines():
        if re.match(r"\d+ of \d+ files read|bounded defaults at ", line):
            cur = None  # the summary
        elif line and not line.startswith(" "):
            cur = line.split("  [", 1)[0]
            out[cur] = line
        elif cur is not None and line:
            out[cur] += "\n" + line
    return out


def test_inspect_takes_every_kind_of_source(dataset, tmp_path):
    """A directory, a glob, a CSV and a JSONL manifest, mixed with files: the sources `index` takes."""
    bikes, av1, garbage = dataset / "bikes.mp4", dataset / "sub" / "sample_av1.mp4", dataset / "sub" / "zz_garbage.mp4"
    (tmp_path / "m.csv").write_text("path,label\ndata/bikes.mp4,0\ndata/sub/zz_garbage.mp4,1\n")
    (tmp_path / "m.jsonl").write_text('{"path": "data/sub/sample_av1.mp4"}\n')
    cache = tmp_path / "cache"
    cases = {
        (str(dataset),): ([bikes, av1], [garbage]),
        (str(dataset / "**" / "*.mp4"),): ([bikes, av1], [garbage]),
        (str(tmp_path / "m.csv"),): ([bikes], [garbage]),
        (str(tmp_path / "m.jsonl"), str(bikes)): ([av1, bikes], []),
        (str(dataset / "sub" / "sample_av1.mp4"),): ([av1], []),
    }
    for args, (good, bad) in cases.items():
        proc = _cli("inspect", *args, cache=cache)
        blocks = _blocks(proc.stdout)
        assert "Traceback" not in proc.stderr and "not a regular file" not in proc.stdout + proc.stderr, proc.stderr
        assert proc.returncode == (cli.EXIT_FAILURE if bad else cli.EXIT_OK), (args, proc.stdout, proc.stderr)
        assert len(blocks) == len(good) + len(bad), (args, proc.stdout)
        for p in good:
            shown = next(b for k, b in blocks.items() if k.endswith(p.name))
            assert "suggested chunk_len" in shown and "error" not in shown, shown
        for p in bad:  # the typed error line, on stdout with the others and in the log
            assert f"{p}\n  error VideoOpenError: {p}" in proc.stdout, proc.stdout
            assert str(p) in proc.stderr
        if len(good) + len(bad) > 1:
            failed = f", {len(bad)} failed" if bad else ""
            assert f"{len(good)} of {len(good) + len(bad)} files read{failed}" in proc.stdout


def test_inspect_reports_a_source_that_resolves_to_nothing_and_goes_on(tmp_path, videos_dir):
    missing = tmp_path / "nothing-here"
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    proc = _cli("inspect", str(missing), str(empty), str(videos_dir / "bikes.mp4"), cache=tmp_path / "cache")
    assert proc.returncode == cli.EXIT_FAILURE
    assert f"{missing}\n  error ConfigError: source={str(missing)!r}: no such file or directory" in proc.stdout
    assert f"{empty}\n  error ConfigError: source={str(empty)!r}: the directory holds no video files" in proc.stdout
    assert "frames 250 " in proc.stdout and "1 of 3 files read, 2 failed" in proc.stdout


def test_inspect_json_exact_fps_codec_and_decoder(videos_dir, tmp_path):
    proc = _cli(
        "inspect", "--json", str(videos_dir / "bikes.mp4"), str(videos_dir / "carphone_pristine.mp4"),
        str(videos_dir / "sample_av1.mp4"), cache=tmp_path / "cache",
    )
    assert proc.returncode == cli.EXIT_OK, proc.stderr
    bikes, carphone, av1 = json.loads(proc.stdout)["files"]
    assert (bikes["fps"], bikes["fps_rational"]) == (25.0, "25/1")  # was 24.999999999999996
    assert (carphone["fps"], carphone["fps_rational"]) == (29.97, "30000/1001")
    assert (av1["codec"], av1["decoder"]) == ("av1", "libdav1d")  # was "codec": "libdav1d"
    assert (bikes["codec"], bikes["decoder"]) == ("h264", "h264")
    assert bikes["container_frames"] == 250
    text = _cli("inspect", str(videos_dir / "carphone_pristine.mp4"), str(videos_dir / "sample_av1.mp4"), cache=tmp_path / "cache")
    assert "fps 29.970 (30000/1001)" in text.stdout
    assert "codec av1 (decoder libdav1d)" in text.stdout


def test_inspect_uses_the_index_for_the_container_count(videos_dir, tmp_path, monkeypatch):
    """A warm index answers everything: inspect opens no file (it used to reopen it for the header)."""
    import av

    from ringload.probe import probe

    path = videos_dir / "decord_corrupted.mp4"
    cache = tmp_path / "cache"
    probe(path, cache=cache)
    monkeypatch.setenv("RINGLOAD_CACHE_DIR", str(cache))
    monkeypatch.setattr(av, "open", lambda *a, **k: pytest.fail("inspect reopened the file"))
    out = io.StringIO()
    rc = _cli_inspect.run(SimpleNamespace(paths=[str(path)], stream=None, json=False, no_cache=False), out=out)
    assert rc == 0
    assert "frames 28 (its container claims 50)" in out.getvalue()


def test_inspect_takes_the_median_gop_over_all_files_as_the_loader_does(videos_dir, tmp_path):
    # bikes.mp4 has 5 GOPs of 30-61 frames, the other file 3 of 250: the median of the two
    # files' medians (150) is not the loader's median over all 8 intervals.
    from ringload import plan, probe
    from ringload._bounded import median_gop

    files = [videos_dir / "bikes.mp4", videos_dir / "sample_with_increasing_timestamps_320w_240h.mp4"]
    kfs = [np.unique(np.asarray(probe(str(f)).keyframes, dtype=np.int64)) for f in files]
    want = plan.chunk_len_for_gop(median_gop(np.concatenate(kfs), np.cumsum([0] + [len(k) for k in kfs])))
    proc = _cli("inspect", "--json", *map(str, files), cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["bounded"]["chunk_len"] == doc["suggested_chunk_len"] == want
