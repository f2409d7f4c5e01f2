"""The states a run is recorded in (run.json, summary.json, `byzctl status`)."""

from __future__ import annotations

from enum import Enum


class RunState(str, Enum):
    """A run's state. The first four are written by the launcher; LOST and STALE are
    what `byzctl status` reads from a RUNNING record whose processes are gone."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"
    LOST = "LOST"
    """RUNNING in run.json, but the launcher's process is gone (killed)."""
    STALE = "STALE"
    """RUNNING in run.json, but none of its node processes is alive."""

    def __str__(self) -> str:
        return self.value

    @property
    def exit_code(self) -> int:
        """What `byzctl run` and a node exit with when the run ended so."""
        return {RunState.COMPLETED: 0, RunState.INTERRUPTED: 130}.get(self, 1)
