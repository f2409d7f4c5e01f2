"""What every experiment logger shares: its config base class, the sink it opens, and
how a metrics.jsonl row becomes scalars.

A logger copies the run's record elsewhere; it never replaces it. The launcher opens
the logger's sink before any node starts, hands it every row it appends to
metrics.jsonl, and closes it with the run's final state whatever ended the run.
The row format is the run directory's (byzctl/launch/rundir.py); `Scalars` maps it
to tags so every logger names the same figure the same way:

    server or peer row   {"round": 20, "node": 0, "role": "server", "test_accuracy": ...}
                         -> test_accuracy/server_0, test_loss/server_0      (step 20)
    honest summary row   {"round": 20, "kind": "honest", "mean_accuracy": ..., ...}
                         -> honest/mean_accuracy, honest/consensus_distance, ...
    fault event          {"event": "node_lost", "node": 3, "round": 17, ...}
                         -> events/node_lost = how many so far              (step 17)
"""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from byzctl.errors import ConfigError

INSTALL_HINT = "pip install 'byzctl[loggers]'"


@dataclass(kw_only=True)
class RunContext:
    """What the launcher tells a logger about the run it records."""

    path: Path
    """The run directory (where metrics.jsonl lives)."""
    config: dict[str, Any]
    """The resolved config, as plain data."""
    label: str
    """A short name of the run, e.g. `2026-11-23/10-00-00` (a sweep job: `10-00-00/3`)."""
    tags: dict[str, str] = field(default_factory=dict)
    """What identifies the run at a glance: config hash, topology, aggregator, attack."""
    headline: list[str] = field(default_factory=list)
    """Tags of the figures that sum the run up (the server's, or the honest peers' summary)."""
    resumed_from: int | None = None
    """`resume=`: the checkpoint round the run continues from."""
    previous: dict[str, Any] = field(default_factory=dict)
    """`resume=`: what this logger recorded in run.json (`logger`) the first time."""


class Sink(Protocol):
    """An open logger: gets every metrics.jsonl row, then the run's final state once."""

    record: dict[str, Any]
    """Where the logger writes, kept in run.json under `logger`."""

    def row(self, row: dict[str, Any]) -> None: ...

    def close(self, state: str) -> None: ...


@dataclass(kw_only=True)
class Logger:
    """Base config of an experiment logger."""

    _target_: str = "byzctl.loggers.base.Logger"
    name: str = ""
    """The logger's name, as in `logger=<name>`."""

    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(module, pip package) pairs the logger imports."""

    def requirements(self) -> tuple[tuple[str, str], ...]:
        return self.requires

    def check(self) -> None:
        """Raise ConfigError naming the packages to install, before any node starts."""
        missing = [pkg for module, pkg in self.requirements() if importlib.util.find_spec(module) is None]
        if missing:
            raise ConfigError(
                f"logger={self.name} needs the Python package{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)}, not installed here: pip install {' '.join(missing)} "
                f"(or {INSTALL_HINT}), or run with logger=none")

    def open(self, ctx: RunContext) -> Sink | None:
        """The sink that records this run, or None when rows go to metrics.jsonl only."""
        return None


class Scalars:
    """Turns metrics.jsonl rows into (step, {tag: value}); counts fault events."""

    SKIP: ClassVar[frozenset[str]] = frozenset({"round", "node", "role", "kind", "nodes", "time", "event", "reason"})

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()

    def __call__(self, row: dict[str, Any]) -> tuple[int, dict[str, float]] | None:
        step = row.get("round")
        if not isinstance(step, int):
            return None
        if "event" in row:
            event = str(row["event"])
            self.events[event] += 1
            return step, {f"events/{event}": float(self.events[event])}
        if row.get("kind") == "honest":
            name = "honest/{}"
        elif "node" in row:
            name = f"{{}}/{row.get('role', 'node')}_{row['node']}"
        else:
            name = "{}"
        out = {name.format(k): float(v) for k, v in row.items()
               if k not in self.SKIP and isinstance(v, int | float) and not isinstance(v, bool)}
        return step, out


def headline(decentralized: bool, server: int | None) -> list[str]:
    """The tags that sum a run up, as `Scalars` names them."""
    if decentralized:
        return ["honest/mean_accuracy", "honest/worst_accuracy", "honest/mean_loss", "honest/consensus_distance"]
    return [f"test_accuracy/server_{server}", f"test_loss/server_{server}"] if server is not None else []


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """{"aggregator": {"name": "krum"}} -> {"aggregator.name": "krum"}; lists and null
    as text; `_target_` (a class path) and the logger's own settings left out."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        if key == "_target_" or (not prefix and key == "logger"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
            out[name] = value
        else:
            out[name] = "null" if value is None else str(value)
    return out
