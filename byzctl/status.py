"""`byzctl status [DIR] [--json]`: the runs under a directory with their state.

This module also reads run directories for `byzctl report`: a run is any folder
holding a `run.json`; its figures come from `summary.json` once it ended and from
`metrics.jsonl` while it runs, its settings from `config.yaml` (the resolved config)
and `.hydra/overrides.yaml` (what the user typed, one job of a sweep).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from byzctl.errors import ByzctlError
from byzctl.procs import pid_alive
from byzctl.states import RunState

SKIP_DIRS = {".hydra", "nodes", "checkpoints", "__pycache__"}
"""Folders inside a run directory that never hold another run."""


# -- reading run directories -----------------------------------------------------------
@dataclass
class Point:
    """One evaluation round of a run, whatever its topology."""

    round: int
    accuracy: float | None
    """Server accuracy (ps), or the mean over honest nodes (decentralized)."""
    loss: float | None
    worst_accuracy: float | None = None
    """Lowest honest node's accuracy (decentralized only)."""
    consensus_distance: float | None = None
    """Mean squared distance of honest models to their average (decentralized only)."""


@dataclass
class Run:
    """One run directory, read once."""

    path: Path
    info: dict[str, Any]
    """run.json."""
    summary: dict[str, Any] = field(default_factory=dict)
    """summary.json ({} while the run is running or if it failed before launch)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved config (config.yaml, else .hydra/config.yaml)."""
    overrides: list[str] = field(default_factory=list)
    """The job's overrides (.hydra/overrides.yaml)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """metrics.jsonl rows."""

    @classmethod
    def read(cls, path: Path) -> Run:
        info = _read_json(path / "run.json")
        if not isinstance(info, dict):
            info = {"state": "UNREADABLE", "reason": f"{path / 'run.json'} is not a JSON object"}
        summary = _read_json(path / "summary.json")
        config = _read_yaml(path / "config.yaml") or _read_yaml(path / ".hydra" / "config.yaml")
        overrides = _read_yaml(path / ".hydra" / "overrides.yaml")
        return cls(
            path=path, info=info, summary=summary if isinstance(summary, dict) else {},
            config=config if isinstance(config, dict) else {},
            overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
            rows=_read_jsonl(path / "metrics.jsonl"),
        )

    # -- state ------------------------------------------------------------------------
    @cached_property
    def state(self) -> str:
        """run.json's state; a RUNNING run whose launcher (on this host) is gone is LOST,
        and one whose node processes are all gone is STALE."""
        state = str(self.info.get("state", "UNKNOWN"))
        if state == RunState.RUNNING and self._launcher_gone:
            return RunState.LOST
        pids = self.info.get("pids") or {}
        if state == RunState.RUNNING and pids and not any(pid_alive(int(p)) for p in pids.values()):
            return RunState.STALE
        return state

    @property
    def _launcher_gone(self) -> bool:
        pid, host = self.info.get("launcher_pid"), self.info.get("host")
        return isinstance(pid, int) and host == socket.gethostname() and not pid_alive(pid)

    @property
    def reason(self) -> str:
        if self.state == RunState.LOST:
            return (f"run.json says RUNNING but its launcher (pid {self.info.get('launcher_pid')}) is gone: "
                    "it was killed before it could record the end; remote nodes stop on their own")
        if self.state == RunState.STALE:
            return "run.json says RUNNING but none of its node processes is alive (the launcher was killed?)"
        return str(self.info.get("reason") or self.summary.get("reason") or "")

    @property
    def job(self) -> str:
        """The scheduler's job of the run (`slurm 42 RUNNING`), asked live while it runs; '' if none."""
        slurm = self.info.get("slurm")
        if not isinstance(slurm, dict) or not slurm.get("job_id"):
            return ""
        state = slurm.get("state", "")
        if self.info.get("state") == RunState.RUNNING:
            import contextlib
            import subprocess

            from byzctl.launch.sbatch import job_state

            with contextlib.suppress(OSError, subprocess.SubprocessError, ByzctlError):
                state = job_state(str(slurm["job_id"]))
        return f"slurm {slurm['job_id']} {state}".strip()

    @property
    def started(self) -> float:
        """Start time (epoch seconds); run.json's mtime when the run never started."""
        t = self.info.get("started")
        if isinstance(t, (int, float)):
            return float(t)
        try:
            return (self.path / "run.json").stat().st_mtime
        except OSError:
            return 0.0

    # -- progress and figures ----------------------------------------------------------
    @property
    def rounds(self) -> int | None:
        """Configured rounds."""
        r = self.config.get("rounds")
        return int(r) if isinstance(r, int) else None

    @property
    def rounds_done(self) -> int:
        done = self.summary.get("rounds_completed")
        if isinstance(done, int):
            return done
        return max((p.round for p in self.curve), default=0)

    @cached_property
    def curve(self) -> list[Point]:
        return curve(self.rows, byzantine_ids=self.byzantine_ids)

    @property
    def byzantine_ids(self) -> set[int]:
        return {int(n["id"]) for n in self.info.get("nodes") or [] if isinstance(n, dict) and n.get("byzantine")}

    @property
    def accuracy(self) -> float | None:
        """Final test accuracy: the summary's, else the last evaluation's."""
        for key in ("test_accuracy", "mean_accuracy"):
            if isinstance(self.summary.get(key), (int, float)):
                return float(self.summary[key])
        return next((p.accuracy for p in reversed(self.curve) if p.accuracy is not None), None)

    @property
    def loss(self) -> float | None:
        for key in ("test_loss", "mean_loss"):
            if isinstance(self.summary.get(key), (int, float)):
                return float(self.summary[key])
        return next((p.loss for p in reversed(self.curve) if p.loss is not None), None)

    @property
    def worst_accuracy(self) -> float | None:
        if isinstance(self.summary.get("worst_accuracy"), (int, float)):
            return float(self.summary["worst_accuracy"])
        return next((p.worst_accuracy for p in reversed(self.curve) if p.worst_accuracy is not None), None)

    @property
    def best(self) -> tuple[float | None, int | None]:
        """Best accuracy over evaluations and its round."""
        pts = [p for p in self.curve if p.accuracy is not None]
        if not pts:
            return self.accuracy, None
        top = max(pts, key=lambda p: p.accuracy)  # type: ignore[arg-type, return-value]
        return top.accuracy, top.round

    # -- what ran ------------------------------------------------------------------------
    def get(self, dotted: str) -> Any:
        """A value of the resolved config by dotted key (None when absent)."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def override(self, key: str) -> str | None:
        """The value this job's overrides gave `key` (`+key=` and `key=` alike)."""
        for ov in self.overrides:
            k, sep, v = ov.partition("=")
            if sep and k.lstrip("+~") == key:
                return v.strip("'\"")
        return None

    @property
    def aggregator(self) -> str:
        return str(self.summary.get("aggregator") or self.get("aggregator.name") or self.override("aggregator") or "?")

    @property
    def preaggs(self) -> list[str]:
        """Pre-aggregators in order (the identity `none` left out)."""
        if isinstance(self.summary.get("preagg"), list):
            return [str(p) for p in self.summary["preagg"] if p != "none"]
        pre = self.config.get("preagg")
        if isinstance(pre, dict):
            return [str(k) for k in pre if k != "none"]
        listed = (self.override("preagg") or "").strip("[]")
        return [p.strip() for p in listed.split(",") if p.strip() not in ("", "none")]

    @property
    def attack(self) -> str:
        return str(self.summary.get("attack") or self.get("attack.name") or self.override("attack") or "?")


