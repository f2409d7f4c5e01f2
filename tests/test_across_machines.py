"""Across machines the way the seeds do it, on loopback: separate processes stand for
machines, started in the seeds' order (coordinator first, the rest later), taking one
config from the coordinator; no single node or coordinator death leaves anything hanging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import byzctl, read
from test_remote import free_ports

RUN = ["rounds=12", "eval_every=6", "model.hidden=[16]", "topology.peer_timeout=3"]


def launch(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "byzctl", "run", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def node(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "byzctl", "node", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(pred, timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def metric_rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def kill_all(*procs: subprocess.Popen[str] | None) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()


def ps_file(tmp_path: Path, workers: int = 3, byzantine: int = 1) -> Path:
    mon, srv, *ports = free_ports(2 + workers)
    data = {
        "monitor": {"host": "127.0.0.1", "port": mon},
        "server": {"host": "127.0.0.1", "port": srv},
        "workers": [{"id": 1 + i, "host": "127.0.0.1", "port": ports[i], "type": "byzantine" if i >= workers - byzantine else "honest"}
                    for i in range(workers)],
    }
    path = tmp_path / "ps.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_server_first_workers_later_than_peer_timeout_with_the_config_from_the_coordinator(tmp_path):
    """The seeds' order: the server starts, workers join 8 s later (peer_timeout is 3 s),
    each with nothing but the cluster file: nobody is lost, the run completes, and the
    workers ran the coordinator's config (12 rounds, not the default 300)."""
    cluster = ps_file(tmp_path)
    launcher = launch(tmp_path, "launcher=remote", f"cluster={cluster}", "local_nodes=[0]", "nodes.honest=2", "nodes.byzantine=1",
                      *RUN, "topology.join_timeout=120")
    workers = []
    try:
        time.sleep(8)
        assert launcher.poll() is None, launcher.stdout.read() if launcher.stdout else ""
        workers = [node(tmp_path, "--id", str(i), f"cluster={cluster}") for i in (1, 2, 3)]
        out, _ = launcher.communicate(timeout=300)
        assert launcher.returncode == 0, out
        summary = read(tmp_path / "run" / "summary.json")
        assert summary["state"] == "COMPLETED" and summary["nodes_lost"] == 0
        assert summary["rounds_completed"] == 12
        assert {v["rounds_completed"] for v in summary["nodes"].values()} == {12}  # workers report their last round
        for w in workers:
            text, _ = w.communicate(timeout=60)
            assert w.returncode == 0, text
            assert "asking the monitor" in text
    finally:
        kill_all(launcher, *workers)


@pytest.mark.slow
def test_hub_relay_first_peers_later_than_peer_timeout(tmp_path):
    mon, relay, *ports = free_ports(5)
    data = {"monitor": {"host": "127.0.0.1", "port": mon}, "server": {"host": "127.0.0.1", "port": relay},
            "nodes": [{"id": i, "host": "127.0.0.1", "port": ports[i], "type": "byzantine" if i == 2 else "honest"} for i in range(3)]}
    cluster = tmp_path / "hub.yaml"
    cluster.write_text(yaml.safe_dump(data))
    launcher = launch(tmp_path, "launcher=remote", f"cluster={cluster}", "topology=hub", "nodes.honest=2", "nodes.byzantine=1",
                      "local_nodes=[3]", "aggregator=mean", *RUN, "topology.join_timeout=120")
    peers = []
    try:
        time.sleep(8)
        peers = [node(tmp_path, "--id", str(i), f"cluster={cluster}") for i in range(3)]
        out, _ = launcher.communicate(timeout=300)
        assert launcher.returncode == 0, out
        assert read(tmp_path / "run" / "summary.json")["nodes_lost"] == 0
        assert all(p.wait(timeout=60) == 0 for p in peers)
    finally:
        kill_all(launcher, *peers)


def test_a_killed_coordinator_stops_every_remote_node_with_its_state_saved(tmp_path):
    """SIGKILL the launcher of a mesh run whose nodes are all remote: each node notices
    the silent monitor within peer_timeout, saves its state and exits non-zero with the
    reason; `byzctl status` says the run is LOST, not RUNNING."""
    ports = free_ports(4)
    data = {"monitor": {"host": "127.0.0.1", "port": ports[0]},
            "nodes": [{"id": i, "host": "127.0.0.1", "port": ports[1 + i], "type": "honest"} for i in range(3)]}
    cluster = tmp_path / "mesh.yaml"
    cluster.write_text(yaml.safe_dump(data))
    launcher = launch(tmp_path, "launcher=remote", f"cluster={cluster}", "topology=mesh", "nodes.honest=3", "nodes.byzantine=0",
                      "aggregator=mean", "local_nodes=[]", "rounds=100000", "eval_every=5", "model.hidden=[8]", "topology.peer_timeout=3",
                      "topology.join_timeout=240")
    peers = [node(tmp_path, "--id", str(i), f"cluster={cluster}", f"--state-dir={tmp_path / f'state{i}'}") for i in range(3)]
    try:
        assert wait_for(lambda: any("round" in r and r.get("kind") == "honest" for r in metric_rows(tmp_path / "run"))), \
            launcher.stdout.read() if launcher.stdout else ""
        launcher.kill()
        launcher.wait()
        t0 = time.monotonic()
        for i, p in enumerate(peers):
            out, _ = p.communicate(timeout=90)
            assert p.returncode == 1, out
            assert "the coordinator is gone" in out
            assert list((tmp_path / f"state{i}" / "checkpoints" / f"node{i}").glob("round_*.safetensors")), out
        assert time.monotonic() - t0 < 60
        status = byzctl("status", str(tmp_path / "run"), "--json")
        row = json.loads(status.stdout)[0]
        assert row["state"] == "LOST" and "launcher" in row["reason"]
    finally:
        kill_all(launcher, *peers)


