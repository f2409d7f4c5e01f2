"""Memory of processes for the benchmarks: PSS of one process, of a process tree, sampled.

PSS (proportional set size) is resident memory with each shared page (torch's libraries)
divided among the processes that map it, so a sum over processes counts every page once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def pss_mb(pid: int) -> float:
    """PSS of one process in MB (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    """Direct children of `pid` from /proc/<pid>/task/*/children (CONFIG_PROC_CHILDREN)."""
    out: list[int] = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in f.read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def _parents() -> dict[int, list[int]]:
    """Every process's children, from the ppid field of /proc/*/stat (no children files)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])  # the name (field 2) may hold spaces
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


_HAS_CHILDREN_FILES = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()


def tree(root: int) -> list[int]:
    """`root` and all its descendants alive now."""
    kids = None if _HAS_CHILDREN_FILES else _parents()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += _children(pid) if kids is None else kids.get(pid, [])
    return out


class Peak:
    """The largest value seen by `sample_pss` so far."""

    mb: float = 0.0


@contextmanager
def sample_pss(pids: Callable[[], list[int]], every: float = 0.2) -> Iterator[Peak]:
    """Sum the PSS of `pids()` every `every` seconds (a sample of 1,000 processes takes
    longer, and then the next starts at once) in a thread while the block runs; the
    yielded `Peak.mb` holds the largest sum, including one last sample at the end."""
    peak, stop = Peak(), threading.Event()

    def sample() -> None:
        peak.mb = max(peak.mb, sum(pss_mb(p) for p in pids()))

    def loop() -> None:
        while not stop.wait(every):
            sample()

    th = threading.Thread(target=loop, daemon=True, name="pss-sampler")
    sample()
    th.start()
    try:
        yield peak
    finally:
        stop.set()
        th.join()
        sample()
