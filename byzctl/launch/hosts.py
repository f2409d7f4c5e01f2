"""Where local node processes come from: a fork server that imported torch and
byzctl once (multiprocessing `forkserver` with preloaded modules), so a host process
starts in milliseconds instead of paying ~3 CPU-seconds of cold imports, and shares
those pages with its siblings. The server lives as long as the launcher's process:
the jobs of a Hydra multirun reuse it.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

POLL_TTL_S = 0.05
"""How long a live host's poll answer holds: the launcher asks every node's outcome on
each pass of its loop, and asking the process itself (a select on its sentinel, ~0.1 ms)
for each of the 275 nodes of a host took a quarter of the launcher's time at case C."""

PRELOAD = ["byzctl.node.preload"]
"""Imported once by the fork server: torch, byzctl's roles, aggregators, attacks and data."""

_context: multiprocessing.context.ForkServerContext | None = None

MALLOC_ARENAS = "2"
"""glibc's malloc arenas for the fork server and its hosts (MALLOC_ARENA_MAX, unless the
environment sets it): by default every thread that allocates may get an arena of its own
(up to 8 a core), and a host of many node threads kept hundreds of MB in them. With 2,
case B's four 31-node hosts held 440-470 MB of PSS each instead of 680-780 MB, at the same
speed (`byzctl run` of case B, 120 rounds, PSS from /proc/<pid>/smaps_rollup)."""


def fork_server() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        os.environ.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENAS)  # read by the server's libc when it starts
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def warm_up() -> None:
    """Start the fork server now: its imports (torch, ~3 CPU-seconds) overlap the
    launcher's own. Imports nothing heavy itself (`byzctl run` calls it first thing)."""
    from multiprocessing import forkserver

    fork_server()
    forkserver.ensure_running()


@dataclass
class Host:
    """One host process and the logical nodes it carries; answers like a Popen."""

    nodes: list[int]
    process: multiprocessing.process.BaseProcess = field(repr=False)
    _polled_at: float = field(default=-1.0, repr=False)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs (asked of the process at most every POLL_TTL_S)."""
        now = time.monotonic()
        if now - self._polled_at < POLL_TTL_S:
            return None
        code = self.process.exitcode
        if code is None:
            self._polled_at = now
        return code

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode


def start_host(nodes: list[int], control: str, run_id: str, resolved: Path, log_path: Path) -> Host:
    """A host process for `nodes`, forked from the preloaded server; its output goes to `log_path`."""
    # torch comes with these: imported here, not by `warm_up`'s callers
    from byzctl.node.host import HostArgs, host_main

    args = HostArgs(nodes=tuple(nodes), control=control, run_id=run_id, resolved=str(resolved),
                    run_dir=str(resolved.parent), log_path=str(log_path), launcher_pid=os.getpid())
    proc = fork_server().Process(target=host_main, args=(args,), name=f"byzctl-host-{nodes[0]}", daemon=False)
    proc.start()
    return Host(nodes=list(nodes), process=proc)
