"""End to end: the real config, shrunk, run with real processes and real sockets."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import SMALL, read, run_dir

from byzctl.procs import pid_alive


def test_default_experiment_shrunk_writes_a_complete_run_directory(tmp_path):
    out, proc = run_dir(tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    run = read(out / "run.json")
    assert run["state"] == "COMPLETED" and run["config_hash"] and len(run["nodes"]) == 6
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["rounds_completed"] == 30
    assert summary["test_accuracy"] > 0.5 and summary["test_loss"] > 0
    assert summary["aggregator"] == "cw_trimmed_mean" and summary["attack"] == "sign_flip"
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert [read_row["round"] for read_row in map(__import__("json").loads, rows)] == [10, 20, 30]
    server_log = (out / "nodes" / "0.log").read_text()
    assert "[round 0030] test loss=" in server_log and " acc=0." in server_log
    for i in range(6):
        assert (out / "nodes" / f"{i}.log").exists()
    assert (out / ".hydra" / "config.yaml").exists() and (out / "config.yaml").exists()
    assert "COMPLETED" in proc.stdout and "test accuracy" in proc.stdout


def test_trimmed_mean_beats_mean_under_strong_sign_flip(tmp_path):
    accs = {}
    for rule in ("mean", "cw_trimmed_mean"):
        out, proc = run_dir(tmp_path, f"aggregator={rule}", "attack.scale=-20", "seed=3", name=rule)
        assert proc.returncode == 0, proc.stderr
        accs[rule] = read(out / "summary.json")["test_accuracy"]
    assert accs["cw_trimmed_mean"] > accs["mean"] + 0.3, accs


def _start(tmp_path: Path, *overrides: str) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "byzctl", "run", *SMALL, "rounds=100000", *overrides, f"hydra.run.dir={out}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().strip():
            return proc, out
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("run did not start training in time")


def test_ctrl_c_reaps_every_child_and_records_interrupted(tmp_path):
    proc, out = _start(tmp_path)
    pids = [int(p) for p in read(out / "run.json")["pids"].values()]
    assert all(pid_alive(p) for p in pids)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    assert read(out / "run.json")["state"] == "INTERRUPTED"
    assert read(out / "summary.json")["state"] == "INTERRUPTED"
    assert not [p for p in pids if pid_alive(p)]




def test_shipped_dataset_reaches_every_node_over_the_wire(tmp_path):
    out, proc = run_dir(tmp_path, "dataset.ship=true", "topology=local", "graph=ring", "rounds=10")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert read(out / "summary.json")["state"] == "COMPLETED"
    for i in range(5):
        assert "shard received over the wire" in (out / "nodes" / f"{i}.log").read_text()


def test_ipm_breaks_the_mean_but_not_nnm_then_trimmed_mean(tmp_path):
    common = ["attack=ipm", "attack.epsilon=8", "attack.knowledge=omniscient", "nodes.byzantine=2", "seed=4"]
    accs = {}
    for name, rule in (("mean", ["aggregator=mean"]), ("robust", ["aggregator=cw_trimmed_mean", "preagg=[nnm]"])):
        out, proc = run_dir(tmp_path, *common, *rule, name=name)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        accs[name] = read(out / "summary.json")["test_accuracy"]
    assert accs["robust"] > accs["mean"] + 0.3, accs
