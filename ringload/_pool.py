"""The decoder pool: spawned decoder processes, their handshake, liveness and teardown.

Runs on the scheduler's event loop. Each decoder inherits one end of a socketpair at
spawn (no name, so no other process can reach it), says ``Hello``, gets the ring's
descriptor, and then takes tasks. A decoder's death is seen through its process sentinel;
a hang (past its task's timeout) or a start-up that takes longer than the start-up
timeout is ended by ``kill``. The pool reports every message and death to its owner
(the scheduler), which decides what they mean. ``num_workers=0`` runs one in-process
decoder on the loop thread instead, same code, same batches.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import time
import weakref

from . import _decoder
from . import _protocol as P
from .probe import MAIN_GUARD_EXIT, MAIN_GUARD_HELP

log = logging.getLogger(__name__)

MIN_STARTUP_TIMEOUT_S = 10.0  # a decoder not ready within max(this, task_timeout_s) is replaced
_STARTUP_FAILURES = 3  # consecutive deaths before any decoder was ready, then the loader gives up

# The spawn target; tests substitute an entry that injects faults (functools.partial of a
# module-level function, so it pickles by reference into the child).
decoder_entry = _decoder.main

# Pools alive in this process, so that a forked child can forget their processes.
_LIVE: weakref.WeakSet = weakref.WeakSet()


def _forget_decoders_in_child() -> None:
    # multiprocessing's exit hook terminates every child it knows of, even in a process
    # forked by os.fork(): the decoders are the parent's, so the child must not know them.
    from multiprocessing import process

    for pool in list(_LIVE):
        for dec in list(pool.decoders.values()):
            if dec.proc is not None:
                process._children.discard(dec.proc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_decoders_in_child)


class DecoderHandle:
    """The consumer's view of one decoder: its process, channel and the tasks it holds."""

    def __init__(self, wid: int, proc, pid: int):
        self.id = wid
        self.proc = proc
        self.pid = pid
        self.sock: socket.socket | None = None  # our end of the channel until the transport takes it
        self.handshake: asyncio.Task | None = None
        self.transport = None
        self.ready = self.dead = self.ever_ready = self.hung = False
        self.started = time.monotonic()
        self.torch_loaded = None
        self.inflight: collections.OrderedDict = collections.OrderedDict()  # task id -> _work.Work
        self.deadline: float | None = None  # of the head task
        self.last: tuple[int, int] | None = None  # (video, GOP) its last task ended in
        self.open: collections.OrderedDict[int, None] = collections.OrderedDict()  # videos it holds open

    def opened(self, video: int, keep: int) -> None:
        self.open[video] = None
        self.open.move_to_end(video)
        while len(self.open) > keep:
            self.open.popitem(last=False)


class _Proto(asyncio.Protocol):
    def __init__(self, pool, dec):
        self.pool = pool
        self.dec = dec
        self.reader = P.MessageReader()

    def connection_made(self, transport):
        # Set here, not after connect_accepted_socket returns: "ready" can arrive first.
        self.dec.transport = transport

    def data_received(self, data):
        try:
            for msg in self.reader.feed(data):
                self.pool.owner.on_message(self.dec, msg)
        except Exception as exc:  # a bug here must not leave the consumer waiting forever
            self.pool.owner.fatal(exc)

    def connection_lost(self, exc):
        self.dec.ready = False


