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


class AgentState(str, Enum):
    """A `byzctl agent`'s state in the service's database (`GET /agents`)."""

    IDLE = "IDLE"
    """Online and free: a new session may lock it."""
    TRAINING = "TRAINING"
    """Locked by a session (its node runs there, or is about to)."""
    LOST = "LOST"
    """No heartbeat for the service's agent timeout (dead, hung or cut off)."""

    def __str__(self) -> str:
        return self.value

    @property
    def online(self) -> bool:
        return self is not AgentState.LOST
