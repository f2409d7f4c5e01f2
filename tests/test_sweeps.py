"""Sweeps: parallel jobs through Hydra's joblib launcher, and re-runs that skip finished jobs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import SMALL, byzctl, read

from byzctl.jsonio import write_json
from byzctl.launch.app import _completed_before


def test_completed_job_is_recognised_only_with_the_same_config(tmp_path):
    write_json(tmp_path / "run.json", {"state": "COMPLETED", "config_hash": "abc"})
    write_json(tmp_path / "summary.json", {"test_accuracy": 0.9})
    assert _completed_before(tmp_path, "abc") == {"test_accuracy": 0.9}
    assert _completed_before(tmp_path, "other") is None
    write_json(tmp_path / "run.json", {"state": "INTERRUPTED", "config_hash": "abc"})
    assert _completed_before(tmp_path, "abc") is None


@pytest.mark.slow
def test_parallel_sweep_then_rerun_skips_completed_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    common = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "rounds=8", "eval_every=4",
              "model.hidden=[16]", f"hydra.sweep.dir={sweep}"]
    proc = byzctl("run", *common, "aggregator=mean,cw_median", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert {read(sweep / j / "run.json")["state"] for j in ("0", "1")} == {"COMPLETED"}
    ports = {read(sweep / j / "run.json")["control"] for j in ("0", "1")}
    assert len(ports) == 2  # concurrent jobs never share an endpoint
    proc = byzctl("run", *common, "aggregator=mean,cw_median,cw_trimmed_mean", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("already completed") + proc.stdout.count("already completed") == 2
    assert read(sweep / "2" / "summary.json")["aggregator"] == "cw_trimmed_mean"


def test_ctrl_c_stops_the_whole_sweep_after_recording_its_job(tmp_path):
    """Ctrl-C in a sweep interrupts the running job (INTERRUPTED, checkpoint) and ends the
    sweep with 130: the next job never starts."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "byzctl", "run", "-m", *SMALL, "rounds=100000", "aggregator=mean,cw_median", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, deadline = sweep / "0" / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, out
    assert read(sweep / "0" / "run.json")["state"] == "INTERRUPTED"
    assert not (sweep / "1").exists(), "the sweep went on to its next job"
    assert "sweep interrupted at job 0" in out
