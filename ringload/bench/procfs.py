"""Process-tree accounting from ``/proc``: CPU seconds and summed RSS/PSS of a process and
all its descendants (a contender's consumer, its workers and their helpers)."""

from __future__ import annotations

import os
import pathlib
import threading

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of the one process ``pid`` (not its children); None once it is gone."""
    f = _proc_stat(pid)
    return None if f is None else (int(f[11]) + int(f[12])) / _CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root``'s live process tree, including reaped children."""
    ticks = 0
    for pid in tree_pids(root):
        f = _proc_stat(pid)
        if f:
            # fields after comm: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / _CLK_TCK


def tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over ``root``'s process tree."""
    rss = pss = 0
    for pid in tree_pids(root):
        try:
            rss += int(pathlib.Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
            for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
        except (OSError, IndexError, ValueError):
            continue
    return rss, pss


class MemorySampler:
    """Samples the tree's summed RSS/PSS on a thread; keeps the peaks."""

    def __init__(self, root: int, interval_s: float = 0.25):
        self.root = root
        self.interval_s = interval_s
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-mem", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def sample(self):
        rss, pss = tree_memory(self.root)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.sample()
