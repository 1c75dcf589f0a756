"""Decoders talk only to the loader that started them: no socket name exists to hijack."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import pickle
import shutil
import socket
import struct
import tempfile
import threading
import time

from helpers import collect

import ringload

KW = dict(batch_size=8, size=(24, 32), sampling="strict", seed=1)


def _ringload_socket_names() -> set[str]:
    with open("/proc/net/unix") as f:
        next(f)
        return {ln.split()[-1] for ln in f if len(ln.split()) >= 8 and "ringload" in ln.split()[-1]}


def _attacker(uid: int, gid: int, folder: str, payload: bytes, budget_s: float) -> None:
    """As another user: find the loader's socket names and serve ``payload`` on any it can bind."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    seen: set[str] = set()
    bound = []
    served = 0
    open(os.path.join(folder, "ready"), "w").close()
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline and not os.path.exists(os.path.join(folder, "stop")):
        for name in _ringload_socket_names() - seen:
            seen.add(name)
        for name in list(seen):
            if name in {b[0] for b in bound} or not name.startswith("@"):
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind(b"\0" + name[1:].encode())
            except OSError:
                s.close()  # the loader still listens there
                continue
            s.listen(64)
            s.setblocking(False)
            bound.append((name, s))
        for _, s in bound:
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                continue
            conn.sendall(struct.pack("<I", len(payload)) + payload)
            served += 1
            conn.close()
        time.sleep(0.002)
    with open(os.path.join(folder, "result"), "w") as f:
        f.write(f"{len(seen)} {len(bound)} {served}")


def test_no_named_socket_while_decoders_start_and_run(engine_videos):
    found: set[str] = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            found.update(_ringload_socket_names())
            time.sleep(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        for _ in range(2):
            ringload.VideoLoader(engine_videos, num_workers=3, **KW).close()  # closed while decoders start
        with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
            assert len(collect(loader, limit=3)) == 3
    finally:
        stop.set()
        t.join(5)
    assert found == set()


def test_a_second_local_user_cannot_feed_the_decoders(engine_videos, second_user):
    uid, gid = second_user
    # pytest's tmp_path is private to root: the other user needs a folder it can write.
    folder = pathlib.Path(tempfile.mkdtemp(prefix="ringload-attack-"))
    os.chmod(folder, 0o777)
    marker = folder / "payload-ran"
    payload = pickle.dumps(_MkdirPayload(str(marker)))
    ctx = multiprocessing.get_context("spawn")
    attacker = ctx.Process(target=_attacker, args=(uid, gid, str(folder), payload, 60.0), daemon=True)
    attacker.start()
    try:
        deadline = time.monotonic() + 30
        while not (folder / "ready").exists():
            assert attacker.exitcode is None and time.monotonic() < deadline, "the attacker process did not start"
            time.sleep(0.01)
        for _ in range(3):
            # Closed right after construction: the decoders are still starting.
            ringload.VideoLoader(engine_videos, num_workers=4, **KW).close()
        with ringload.VideoLoader(engine_videos, num_workers=2, **KW) as loader:
            assert len(collect(loader, limit=3)) == 3
    finally:
        (folder / "stop").touch()
        attacker.join(30)
        if attacker.exitcode is None:
            attacker.kill()
            attacker.join(5)
    seen, bound, served = map(int, (folder / "result").read_text().split())
    ran = marker.exists()
    shutil.rmtree(folder)
    assert not ran, f"a decoder ran the attacker's payload ({served} connections served)"
    assert (seen, bound, served) == (0, 0, 0)


class _MkdirPayload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))
