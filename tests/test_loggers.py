"""Loggers: every metrics.jsonl row also reaches TensorBoard or MLflow, read back with
their own readers; the state ends their run; a missing package fails before launch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL, read, run_dir

from byzctl.config.build import build
from byzctl.config.experiment import Experiment
from byzctl.errors import ConfigError
from byzctl.launch.rundir import RunDir
from byzctl.loggers import RunContext, Scalars, flatten, headline
from byzctl.loggers.none import NoLogger

SERVER_ROWS = [{"round": r, "test_loss": 2.0 / r, "test_accuracy": 0.3 + r / 100, "node": 0, "role": "server", "time": 0.1 * r}
               for r in (10, 20, 30)]


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def context(path: Path, **over: Any) -> RunContext:
    config = {"name": "unit", "rounds": 30, "aggregator": {"_target_": "x.Y", "name": "krum", "f": None},
              "preagg": {}, "model": {"hidden": [32]}, "logger": {"name": "mlflow"}}
    return RunContext(path=path, config=config, label="day/time", tags={"config_hash": "abc"},
                      headline=headline(False, 0), **over)


# -- rows -> scalars -----------------------------------------------------------------
def test_scalars_tag_rows_by_role_and_node_with_the_round_as_step():
    s = Scalars()
    assert s(SERVER_ROWS[0]) == (10, {"test_loss/server_0": 0.2, "test_accuracy/server_0": 0.4})
    peer = {"round": 5, "test_loss": 1.0, "test_accuracy": 0.5, "node": 3, "role": "peer", "time": 1.0}
    assert s(peer) == (5, {"test_loss/peer_3": 1.0, "test_accuracy/peer_3": 0.5})
    honest = {"round": 5, "kind": "honest", "nodes": 4, "mean_accuracy": 0.5, "worst_accuracy": 0.4,
              "mean_loss": 1.0, "worst_loss": 1.2, "consensus_distance": 0.01}
    assert s(honest) == (5, {"honest/mean_accuracy": 0.5, "honest/worst_accuracy": 0.4, "honest/mean_loss": 1.0,
                             "honest/worst_loss": 1.2, "honest/consensus_distance": 0.01})
    lost = {"event": "node_lost", "node": 2, "round": 7, "reason": "killed", "time": 1e9}
    assert s(lost) == (7, {"events/node_lost": 1.0})
    assert s({**lost, "round": 9}) == (9, {"events/node_lost": 2.0})
    assert s({"event": "node_lost", "node": 2}) is None  # no round: no step


def test_flatten_names_nested_keys_and_leaves_out_targets_and_the_logger():
    flat = flatten(context(Path(".")).config)
    assert flat == {"name": "unit", "rounds": 30, "aggregator.name": "krum", "aggregator.f": "null", "model.hidden": "[32]"}


def test_logger_is_not_part_of_the_config_hash(compose):
    hashes = {Experiment.from_cfg(compose([f"logger={name}"])).hash for name in ("none", "tensorboard", "mlflow")}
    assert len(hashes) == 1
    assert Experiment.from_cfg(compose(["logger=mlflow", "logger.experiment=other"])).hash in hashes


def test_default_is_no_logger_and_bad_values_fail_naming_them(compose):
    exp = Experiment.from_cfg(compose([]))
    assert isinstance(exp.logger, NoLogger) and exp.logger.open(context(Path("."))) is None
    with pytest.raises(ConfigError, match="flush_secs=0"):
        build(compose(["logger=tensorboard", "logger.flush_secs=0"]).logger, "logger")


@pytest.mark.parametrize("logger, module, package", [
    ("tensorboard", "tensorboard", "tensorboard"),
    ("mlflow", "mlflow", "mlflow-skinny"),
    ("mlflow", "sqlalchemy", "sqlalchemy"),  # the default SQLite store
])
def test_missing_package_is_a_config_error_naming_the_pip_command(compose, monkeypatch, logger, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to import
    with pytest.raises(ConfigError, match=rf"logger={logger} needs .*{package}.*pip install .*{package}"):
        Experiment.from_cfg(compose([f"logger={logger}"]))


def test_file_store_needs_no_sqlalchemy(compose, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    Experiment.from_cfg(compose(["logger=mlflow", "logger.tracking_uri=file:/tmp/mlruns"]))


# -- the run directory hands rows to the sink and ends it --------------------------------
class FakeSink:
    def __init__(self, fail_on: int | None = None):
        self.record = {"name": "fake"}
        self.rows: list[dict[str, Any]] = []
        self.closed: list[str] = []
        self.fail_on = fail_on

    def row(self, row: dict[str, Any]) -> None:
        if len(self.rows) == self.fail_on:
            raise OSError("disk full")
        self.rows.append(row)

    def close(self, state: str) -> None:
        self.closed.append(state)


@pytest.mark.parametrize("state", ["COMPLETED", "FAILED", "INTERRUPTED"])
def test_rundir_sends_every_row_and_closes_the_sink_with_the_final_state(tmp_path, state):
    rd, sink = RunDir(tmp_path), FakeSink()
    rd.start(run_id="r")
    rd.attach(sink)
    for row in SERVER_ROWS:
        rd.metric(row)
    rd.end(state, "why")
    rd.close()
    assert sink.rows == SERVER_ROWS == rows(tmp_path)
    assert sink.closed == [state] and read(tmp_path / "run.json")["logger"] == {"name": "fake"}


def test_a_failing_sink_is_dropped_and_metrics_jsonl_goes_on(tmp_path, caplog):
    rd, sink = RunDir(tmp_path), FakeSink(fail_on=1)
    rd.start(run_id="r")
    rd.attach(sink)
    for row in SERVER_ROWS:
        rd.metric(row)
    rd.end("COMPLETED")
    rd.close()
    assert rows(tmp_path) == SERVER_ROWS and sink.rows == SERVER_ROWS[:1]
    assert sink.closed == ["FAILED"] and "disk full" in caplog.text


# -- each sink on a fake row stream, read back with its own reader ---------------------
def tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_tensorboard_sink_writes_scalars_hparams_and_state(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from byzctl.loggers.tensorboard import TensorBoard

    sink = TensorBoard().open(context(tmp_path))
    for row in SERVER_ROWS:
        sink.row(row)
    sink.close("INTERRUPTED")
    got = tb_scalars(tmp_path / "tensorboard")
    assert got["test_accuracy/server_0"] == [(r["round"], pytest.approx(r["test_accuracy"])) for r in SERVER_ROWS]
    ea = EventAccumulator(str(tmp_path / "tensorboard"))
    ea.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(ea.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["aggregator.name"].string_value == "krum"
    assert ea.Tensors("state/text_summary")[0].tensor_proto.string_val == [b"INTERRUPTED"]


@pytest.mark.parametrize("state, status", [("COMPLETED", "FINISHED"), ("FAILED", "FAILED"), ("INTERRUPTED", "KILLED")])
def test_mlflow_sink_logs_rows_params_and_sets_the_status_from_the_state(tmp_path, state, status):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    from byzctl.loggers.mlflow import Mlflow

    sink = Mlflow().open(context(tmp_path))
    for row in SERVER_ROWS:
        sink.row(row)
    sink.close(state)
    assert sink.record["tracking_uri"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=sink.record["tracking_uri"])
    run = client.get_run(sink.record["run_id"])
    assert run.info.status == status and run.info.run_name == "day/time"
    assert client.get_experiment(run.info.experiment_id).name == "unit"
    assert run.data.params["aggregator.name"] == "krum" and run.data.tags["byzctl.config_hash"] == "abc"
    history = client.get_metric_history(run.info.run_id, "test_accuracy/server_0")
    assert [(m.step, m.value) for m in history] == [(r["round"], r["test_accuracy"]) for r in SERVER_ROWS]


def test_mlflow_resume_continues_the_same_run(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    from byzctl.loggers.mlflow import Mlflow

    first = Mlflow().open(context(tmp_path))
    first.row(SERVER_ROWS[0])
    first.close("INTERRUPTED")
    again = Mlflow().open(context(tmp_path, resumed_from=10, previous=first.record))
    assert again.run_id == first.run_id
    again.row(SERVER_ROWS[1])
    again.close("COMPLETED")
    client = MlflowClient(tracking_uri=first.record["tracking_uri"])
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first.run_id, "test_accuracy/server_0")] == [10, 20]


# -- end to end: the real CLI, real nodes ---------------------------------------------------
def test_tensorboard_run_has_every_metrics_row_as_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    out, proc = run_dir(tmp_path, "logger=tensorboard", "topology=local", "graph=ring", "rounds=20")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    written = rows(out)
    got = tb_scalars(out / "tensorboard")
    per_node = [r for r in written if r.get("role") == "peer"]
    assert {r["node"] for r in per_node} == {0, 1, 2, 3}
    for node in range(4):
        mine = [r for r in per_node if r["node"] == node]
        assert got[f"test_accuracy/peer_{node}"] == [(r["round"], pytest.approx(r["test_accuracy"])) for r in mine]
    honest = [r for r in written if r.get("kind") == "honest"]
    assert [r["round"] for r in honest] == [10, 20]
    for key in ("mean_accuracy", "worst_accuracy", "consensus_distance"):
        assert got[f"honest/{key}"] == [(r["round"], pytest.approx(r[key], rel=1e-6)) for r in honest]
    assert read(out / "run.json")["logger"] == {"name": "tensorboard", "dir": str((out / "tensorboard").resolve())}


def test_mlflow_run_records_metrics_params_and_finished(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    out, proc = run_dir(tmp_path, "logger=mlflow", "aggregator=cw_median")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    record = read(out / "run.json")["logger"]
    assert record["tracking_uri"] == f"sqlite:///{(out / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["aggregator.name"] == "cw_median" and run.data.params["rounds"] == "30"
    assert client.get_experiment(run.info.experiment_id).name == "byzctl"
    written = [r for r in rows(out) if r.get("role") == "server"]
    for key in ("test_accuracy", "test_loss"):
        history = client.get_metric_history(run.info.run_id, f"{key}/server_0")
        assert [(m.step, m.value) for m in history] == [(r["round"], r[key]) for r in written]


@pytest.mark.parametrize("logger, module, package", [("tensorboard", "tensorboard", "tensorboard"), ("mlflow", "mlflow", "mlflow-skinny")])
def test_missing_package_fails_before_any_node_starts_with_exit_2(tmp_path, logger, module, package):
    out = tmp_path / "run"
    block = f"import sys; sys.modules[{module!r}] = None; from byzctl.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", block, "run", *SMALL, f"logger={logger}", f"hydra.run.dir={out}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert f"logger={logger} needs the Python package {package}" in proc.stderr
    assert f"pip install {package}" in proc.stderr and "Traceback" not in proc.stderr
    assert read(out / "run.json")["state"] == "FAILED"
    assert not list((out / "nodes").iterdir()) and not (out / "checkpoints").exists()