@pytest.mark.slow
def test_remote_workers_exit_non_zero_when_the_server_is_lost(tmp_path):
    cluster = ps_file(tmp_path)
    launcher = launch(tmp_path, "launcher=remote", f"cluster={cluster}", "local_nodes=[0]", "nodes.honest=2", "nodes.byzantine=1",
                      "rounds=100000", "eval_every=5", "model.hidden=[8]", "topology.peer_timeout=3")
    workers = [node(tmp_path, "--id", str(i), f"cluster={cluster}") for i in (1, 2, 3)]
    try:
        assert wait_for(lambda: bool(metric_rows(tmp_path / "run")))
        os.kill(read(tmp_path / "run" / "run.json")["pids"]["0"], signal.SIGKILL)
        out, _ = launcher.communicate(timeout=120)
        assert launcher.returncode == 1, out
        assert read(tmp_path / "run" / "run.json")["state"] == "FAILED"
        for w in workers:
            text, _ = w.communicate(timeout=90)
            assert w.returncode == 1, text
            assert "the run ended FAILED" in text and "server" in text
    finally:
        kill_all(launcher, *workers)


SEED_PS = """\
# Training parameters
training:
  rounds: 50
  batch_size: 64
  learning_rate: 0.05
  momentum: 0.9

# Aggregation settings
aggregation:
  method: "coordinate_wise_median"  # or "multi_krum"

# Parameter Server
server:
  host: 127.0.0.1    # IP for workers to connect
  port: {srv}
  bind_host: "127.0.0.1"   # Bind address

# Workers
workers:
  - id: 0
    host: 127.0.0.1
    port: {w0}
    type: honest
    data_shard: 0

  - id: 1
    host: 127.0.0.1
    port: {w1}
    type: honest
    data_shard: 1

  - id: 2
    host: 127.0.0.1
    port: {w2}
    type: byzantine
    attack_scale: -1.0
"""

SEED_MESH = """\
training:
  rounds: 50
  batch_size: 64
  learning_rate: 0.05

nodes:
  - id: 0
    host: 127.0.0.1    # External IP/hostname
    port: {p0}
    type: honest
    bind_host: "127.0.0.1"   # Optional: local bind address

  - id: 1
    host: 127.0.0.1
    port: {p1}
    type: honest

  - id: 2
    host: 127.0.0.1
    port: {p2}
    type: byzantine
"""


def test_the_seeds_parameter_server_file_as_written(tmp_path):
    """The seeds' ps file (workers from 0, training/aggregation sections, attack_scale),
    started the seeds' way: `--role server`, then `--role worker --worker-id K` each."""
    srv, w0, w1, w2 = free_ports(4)
    cluster = tmp_path / "nodes.yaml"
    cluster.write_text(SEED_PS.format(srv=srv, w0=w0, w1=w1, w2=w2))
    launcher = launch(tmp_path, "launcher=remote", f"cluster={cluster}", "nodes.honest=2", "nodes.byzantine=1",
                      "local_nodes=[0]", "eval_every=25", "topology.join_timeout=120")
    workers = []
    try:
        time.sleep(3)
        workers = [node(tmp_path, "--role", "worker", "--worker-id", "0", f"cluster={cluster}"),
                   node(tmp_path, "--role", "worker", "--worker-id", "1", "--worker-type", "honest", f"cluster={cluster}"),
                   node(tmp_path, "--role", "worker", "--worker-id", "2", "--worker-type", "byzantine", f"cluster={cluster}")]
        out, _ = launcher.communicate(timeout=300)
        assert launcher.returncode == 0, out
        assert "training.learning_rate=0.05 -> lr=0.05" in out
        cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
        assert (cfg["rounds"], cfg["batch_size"], cfg["lr"], cfg["momentum"]) == (50, 64, 0.05, 0.9)
        assert cfg["aggregator"]["name"] == "cw_median"
        assert cfg["attack"]["name"] == "sign_flip" and cfg["attack"]["scale"] == -1.0
        summary = read(tmp_path / "run" / "summary.json")
        assert summary["state"] == "COMPLETED" and summary["rounds_completed"] == 50
        assert all(w.wait(timeout=60) == 0 for w in workers)
    finally:
        kill_all(launcher, *workers)


