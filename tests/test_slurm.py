"""launcher=slurm and Hydra's submitit_slurm sweeps against a real one-machine SLURM
cluster (munged, slurmctld, slurmd), started by the session fixture below; no mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import byzctl, read
from slurm_cluster import SlurmUnavailable, start, stop

pytestmark = pytest.mark.slurm

RUN = ["nodes.honest=2", "nodes.byzantine=1", "rounds=12", "eval_every=6", "model.hidden=[16]", "topology.join_timeout=120"]


def squeue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    return [ln for ln in out.stdout.splitlines() if ln.strip()]


def scancel_all() -> None:
    subprocess.run(["scancel", "--user", "root"], capture_output=True, timeout=30)
    deadline = time.monotonic() + 30
    while squeue() and time.monotonic() < deadline:
        time.sleep(0.5)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """A real SLURM cluster on this machine for the session; its jobs and daemons end with it."""
    # .ci/run sets BYZCTL_REQUIRE_SLURM=1: there a cluster that cannot start fails the tests
    give_up = pytest.fail if os.environ.get("BYZCTL_REQUIRE_SLURM") == "1" else pytest.skip
    if os.geteuid() != 0:
        give_up("SLURM's slurmd runs as root here (CI runs as root); not root")
    root = tmp_path_factory.mktemp("slurm")
    try:
        conf = start(root)
    except SlurmUnavailable as exc:
        give_up(f"SLURM daemons cannot start here: {exc}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield conf
    finally:
        scancel_all()
        stop(root)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def launch(tmp_path: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "byzctl", "run", *args, f"hydra.run.dir={out}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})


def wait_for(pred, timeout: float = 240.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.3)
    return False


def task_pid(out: Path, node: int) -> int:
    """The pid of the SLURM task carrying `node` (its log's first line says it)."""
    first = (out / "nodes" / f"{node}.log").read_text().splitlines()[0]
    return int(first.split("(pid ")[1].split(",")[0])


def test_a_slurm_job_runs_the_nodes_and_fills_the_run_directory(slurm, tmp_path):
    """One real job of 2 tasks (the server alone, the 3 workers packed in one host
    process): the run directory fills as a local run's, status shows the job."""
    out = tmp_path / "run"
    proc = byzctl("run", "launcher=slurm", "launcher.tasks_per_node=2", *RUN, f"hydra.run.dir={out}", cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = read(out / "run.json")
    assert info["state"] == "COMPLETED" and info["launcher"] == "slurm"
    job = info["slurm"]
    assert job["tasks"] == 2 and job["state"] == "COMPLETED", job
    assert f"SLURM job {job['job_id']}" in proc.stdout
    script = (out / "slurm" / "job.sh").read_text()
    assert "#SBATCH --ntasks=2" in script and "#SBATCH --ntasks-per-node=2" in script and "byzctl.launch.task" in script
    assert read(out / "slurm" / "tasks.json")["hosts"] == [[0], [1, 2, 3]]
    summary = read(out / "summary.json")
    assert summary["rounds_completed"] == 12 and summary["test_accuracy"] > 0.3
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert rows
    for i in range(4):
        assert "finished" in (out / "nodes" / f"{i}.log").read_text(), i
    assert "host process 1 of 2" in (out / "nodes" / "host1.log").read_text()
    assert list((out / "checkpoints").glob("*.safetensors"))
    status = byzctl("status", str(tmp_path), "--json", cwd=tmp_path)
    row = next(r for r in json.loads(status.stdout) if r["path"] == "run")
    assert row["job"] == f"slurm {job['job_id']} COMPLETED" and row["state"] == "COMPLETED"
    assert squeue() == []


@pytest.mark.parametrize(("args", "needle"), [
    (["launcher.partition=nope"], "launcher.partition=nope"),
    pytest.param(["launcher.tasks_per_node=9"], "launcher.tasks_per_node=9", marks=pytest.mark.slow),
    pytest.param(["launcher.cpus_per_task=64"], "launcher.cpus_per_task=64", marks=pytest.mark.slow),
])
def test_a_job_slurm_refuses_is_exit_2_naming_the_value(slurm, tmp_path, args, needle):
    """A partition slurmctld rejects, more tasks than the run has nodes, more CPUs than
    the allocation holds: one message naming the value, exit 2, no job left."""
    proc = byzctl("run", "launcher=slurm", *RUN, *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert squeue() == []
    assert read(tmp_path / "run" / "run.json")["state"] == "FAILED"


@pytest.mark.slow
def test_without_sbatch_is_exit_2(tmp_path):
    """No SLURM client on PATH (a laptop): exit 2 naming sbatch; needs no cluster."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(sys.executable, bindir / "python")
    proc = byzctl("run", "launcher=slurm", *RUN, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env={"PATH": str(bindir)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "'sbatch' is not on PATH" in proc.stderr


@pytest.mark.slow
def test_ctrl_c_cancels_the_job_and_resume_resubmits(slurm, tmp_path):
    """Ctrl-C on the submitting command: the nodes' state is saved, the job cancelled
    (scancel), the run INTERRUPTED; `resume=` submits a new job that finishes it."""
    out = tmp_path / "run"
    proc = launch(tmp_path, out, "launcher=slurm", *RUN, "rounds=400", "checkpoint_every=5", "security=curve")
    try:
        assert wait_for(lambda: (out / "metrics.jsonl").is_file()), proc.stdout.read() if proc.poll() is not None else "no metrics"
        first_job = read(out / "run.json")["slurm"]["job_id"]
        proc.send_signal(signal.SIGINT)
        text, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, text
    finally:
        if proc.poll() is None:
            proc.kill()
    info = read(out / "run.json")
    assert info["state"] == "INTERRUPTED" and info["slurm"]["state"] == "CANCELLED", info
    assert (out / "keys" / "public" / "monitor.key").is_file()  # security=curve: keys made for the run
    assert squeue() == []
    resumed = byzctl("run", f"resume={out}", "rounds=400", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    info = read(out / "run.json")
    assert info["state"] == "COMPLETED" and info["resumed"] and info["slurm"]["job_id"] != first_job


@pytest.mark.slow
def test_a_killed_task_is_a_lost_node(slurm, tmp_path):
    """SIGKILL the task carrying the Byzantine worker: the monitor declares it lost (no
    heartbeat), the others finish, the run COMPLETES with it in lost_ids."""
    out = tmp_path / "run"
    # 3 honest: the server still aggregates n=3 > 2f once the Byzantine worker is gone
    proc = launch(tmp_path, out, "launcher=slurm", *RUN, "nodes.honest=3", "rounds=150", "topology.peer_timeout=3", "processes=per_node")
    try:
        # rounds began (a node lost before is a failed start, not a lost node)
        assert wait_for(lambda: (out / "metrics.jsonl").is_file()), proc.stdout.read() if proc.poll() is not None else "no rounds"
        os.kill(task_pid(out, 4), signal.SIGKILL)
        text, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, text
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["lost_ids"] == [4], summary
    assert squeue() == []


@pytest.mark.slow
def test_wait_false_returns_at_once_and_the_job_runs_the_monitor(slurm, tmp_path):
    """launcher.wait=false: exit 0 with the job id; the batch step runs the monitor and
    records the run, which `byzctl status` follows; CURVE with the keys given."""
    keys = tmp_path / "keys"
    assert byzctl("keys", "gen", str(keys), "--nodes", "4").returncode == 0
    out = tmp_path / "run"
    proc = byzctl("run", "launcher=slurm", "launcher.wait=false", "security=curve", f"security.keys={keys}", *RUN,
                  f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = read(out / "run.json")["slurm"]["job_id"]
    assert f"SLURM job {job}" in proc.stdout and str(out) in proc.stdout
    status = byzctl("status", str(tmp_path), "--json", cwd=tmp_path)
    row = next(r for r in json.loads(status.stdout) if r["path"] == "run")
    assert row["job"].startswith(f"slurm {job} "), row
    assert wait_for(lambda: read(out / "run.json").get("state") != "RUNNING", timeout=400), (out / "slurm" / f"job-{job}.out").read_text()
    info = read(out / "run.json")
    assert info["state"] == "COMPLETED", info
    assert read(out / "summary.json")["rounds_completed"] == 12
    assert wait_for(lambda: squeue() == [], timeout=60)


@pytest.mark.slow
def test_a_submitit_slurm_sweep_runs_one_job_per_experiment(slurm, tmp_path):
    """Hydra's own submitit_slurm launcher: each experiment of the sweep is a SLURM job
    running a local byzctl run on its machine (its own ipc sockets: no port clash)."""
    sweep = tmp_path / "sweep"
    proc = byzctl("run", "-m", "hydra/launcher=submitit_slurm", "attack=sign_flip,alie", *RUN,
                  "hydra.launcher.timeout_min=15", "hydra.launcher.cpus_per_task=2", "hydra.launcher.mem_gb=1",
                  f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = sorted(p.parent for p in sweep.glob("*/run.json"))
    assert len(runs) == 2, proc.stdout + proc.stderr
    for run in runs:
        assert read(run / "run.json")["state"] == "COMPLETED"
        assert read(run / "summary.json")["rounds_completed"] == 12
    assert list((sweep / ".submitit").glob("*/*_log.out"))
