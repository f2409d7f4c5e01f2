"""Whether a process runs: what the launcher, its nodes, `byzctl status` and the service
ask of pids they recorded."""

from __future__ import annotations

import os


def pid_alive(pid: int | None) -> bool:
    """Whether `pid` runs. A killed process its parent has not reaped yet (a zombie, as
    a killed launcher can be while still a node's parent) counts as gone."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: os.kill said it exists


def byzctl_alive(pid: int | None) -> bool:
    """Whether `pid` runs and is a byzctl process (not a pid the system reused since)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"byzctl" in fh.read()
    except OSError:
        return False
