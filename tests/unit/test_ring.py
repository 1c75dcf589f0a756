import multiprocessing
import os
import socket
import stat

import pytest

from ringload import _ring


def _child_write(address, layout, value):
    """Spawned child: receive the ring's descriptor over a Unix socket, map it, write."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 1)
    ring = _ring.AttachedRing(fds[0], layout)
    ring.slots[1, 0, 0] = value
    ring.close()
    sock.sendall(b"k")
    sock.close()


def test_segment_mode_0600_random_name_and_unlinked_at_once():
    layout = _ring.RingLayout(3, (2, 1, 4, 6, 3))
    names = set()
    for _ in range(3):
        ring = _ring.Ring(layout, unlink=False)
        try:
            path = "/dev/shm" + ring.name
            st = os.stat(path)
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == os.getuid()
            assert ring.name.startswith(_ring.NAME_PREFIX) and len(ring.name) > len(_ring.NAME_PREFIX) + 16
            names.add(ring.name)
            ring.unlink()
            assert not os.path.exists(path)
            # The mapping outlives the name.
            ring.slots[2, 1, 0, 3, 5] = 7
            assert ring.slots[2, 1, 0, 3, 5, 0] == 7
        finally:
            ring.close()
            ring.close()  # idempotent
    assert len(names) == 3
    # The default: no name left by the time the constructor returns.
    ring = _ring.Ring(layout)
    try:
        assert not os.path.exists("/dev/shm" + ring.name)
    finally:
        ring.close()


def test_layout_slots_page_aligned_and_views_disjoint():
    layout = _ring.RingLayout(4, (3, 2, 5, 7, 3))
    assert layout.slot_stride % 4096 == 0 and layout.slot_stride >= layout.frame_bytes
    ring = _ring.Ring(layout)
    try:
        assert ring.slots.shape == (4, 3, 2, 5, 7, 3)
        for s in range(4):
            ring.slots[s] = s + 1
        for s in range(4):
            assert (ring.slots[s] == s + 1).all()
        base = ring.slots.__array_interface__["data"][0]
        assert base % 4096 == 0
    finally:
        ring.close()
    with pytest.raises(ValueError):
        _ring.RingLayout(0, (1, 1, 1, 1, 3))


def test_descriptor_passing_to_spawned_process():
    """A process started after the name is gone still maps the same memory (send_fds)."""
    layout = _ring.RingLayout(2, (1, 1, 2, 2, 3))
    ring = _ring.Ring(layout)
    address = b"\0ringload-test-" + os.urandom(6).hex().encode()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(1)
    listener.settimeout(60)
    proc = multiprocessing.get_context("spawn").Process(target=_child_write, args=(address, layout, 9))
    proc.start()
    try:
        conn, _ = listener.accept()
        conn.settimeout(60)
        socket.send_fds(conn, [b"r"], [ring.fd])
        assert conn.recv(1) == b"k"
        conn.close()
        proc.join(60)
        assert proc.exitcode == 0
        assert (ring.slots[1, 0, 0] == 9).all()
        assert (ring.slots[0] == 0).all()
    finally:
        if proc.exitcode is None:
            proc.kill()
            proc.join(5)
        listener.close()
        ring.close()

