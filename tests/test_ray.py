"""launcher=ray against a real local Ray cluster (launcher.address=local starts a
private one on loopback; `ray start --head` for an address): actors, a killed actor,
the run directory. No mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import byzctl, read

pytest.importorskip("ray", reason="launcher=ray needs the ray extra: pip install 'byzctl[ray]'")
pytestmark = pytest.mark.ray

RUN = ["nodes.honest=2", "nodes.byzantine=1", "rounds=12", "eval_every=6", "model.hidden=[16]", "topology.join_timeout=120"]


def ray_processes() -> set[int]:
    """Pids of Ray's daemons (gcs_server, raylet) and workers on this machine."""
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"gcs_server" in cmd or b"/raylet" in cmd or b"default_worker.py" in cmd:
            found.add(int(pid))
    return found


def gone(pids: set[int], timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while (left := pids & ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_ray_actors_run_the_nodes_with_curve_and_fill_the_run_directory(tmp_path):
    """A private Ray cluster, 4 actors (one host process each) in a placement group,
    CURVE with keys generated into the run directory; Ray leaves nothing running."""
    before = ray_processes()
    out = tmp_path / "run"
    proc = byzctl("run", "launcher=ray", "launcher.address=local", "security=curve", *RUN, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = read(out / "run.json")
    assert info["state"] == "COMPLETED" and info["launcher"] == "ray" and info["ray"]["actors"] == 4, info
    assert (out / "keys" / "private" / "monitor.key_secret").is_file()
    assert "tcp://127.0.0.1:" in info["control"]
    summary = read(out / "summary.json")
    assert summary["rounds_completed"] == 12 and summary["test_accuracy"] > 0.3
    assert (out / "metrics.jsonl").read_text().strip()
    for i in range(4):
        log = (out / "nodes" / f"{i}.log").read_text()
        assert f"host process {i} of 4" in log and "finished" in log, log
    assert list((out / "checkpoints").glob("*.safetensors"))
    assert not gone(ray_processes() - before)


def test_without_ray_is_exit_2_with_the_install_line(tmp_path):
    """ray not importable: exit 2 naming the extra to install."""
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    proc = byzctl("run", "launcher=ray", *RUN, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                  env={"PYTHONPATH": str(tmp_path / "noray")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'byzctl[ray]'" in proc.stderr


@pytest.mark.slow
def test_a_ray_address_that_does_not_answer_is_exit_2(tmp_path):
    proc = byzctl("run", "launcher=ray", "launcher.address=127.0.0.1:1", *RUN, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "launcher.address=127.0.0.1:1" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_more_actors_than_the_cluster_holds_is_exit_2(tmp_path):
    """A head started with `ray start` on loopback with 2 CPUs; 4 actors of 1 CPU each."""
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    start = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
                            "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=180, env=env)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        proc = byzctl("run", "launcher=ray", f"launcher.address=127.0.0.1:{port}", *RUN, f"hydra.run.dir={tmp_path / 'run'}",
                      cwd=tmp_path, env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "launcher.cpus_per_actor=1.0 need 4 CPUs" in proc.stderr and "has 2" in proc.stderr, proc.stderr
    finally:
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True, timeout=120, env=env)


@pytest.mark.slow
def test_a_killed_actor_is_a_lost_node(tmp_path):
    """SIGKILL the actor carrying the Byzantine worker: Ray reports it dead, the monitor
    loses the node, the others finish and the run COMPLETES with it in lost_ids."""
    before = ray_processes()
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "byzctl", "run", "launcher=ray", "launcher.address=local", *RUN,
                             "nodes.honest=3", "rounds=150", "topology.peer_timeout=3", f"hydra.run.dir={out}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = out / "nodes" / "4.log"  # the Byzantine worker (3 honest: n=3 > 2f without it)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (out / "metrics.jsonl").is_file():  # rounds began
            time.sleep(0.3)
        first = log.read_text().splitlines()[0]
        os.kill(int(first.split("(pid ")[1].split(",")[0]), signal.SIGKILL)
        text, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, text
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["lost_ids"] == [4], summary
    assert "Ray actor of host process 4 died" in (out / "nodes" / "4.log").read_text()
    assert not gone(ray_processes() - before)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
