"""The run directory: run.json, metrics.jsonl, summary.json, nodes/<id>.log, checkpoints/.

Every JSON file is written atomically (write a temp file, then rename), and each
metrics row is flushed as it arrives, so an interrupted run loses nothing. With
`logger=tensorboard|mlflow` every row also goes to the logger's sink, which `close`
ends with the run's final state.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, TextIO

from byzctl.jsonio import dumps, read_json, write_json
from byzctl.loggers.base import Sink
from byzctl.states import RunState

log = logging.getLogger("byzctl")

__all__ = ["RunDir", "read_json", "write_json"]


def host_log(run_dir: Path | str, group: list[int]) -> Path:
    """The log of the host process carrying `group`: the node's own `nodes/<id>.log`
    for one node, `nodes/host<first id>.log` for many (each node then keeps its own too)."""
    name = f"{group[0]}.log" if len(group) == 1 else f"host{group[0]}.log"
    return Path(run_dir) / "nodes" / name


class RunDir:
    """One run's files. States: RUNNING, COMPLETED, FAILED, INTERRUPTED."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "nodes").mkdir(exist_ok=True)
        self._metrics: TextIO | None = None
        self.sink: Sink | None = None
        self.info: dict[str, Any] = {}

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    def node_log(self, node_id: int) -> Path:
        return self.path / "nodes" / f"{node_id}.log"

    def start(self, **info: Any) -> None:
        self.info = {"state": RunState.RUNNING, "started": time.time(), "ended": None, **info}
        write_json(self.run_json, self.info)

    def update(self, **info: Any) -> None:
        self.info.update(info)
        write_json(self.run_json, self.info)

    def end(self, state: str, reason: str = "", **info: Any) -> None:
        self.update(state=state, reason=reason, ended=time.time(), **info)

    def refused(self, reason: str, started: float) -> None:
        """Record a run that never launched (a failed check): FAILED, with when it was
        asked for (`started`) and refused (`ended`)."""
        self.info = {"state": RunState.FAILED, "started": started, "ended": time.time(), "reason": reason}
        write_json(self.run_json, self.info)

    def metric(self, row: dict[str, Any]) -> None:
        if self._metrics is None:
            self._metrics = open(self.path / "metrics.jsonl", "a")
        self._metrics.write(dumps(row) + "\n")
        self._metrics.flush()
        if self.sink is not None:
            try:
                self.sink.row(row)
            except Exception as exc:
                self._drop_sink(self.sink, exc)

    def attach(self, sink: Sink) -> None:
        """Send every row from now on to `sink` too; run.json says where it writes."""
        self.sink = sink
        self.update(logger=sink.record)

    def _drop_sink(self, sink: Sink, exc: Exception) -> None:
        """A failing logger is dropped with a warning (its run marked FAILED if it still
        can be): metrics.jsonl stays the record."""
        self.sink = None
        log.warning("logger %s failed; metrics go on to metrics.jsonl only: %s: %s",
                    self.info.get("logger", {}).get("name"), type(exc).__name__, exc)
        with contextlib.suppress(Exception):
            sink.close(RunState.FAILED)

    def summary(self, data: dict[str, Any]) -> None:
        write_json(self.path / "summary.json", data)

    def close(self) -> None:
        """Close metrics.jsonl and the logger, which records the state `end` wrote."""
        sink, self.sink = self.sink, None
        if sink is not None:
            try:
                sink.close(str(self.info.get("state", RunState.FAILED)))
            except Exception as exc:
                log.warning("logger %s failed to close: %s: %s", self.info.get("logger", {}).get("name"), type(exc).__name__, exc)
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