def curve(rows: list[dict[str, Any]], byzantine_ids: set[int] | frozenset[int] = frozenset()) -> list[Point]:
    """Per-round figures from metrics rows. A decentralized run writes one row per node
    plus, once every honest node evaluated a round, a row of kind "honest" with
    mean_/worst_ accuracy and consensus_distance: that row wins when present; otherwise
    the honest nodes' rows are averaged (a ps run has one server row per round)."""
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if isinstance(row.get("round"), int) and row.get("node") not in byzantine_ids and not row.get("byzantine"):
            by_round[row["round"]].append(row)
    points = []
    for r in sorted(by_round):
        group = by_round[r]
        agg = next((g for g in group if "mean_accuracy" in g or "consensus_distance" in g), None)
        accs = [float(g["test_accuracy"]) for g in group if _num(g.get("test_accuracy"))]
        losses = [float(g["test_loss"]) for g in group if _num(g.get("test_loss"))]
        if agg is not None:
            points.append(Point(
                r, _opt(agg.get("mean_accuracy"), accs), _opt(agg.get("mean_loss"), losses),
                worst_accuracy=_float(agg.get("worst_accuracy")) if _num(agg.get("worst_accuracy")) else (min(accs) if accs else None),
                consensus_distance=_float(agg.get("consensus_distance")),
            ))
        else:
            points.append(Point(
                r, sum(accs) / len(accs) if accs else None, sum(losses) / len(losses) if losses else None,
                worst_accuracy=min(accs) if len(accs) > 1 else None,
            ))
    return points


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _float(v: Any) -> float | None:
    return float(v) if _num(v) else None


