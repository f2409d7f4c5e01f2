"""byzctl status (runs and their state) and byzctl doctor (is this machine ready)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from test_report import fake_run

from byzctl import doctor, status
from byzctl.errors import ByzctlError


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- status ----------------------------------------------------------------------------------
def test_status_lists_runs_newest_first_with_state_progress_accuracy_age(tmp_path, capsys):
    now = time.time()
    out = tmp_path / "outputs"
    fake_run(out / "2026-01-01" / "09-00-00", overrides=[], accs=[0.5, 0.6, 0.7, 0.8], started=now - 3 * 86400)
    fake_run(out / "multirun" / "2026-01-02" / "10-00-00" / "0", overrides=["aggregator=mean"], aggregator="mean",
             state="FAILED", accs=[0.2], started=now - 7200)
    fake_run(out / "2026-01-03" / "11-00-00", overrides=[], state="RUNNING", accs=[0.4, 0.5], started=now - 90,
             pids={"0": os.getpid(), "1": dead_pid()})

    assert status.main([str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == ["2026-01-03/11-00-00", "multirun/2026-01-02/10-00-00/0", "2026-01-01/09-00-00"]
    running, failed, done = rows
    assert (running["state"], running["rounds_done"], running["rounds"], running["test_accuracy"]) == ("RUNNING", 10, 20, 0.5)
    assert running["age"] == "1m"
    assert (failed["state"], failed["reason"], failed["aggregator"]) == ("FAILED", "node 3 exited with code 1: boom", "mean")
    assert failed["age"] == "2h"
    assert (done["state"], done["rounds_done"], done["test_accuracy"], done["age"]) == ("COMPLETED", 20, 0.8, "3d")

    assert status.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "RUNNING" in text and "10/20" in text and "0.8000" in text and "3d" in text


def test_a_running_run_whose_processes_are_all_dead_is_stale(tmp_path, capsys):
    run = fake_run(tmp_path / "r", overrides=[], state="RUNNING", pids={"0": dead_pid(), "1": dead_pid()})
    status.main([str(tmp_path), "--json"])
    [row] = json.loads(capsys.readouterr().out)
    assert row["state"] == "STALE" and "none of its node processes is alive" in row["reason"]
    assert status.Run.read(run).info["state"] == "RUNNING"  # status only reads; run.json is untouched


def test_status_of_a_run_directory_itself_and_of_empty_folders(tmp_path, capsys):
    run = fake_run(tmp_path / "r", overrides=[])
    status.main([str(run), "--json"])
    assert [r["path"] for r in json.loads(capsys.readouterr().out)] == ["."]
    (tmp_path / "empty").mkdir()
    assert status.main([str(tmp_path / "empty")]) == 0
    assert "no runs under" in capsys.readouterr().out
    assert status.main([str(tmp_path / "empty"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    with pytest.raises(ByzctlError, match="no such directory: .*missing"):
        status.main([str(tmp_path / "missing")])


def test_status_skips_unreadable_files_without_crashing(tmp_path, capsys):
    run = fake_run(tmp_path / "r", overrides=[])
    (run / "summary.json").write_text("{ not json")
    (run / "config.yaml").write_text(": : :")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "run.json").write_text("[1, 2]")
    assert status.main([str(tmp_path), "--json"]) == 0
    rows = {r["path"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["junk"]["state"] == "UNREADABLE"
    assert rows["r"]["state"] == "COMPLETED" and rows["r"]["test_accuracy"] == 0.7  # from metrics.jsonl


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h"),
                                           (3660, "1h 1m"), (86400, "1d"), (90000, "1d 1h"), (-5, "0s")])
def test_human_age(seconds, text):
    assert status.human_age(seconds) == text


# -- doctor ----------------------------------------------------------------------------------
def test_doctor_checks_this_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert doctor.main(["--json"]) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert set(checks) == {name for name, _ in doctor.CHECKS}
    assert all(c["status"] in ("ok", "warn") and c["detail"] for c in checks.values())
    assert checks["python"]["detail"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert "torch" in checks["torch"]["detail"] and "pyzmq" in checks["zeromq"]["detail"]
    assert "(5000, 1, 28, 28)" in checks["bundled data"]["detail"]
    assert "tcp://127.0.0.1:" in checks["tcp loopback"]["detail"] and "ipc://" in checks["ipc socket"]["detail"]
    assert "will be created" in checks["outputs"]["detail"]
    assert "hydra-core" in checks["hydra"]["detail"] and "omegaconf" in checks["hydra"]["detail"]


def test_doctor_exits_1_when_a_check_fails_and_names_it(monkeypatch, capsys):
    def broken() -> tuple[doctor.Status, str]:
        raise OSError("no such device")

    monkeypatch.setattr(doctor, "CHECKS", [("python", doctor.check_python), ("broken", broken)])
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "broken" in out and "OSError: no such device" in out and "some checks failed" in out


def test_doctor_outputs_check_fails_when_outputs_is_not_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").write_text("a file")
    st, detail = doctor.check_outputs()
    assert st == "fail" and "not a directory" in detail
    (tmp_path / "outputs").unlink()
    (tmp_path / "outputs").mkdir()
    assert doctor.check_outputs()[0] == "ok"


def test_doctor_runs_the_numba_kernel_and_warns_without_it(monkeypatch):
    from byzctl.aggregators import _numba_select

    status, detail = doctor.check_kernels()
    assert status == "ok" and "numba kernel ok" in detail, detail
    monkeypatch.setattr(_numba_select.switch, "available", lambda: False)
    status, detail = doctor.check_kernels()
    assert status == "warn" and "torch network" in detail, detail
