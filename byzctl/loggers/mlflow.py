"""MLflow (`logger=mlflow`): one MLflow run per byzctl run, with the config as params.

Written with `mlflow.tracking.MlflowClient` (the `mlflow-skinny` package is enough);
the default store is a SQLite file beside metrics.jsonl, which needs `sqlalchemy` and
`alembic`. Browse with `mlflow ui --backend-store-uri sqlite:///<run dir>/mlflow.db`
(the UI comes with the full `mlflow` package, not with `mlflow-skinny`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from byzctl.errors import ConfigError
from byzctl.loggers.base import Logger, RunContext, Scalars, flatten

STATUS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "INTERRUPTED": "KILLED"}
"""byzctl's final run state -> MLflow's run status (anything else: FAILED)."""
BATCH = 100
"""MLflow takes at most 100 params per log_batch call."""


@dataclass(kw_only=True)
class Mlflow(Logger):
    """Config of `logger=mlflow`: an MLflow run (default store: mlflow.db in the run directory)."""

    _target_: str = "byzctl.loggers.mlflow.Mlflow"
    name: str = "mlflow"
    tracking_uri: str | None = None
    """MLflow store; null: sqlite:///<run dir>/mlflow.db. Also file:/abs/dir or http://server."""
    experiment: str | None = None
    """MLflow experiment; null: the run's `name` (byzctl by default)."""
    run_name: str | None = None
    """MLflow run name; null: the run directory's last two parts (date/time, or time/job)."""

    def requirements(self) -> tuple[tuple[str, str], ...]:
        need: tuple[tuple[str, str], ...] = (("mlflow", "mlflow-skinny"),)
        if self.tracking_uri is None or self.tracking_uri.startswith("sqlite:"):
            need += (("sqlalchemy", "sqlalchemy"), ("alembic", "alembic"))
        return need

    def open(self, ctx: RunContext) -> MlflowSink:
        return MlflowSink(self, ctx)


class MlflowSink:
    def __init__(self, cfg: Mlflow, ctx: RunContext):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ConfigError(f"logger=mlflow: cannot import mlflow ({exc}): pip install mlflow-skinny") from None
        # creating the SQLite schema logs a dozen INFO lines; byzctl's console stays readable
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        uri = cfg.tracking_uri or f"sqlite:///{(ctx.path / 'mlflow.db').resolve()}"
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # asked for by name: MLflow 3 deprecates it
        self.client = MlflowClient(tracking_uri=uri)
        self.scalars = Scalars()
        previous = ctx.previous if ctx.previous.get("tracking_uri") == uri else {}
        if previous.get("run_id"):  # resume: continue the same MLflow run
            self.run_id = str(previous["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            artifacts = str(ctx.path / "mlartifacts") if cfg.tracking_uri is None else None
            experiment = self._experiment(cfg.experiment or str(ctx.config.get("name") or "byzctl"), artifacts)
            run = self.client.create_run(experiment, run_name=cfg.run_name or ctx.label,
                                         tags={"byzctl.run_dir": str(ctx.path.resolve()), **{f"byzctl.{k}": v for k, v in ctx.tags.items()}})
            self.run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in sorted(flatten(ctx.config).items())]
            for i in range(0, len(params), BATCH):
                self.client.log_batch(self.run_id, params=params[i:i + BATCH])
        self.record: dict[str, Any] = {"name": cfg.name, "tracking_uri": uri, "run_id": self.run_id}

    def _experiment(self, name: str, artifacts: str | None) -> str:
        """The experiment's id, created on first use (sweep jobs may race to create it)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=artifacts))
        except Exception:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def row(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        out = self.scalars(row)
        if out is None:
            return
        step, values = out
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, state: str) -> None:
        self.client.set_terminated(self.run_id, status=STATUS.get(state, "FAILED"))
