"""A closed stdout (`ringload inspect ... | head -1`) ends a command quietly with exit status
141, as for tools killed by SIGPIPE: no traceback, no "Exception ignored" on stderr."""

import fcntl
import os
import subprocess

import pytest

from helpers import console_script

from ringload import cli

from helpers import REPO
PIPE_SIZE = 4096  # the smallest pipe Linux makes: the output below is longer, so a write must fail


def _env(cache):
    return dict(
        os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), RINGLOAD_CACHE_DIR=str(cache)
    )


def _small_pipe():
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) == PIPE_SIZE
    return r, w


def _read_line(fd) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        b = os.read(fd, 1)  # one byte at a time: leave everything else in the pipe
        assert b, f"end of output before a full line: {line!r}"
        line += b
    return line


def _assert_quiet(err: bytes):
    text = err.decode(errors="replace")
    assert "Traceback" not in text and "BrokenPipeError" not in text and "Exception ignored" not in text, text


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [[], ["--json"]], ids=["text", "json"])
def test_inspect_into_a_reader_that_leaves_after_one_line(fmt, videos_dir, tmp_path):
    cmd = [*console_script(), "inspect", *fmt, str(videos_dir)]
    env = _env(tmp_path / "cache")
    full = subprocess.run(cmd, capture_output=True, timeout=300, env=env)  # also fills the cache
    assert full.returncode == cli.EXIT_OK, full.stderr

    r, w = _small_pipe()
    proc = subprocess.Popen(cmd, stdout=w, stderr=subprocess.PIPE, env=env)
    os.close(w)
    try:
        first = _read_line(r)
    finally:
        os.close(r)  # the reader is gone, like `head -1` after its line
    _, err = proc.communicate(timeout=300)
    assert first == full.stdout.splitlines(keepends=True)[0]
    # The pipe holds PIPE_SIZE bytes and the reader took one line: the rest was written after it left.
    assert len(full.stdout) > PIPE_SIZE + len(first)
    _assert_quiet(err)
    assert proc.returncode == cli.EXIT_BROKEN_PIPE == 141


def test_index_into_a_closed_pipe(videos_dir, tmp_path):
    r, w = os.pipe()
    os.close(r)  # nobody reads: the summary cannot be written
    proc = subprocess.Popen(
        [*console_script(), "index", str(videos_dir), "--workers", "2", "--no-progress"],
        stdout=w, stderr=subprocess.PIPE, env=_env(tmp_path / "cache"),
    )
    os.close(w)
    _, err = proc.communicate(timeout=300)
    _assert_quiet(err)
    assert proc.returncode == cli.EXIT_BROKEN_PIPE == 141
    # The work was done all the same: the cache holds every video.
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 26


def test_a_broken_pipe_elsewhere_is_not_taken_for_a_closed_stdout(monkeypatch, capsys):
    """Only a closed stdout ends quietly; a BrokenPipeError from anything else is a bug to show."""

    def boom(args):
        raise BrokenPipeError(32, "Broken pipe (some other pipe)")

    monkeypatch.setattr("ringload._cli_inspect.run", boom)
    with pytest.raises(BrokenPipeError, match="some other pipe"):
        cli.main(["inspect", "x.mp4"])