def _opt(v: Any, fallback: list[float]) -> float | None:
    if _num(v):
        return float(v)
    return sum(fallback) / len(fallback) if fallback else None


def find_runs(root: Path) -> list[Run]:
    """Every run directory at or under `root` (a run, a sweep, or a folder of either)."""
    if (root / "run.json").is_file():
        return [Run.read(root)]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if "run.json" in filenames:
            found.append(Run.read(Path(dirpath)))
            dirnames[:] = []  # a run directory holds no other run
    return found


def _read_json(path: Path) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> Any:
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics file; a line cut short by a running writer is skipped."""
    rows = []
    try:
        with open(path) as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        pass
    return rows


def human_age(seconds: float) -> str:
    """'42s', '5m', '3h 12m', '2d 4h'."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m}m" if m else f"{h}h"
    d, h = divmod(h, 24)
    return f"{d}d {h}h" if h else f"{d}d"


# -- the command ------------------------------------------------------------------------
def status_rows(runs: list[Run], root: Path, now: float | None = None) -> list[dict[str, Any]]:
    """One dict per run, newest first."""
    now = time.time() if now is None else now
    out = []
    for run in sorted(runs, key=lambda r: r.started, reverse=True):
        rel = run.path.relative_to(root) if run.path.is_relative_to(root) else run.path
        best, best_round = run.best
        out.append({
            "path": str(rel),
            "name": run.config.get("name"),
            "state": run.state,
            "reason": run.reason,
            "rounds_done": run.rounds_done,
            "rounds": run.rounds,
            "test_accuracy": run.accuracy,
            "best_accuracy": best,
            "test_loss": run.loss,
            "aggregator": "+".join([*run.preaggs, run.aggregator]),
            "attack": run.attack,
            "job": run.job,
            "started": run.started,
            "ended": run.info.get("ended"),
            "age_seconds": round(now - run.started, 1),
            "age": human_age(now - run.started),
        })
    return out


STATE_STYLE = {"COMPLETED": "green", "RUNNING": "cyan", "FAILED": "red", "INTERRUPTED": "yellow", "STALE": "magenta", "LOST": "red"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byzctl status", description="Runs under DIR (default ./outputs) with their state, newest first.")
    p.add_argument("dir", nargs="?", default="outputs", help="a folder of runs (default: ./outputs)")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    args = p.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        raise ByzctlError(f"no such directory: {root} (byzctl run writes its runs under ./outputs)")
    rows = status_rows(find_runs(root), root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs under {root} (a run is a folder holding run.json)")
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"runs under {root}", title_justify="left")
    jobs = any(r["job"] for r in rows)  # a column only where some run is a scheduler's job
    for col, just in (("run", "left"), ("state", "left"), ("progress", "right"), ("accuracy", "right"), ("age", "right"), ("rule vs attack", "left")):
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    if jobs:
        t.add_column("job", overflow="fold")
    for r in rows:
        total = "?" if r["rounds"] is None else r["rounds"]
        acc = "" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        state = f"[{STATE_STYLE.get(r['state'], 'white')}]{r['state']}[/]"
        t.add_row(r["path"], state, f"{r['rounds_done']}/{total}", acc, r["age"], f"{r['aggregator']} vs {r['attack']}", *([r["job"]] if jobs else []))
    Console().print(t)
    return 0