@pytest.mark.slow
def test_the_seeds_mesh_file_as_written_and_the_command_line_wins(tmp_path):
    p0, p1, p2 = free_ports(3)
    cluster = tmp_path / "nodes.yaml"
    cluster.write_text(SEED_MESH.format(p0=p0, p1=p1, p2=p2))
    launcher = launch(tmp_path, "launcher=remote", f"cluster={cluster}", "topology=mesh", "nodes.honest=2", "nodes.byzantine=1",
                      "aggregator=mean", "local_nodes=[]", "rounds=20", "eval_every=10", "topology.join_timeout=120")
    peers = []
    try:
        peers = [node(tmp_path, "--id", str(i), "--node-type", "byzantine" if i == 2 else "honest", f"cluster={cluster}") for i in range(3)]
        out, _ = launcher.communicate(timeout=300)
        assert launcher.returncode == 0, out
        assert "training.rounds=50 not applied: the command line sets rounds" in out
        cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
        assert (cfg["rounds"], cfg["lr"]) == (20, 0.05)
        assert all(p.wait(timeout=60) == 0 for p in peers)
    finally:
        kill_all(launcher, *peers)


@pytest.mark.parametrize("text, match", [
    ("nodes:\n  - {id: 0, host: 127.0.0.1, port: 9000, tpye: byzantine}\n", "unknown key 'tpye' in node 0; known keys: id, host, port"),
    ("trainig: {rounds: 5}\nnodes: []\n", "unknown key 'trainig' in the file; known keys: monitor, server"),
    ("training: {epochs: 5}\nnodes: []\n", "unknown key 'epochs' in training; known keys: rounds, batch_size, learning_rate"),
])
def test_unknown_cluster_file_keys_are_named(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    proc = byzctl("run", "launcher=remote", f"cluster={path}", "topology=mesh", cwd=tmp_path)
    assert proc.returncode == 2
    assert match in proc.stderr and "Traceback" not in proc.stderr


def test_node_type_that_disagrees_with_the_plan_is_refused_naming_both(tmp_path, compose):
    from omegaconf import OmegaConf

    resolved = tmp_path / "config.yaml"
    resolved.write_text(OmegaConf.to_yaml(compose(["nodes.honest=3", "nodes.byzantine=1"]), resolve=True))
    proc = byzctl("node", "--id", "1", "--node-type", "byzantine", "--resolved", str(resolved), "--control", "tcp://127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--node-type byzantine, but the run plans node 1 honest" in proc.stderr
    proc = byzctl("node", "--role", "worker", "--resolved", str(resolved), "--control", "tcp://127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode == 2 and "--role worker --worker-id K" in proc.stderr


def test_a_node_failing_at_setup_gives_the_run_its_real_error(tmp_path):
    """The data exists on the coordinator's host but not on the node's: the node's real
    error (not a later AttributeError) is the run's reason, and the node exits 1."""
    cluster = ps_file(tmp_path, workers=2, byzantine=0)
    rows = [f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(400)]
    (tmp_path / "data.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    launcher = launch(tmp_path, "launcher=remote", f"cluster={cluster}", "local_nodes=[0,1]", "nodes.honest=2", "nodes.byzantine=0",
                      "aggregator=mean", "dataset=csv", "dataset.path=data.csv", "dataset.test_size=50", *RUN, "topology.join_timeout=120")
    worker = node(elsewhere, "--id", "2", f"cluster={cluster}")
    try:
        out, _ = launcher.communicate(timeout=300)
        assert launcher.returncode == 1, out
        reason = read(tmp_path / "run" / "run.json")["reason"]
        assert "node 2" in reason and "data.csv" in reason and "AttributeError" not in reason
        text, _ = worker.communicate(timeout=60)
        assert worker.returncode == 1, text
    finally:
        kill_all(launcher, worker)


def test_killing_one_hub_peer_does_not_stop_the_others(tmp_path):
    from test_e2e_ps import _start

    proc, out = _start(tmp_path, "topology=hub", "topology.peer_timeout=3", "topology.quorum_deadline=0.3", "eval_every=5")
    try:
        pids = {int(k): v for k, v in read(out / "run.json")["pids"].items()}
        os.kill(pids[1], signal.SIGKILL)
        reached = max(r.get("round", 0) for r in metric_rows(out))
        assert wait_for(lambda: max((r.get("round", 0) for r in metric_rows(out) if r.get("kind") == "honest"), default=0) >= reached + 40, 240), \
            "the hub run stopped advancing after a peer died"
        assert any(r.get("event") == "node_lost" and r["node"] == 1 for r in metric_rows(out))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)


def test_a_hub_run_does_not_stall_and_drops_nothing(tmp_path):
    """Round 0's vectors sent before a peer's hello reached the relay, and queues full of
    a slow peer's vectors, wait at the relay instead of being dropped."""
    proc = byzctl("run", "topology=hub", "rounds=40", "eval_every=10", "model.hidden=[16]", "topology.round_timeout=20",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logs = "".join(p.read_text() for p in (tmp_path / "run" / "nodes").glob("*.log"))
    assert "round_timeout" not in logs and "dropped" not in logs, logs[-3000:]
    assert "[round 0010] honest nodes: test loss=" in proc.stdout and "train loss" in proc.stdout