class DecoderPool:
    """``owner`` gets ``on_message(dec, msg)``, ``on_death(dec, works, cause)`` and ``fatal(exc)``."""

    def __init__(self, *, owner, loop, ring, index, num_workers: int, options: P.DecoderOptions, startup_timeout_s: float):
        self.owner = owner
        self.loop = loop
        self.ring = ring
        self.index = index  # _indexfile.IndexFile: its descriptor goes to every decoder with the ring's
        self.num_workers = num_workers
        self.options = options
        self.startup_timeout_s = startup_timeout_s
        self.owner_pid = os.getpid()  # only this process ever signals or reaps the decoders
        self.decoders: dict[int, DecoderHandle] = {}
        self.closing = False
        self._ctx = multiprocessing.get_context("spawn")
        self._token = secrets.token_bytes(16)
        self._startup_failures: list[str] = []  # causes of consecutive deaths before a decoder was ready
        _LIVE.add(self)

    def start(self) -> None:
        if self.num_workers == 0:
            self.decoders[0] = _InlineDecoder(self)
            return
        for wid in range(self.num_workers):
            self._spawn(wid)

    def idle(self, depth: int):
        """Decoders that can take another task now."""
        return [d for d in self.decoders.values() if d.ready and not d.dead and d.transport is not None and len(d.inflight) < depth]

    def send(self, dec: DecoderHandle, work, msg: P.Task) -> None:
        dec.inflight[work.task_id] = work
        if len(dec.inflight) == 1:
            dec.deadline = time.monotonic() + work.timeout_s
        dec.transport.write(P.encode(msg))

    def finished(self, dec: DecoderHandle, task_id: int):
        """The Work of a reply, or None when it was lost (its decoder was replaced)."""
        work = dec.inflight.pop(task_id, None)
        if work is not None:
            self._startup_failures.clear()
            head = next(iter(dec.inflight.values()), None)
            dec.deadline = time.monotonic() + head.timeout_s if head is not None else None
        return work

    def snapshot(self) -> list[dict]:
        return [{"id": d.id, "pid": d.pid, "ready": d.ready, "torch_loaded": d.torch_loaded} for d in list(self.decoders.values())]

    def pids(self) -> list[int]:
        return [d.pid for d in list(self.decoders.values()) if d.proc is not None and not d.dead]

    # ---- processes

    def _spawn(self, wid: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = self._ctx.Process(target=decoder_entry, args=(theirs, self._token, wid), name=f"ringload-decoder-{wid}", daemon=True)
            proc.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        dec = DecoderHandle(wid, proc, proc.pid)
        dec.sock = ours
        self.decoders[wid] = dec
        self.loop.add_reader(proc.sentinel, self._on_sentinel, dec)
        dec.handshake = self.loop.create_task(self._handshake(dec))

    async def _handshake(self, dec: DecoderHandle) -> None:
        conn = dec.sock
        try:
            conn.setblocking(False)
            reader = P.MessageReader()
            msgs: list = []
            while not msgs:
                data = await self.loop.sock_recv(conn, 1 << 16)
                if not data or dec.dead:
                    return
                msgs = reader.feed(data)
            hello = msgs[0]
            if not isinstance(hello, P.Hello) or hello.token != self._token or hello.version != P.PROTOCOL_VERSION:
                log.warning("decoder %d (pid %d) sent an unexpected first message; replacing it", dec.id, dec.pid)
                self.kill(dec)
                return
            dec.torch_loaded = hello.torch_loaded
            ring_msg = P.Ring(self.ring.layout, self.options, self.index.name)
            socket.send_fds(conn, [P.encode(ring_msg)], [self.ring.fd, self.index.fd])
            dec.sock = None  # the transport owns it from here
            transport, _ = await self.loop.connect_accepted_socket(lambda: _Proto(self, dec), sock=conn)
            if dec.dead:
                transport.close()
        except (OSError, ValueError, P.ProtocolError) as exc:
            if not dec.dead:
                log.warning("decoder %d (pid %d) handshake failed: %s", dec.id, dec.pid, exc)
                self.kill(dec)
        finally:
            if dec.sock is not None:  # not handed to a transport: EOF tells the decoder to exit
                dec.sock.close()
                dec.sock = None

    def ready(self, dec: DecoderHandle, msg: P.Ready) -> None:
        dec.ready = dec.ever_ready = True
        dec.torch_loaded = dec.torch_loaded or msg.torch_loaded

    def kill(self, dec: DecoderHandle) -> None:
        """End a decoder now; its death then arrives through the sentinel like any other."""
        if dec.proc is None or dec.dead:
            return
        try:
            os.kill(dec.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _on_sentinel(self, dec: DecoderHandle) -> None:
        try:
            self._on_death(dec)
        except Exception as exc:
            self.owner.fatal(exc)

    def _on_death(self, dec: DecoderHandle) -> None:
        if dec.dead:
            return
        dec.dead = True
        dec.ready = False
        try:
            self.loop.remove_reader(dec.proc.sentinel)
        except (ValueError, OSError):
            pass
        dec.proc.join(2.0)  # the sentinel fires as the process exits; reaping can take a moment
        if dec.transport is not None:
            dec.transport.close()
        self.decoders.pop(dec.id, None)
        if self.closing:
            return
        exitcode = dec.proc.exitcode
        if exitcode is not None:
            dec.proc.close()
        works = list(dec.inflight.values())
        dec.inflight.clear()
        cause = death_cause(exitcode, dec.hung)
        log.warning("decoder %d (pid %d) %s; %d tasks re-run", dec.id, dec.pid, cause, len(works))
        if not dec.ever_ready:
            self._startup_death(exitcode, cause)
        self.owner.on_death(dec, works, cause)
        self._spawn(dec.id)

    def _startup_death(self, exitcode, cause: str) -> None:
        from .errors import WorkerError

        if exitcode == MAIN_GUARD_EXIT:
            raise WorkerError(f"a decoder process re-ran your script's loader construction. {MAIN_GUARD_HELP}")
        self._startup_failures.append(cause)
        if len(self._startup_failures) > _STARTUP_FAILURES:
            msg = (
                f"{len(self._startup_failures)} decoder processes in a row exited during start-up "
                f"({'; '.join(self._startup_failures)}); see their output on stderr"
            )
            if exitcode == 1:  # an exception in the child
                msg += ". Decoders are spawned and import your main module: build the loader under `if __name__ == \"__main__\":`"
            raise WorkerError(msg)

    def check_deadlines(self, now: float) -> None:
        """Kill decoders that hang in a task or in their start-up (the watchdog's tick)."""
        for dec in list(self.decoders.values()):
            if dec.dead or dec.proc is None:
                continue
            if not dec.ever_ready and now - dec.started > self.startup_timeout_s:
                log.warning(
                    "decoder %d (pid %d) did not start within %.0f s (task_timeout_s, at least %.0f s); replacing it",
                    dec.id, dec.pid, self.startup_timeout_s, MIN_STARTUP_TIMEOUT_S,
                )
                dec.started = now
                self.kill(dec)
            elif dec.deadline is not None and now > dec.deadline:
                head = next(iter(dec.inflight.values()))
                log.warning(
                    "decoder %d (pid %d) spent more than %.1f s on one task; killing and replacing it (task_timeout_s)",
                    dec.id, dec.pid, head.timeout_s,
                )
                self.owner.counters["hung_decoders_killed"] += 1
                dec.hung = True
                dec.deadline = None
                self.kill(dec)

    async def shutdown(self) -> None:
        """EOF to every decoder, then join, terminate, kill, each with a timeout."""
        self.closing = True
        decs = list(self.decoders.values())
        for dec in decs:
            if dec.proc is None:
                dec.close()
                continue
            try:
                self.loop.remove_reader(dec.proc.sentinel)
            except (ValueError, OSError):
                pass
            if dec.transport is not None:
                dec.transport.close()  # EOF on the control socket: the decoder exits
            elif dec.handshake is not None:
                dec.handshake.cancel()  # closes our end: the decoder sees EOF and exits
        await asyncio.sleep(0)  # let the cancelled handshakes close their sockets
        stop_processes([d.proc for d in decs if d.proc is not None], busy=[d.proc for d in decs if d.inflight and d.proc])
        self.decoders.clear()

    def close(self) -> None:
        """Whatever the loop could not stop (thread wedged or never started) dies here."""
        if os.getpid() == self.owner_pid:
            stop_processes([d.proc for d in list(self.decoders.values()) if d.proc is not None])


class _InlineDecoder(DecoderHandle):
    """``num_workers=0``: tasks run on the loop thread, in this process, one at a time."""

    def __init__(self, pool: DecoderPool):
        super().__init__(0, None, os.getpid())
        self.pool = pool
        self.runner = _decoder.TaskRunner(pool.ring.slots, pool.options, pool.index)
        self.transport = self  # send() writes here
        self.ready = self.ever_ready = True
        self.torch_loaded = "torch" in sys.modules

    def write(self, data: bytes) -> None:
        msg = P.MessageReader().feed(data)[0]  # the same codec as the processes use
        self.pool.loop.call_soon(self._run, msg)

    def _run(self, msg: P.Task) -> None:
        if self.pool.closing:
            return
        try:
            self.pool.owner.on_message(self, self.runner.run(msg))
        except Exception as exc:
            self.pool.owner.fatal(exc)

    def close(self) -> None:
        self.runner.close()


def stop_processes(procs, *, busy=(), steps=(("join", 3.0), ("terminate", 2.0), ("kill", 2.0))) -> None:
    """Stop processes: ``busy`` ones are terminated at once (their results are unwanted),
    the others are given ``join`` seconds to exit on EOF; then terminate, then kill."""
    for p in busy:
        if p.exitcode is None:
            p.terminate()
    for step, timeout in steps:
        alive = [p for p in procs if p.exitcode is None]
        if not alive:
            break
        for p in alive:
            if step == "terminate":
                p.terminate()
            elif step == "kill":
                p.kill()
        deadline = time.monotonic() + timeout
        while any(p.exitcode is None for p in alive) and time.monotonic() < deadline:
            time.sleep(0.02)
    for p in procs:
        if p.exitcode is None:
            log.warning("decoder pid %d did not exit", p.pid)
        else:
            try:
                p.close()
            except ValueError:  # already closed
                pass


def death_cause(exitcode, hung: bool) -> str:
    if hung:
        return "was killed after exceeding its task timeout (task_timeout_s)"
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
