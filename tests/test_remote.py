"""Across machines, on loopback: a monitor plus separate `byzctl node` processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import byzctl, read

from byzctl.config.experiment import Experiment
from byzctl.errors import ConfigError

RUN = ["nodes.honest=2", "rounds=12", "eval_every=6", "aggregator=mean", "model.hidden=[16]"]


def free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ps_cluster(tmp_path: Path) -> Path:
    mon, srv, w = free_ports(3)
    data = {
        "monitor": {"host": "127.0.0.1", "port": mon},
        "server": {"host": "127.0.0.1", "port": srv, "bind_host": "127.0.0.1"},
        "workers": [
            {"id": 1, "host": "127.0.0.1", "port": w, "type": "honest", "data_shard": 0},
            {"id": 2, "host": "127.0.0.1", "port": w, "type": "honest", "data_shard": 1},
            {"id": 3, "host": "127.0.0.1", "port": w, "type": "byzantine"},
        ],
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def node(tmp_path: Path, node_id: int, cluster: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "byzctl", "node", "--id", str(node_id), f"cluster={cluster}", *RUN, *extra],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_remote_nodes_join_and_train(tmp_path):
    cluster = ps_cluster(tmp_path)
    remote = [node(tmp_path, 2, cluster), node(tmp_path, 3, cluster)]
    try:
        proc = byzctl("run", "launcher=remote", f"cluster={cluster}", "local_nodes=[0,1]", *RUN, "topology.join_timeout=60",
                      f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = read(tmp_path / "run" / "summary.json")
        assert summary["state"] == "COMPLETED" and summary["rounds_completed"] == 12
        assert {k: v["state"] for k, v in summary["nodes"].items()} == {"0": "done", "1": "done", "2": "done", "3": "done"}
        for p in remote:
            assert p.wait(timeout=30) == 0
    finally:
        for p in remote:
            p.kill()


def test_a_node_that_never_starts_is_named_with_its_address(tmp_path):
    cluster = ps_cluster(tmp_path)
    port = yaml.safe_load(cluster.read_text())["workers"][0]["port"]
    proc = byzctl("run", "launcher=remote", f"cluster={cluster}", "local_nodes=[0,1,2]", *RUN, "topology.join_timeout=25",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert f"not enough peers: nodes [3] did not join: 3 (127.0.0.1:{port})" in " ".join(proc.stdout.split())
    run = read(tmp_path / "run" / "run.json")
    assert run["state"] == "FAILED" and "nodes [3]" in run["reason"]


def test_a_node_with_other_overrides_is_refused_alone_and_a_correct_one_completes_the_run(tmp_path):
    """One config, from the coordinator: a node started with an override that differs is
    refused alone, naming the key; the run waits on, and a node started with only its
    host settings takes the run's config and completes it."""
    cluster = ps_cluster(tmp_path)
    rogue = node(tmp_path, 3, cluster, "lr=0.5")
    launcher = subprocess.Popen([sys.executable, "-m", "byzctl", "run", "launcher=remote", f"cluster={cluster}", "local_nodes=[0,1,2]",
                                 *RUN, "topology.join_timeout=90", f"hydra.run.dir={tmp_path / 'run'}"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    good = None
    try:
        out, _ = rogue.communicate(timeout=120)
        assert rogue.returncode != 0
        assert "lr=0.5 (the run has 0.1)" in out, out
        good = subprocess.Popen([sys.executable, "-m", "byzctl", "node", "--id", "3", f"cluster={cluster}"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = launcher.communicate(timeout=240)
        assert launcher.returncode == 0, out
        assert good.wait(timeout=60) == 0
        summary = read(tmp_path / "run" / "summary.json")
        assert summary["state"] == "COMPLETED" and summary["rounds_completed"] == 12
        events = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert any(e.get("event") == "node_refused" and "lr=0.5" in e["reason"] for e in events)
    finally:
        for p in (rogue, launcher, good):
            if p is not None:
                p.kill()


@pytest.mark.parametrize(
    "data, match",
    [
        ({"nodes": []}, "needs a 'server'"),
        ({"server": {"host": "h", "port": 1}, "workers": [{"id": 9, "host": "h", "port": 2}]}, "node id 9 is not a worker"),
        ({"server": {"host": "h", "port": 1}, "workers": [{"id": 1, "host": "h", "port": 2}, {"id": 1, "host": "h", "port": 3}]}, "duplicate node id 1"),
        ({"server": {"host": "h", "port": 1}, "workers": [{"id": 1, "host": "h", "port": 2, "type": "byzantine"}]}, "plans it honest"),
        ({"server": {"host": "h", "port": 99999}, "workers": []}, "bad port"),
        ({"server": {"host": "h", "port": 1}, "workers": [{"id": 1, "host": "h", "port": 2}]}, r"does not place nodes \[2, 3, 4, 5\]"),
    ],
)
def test_bad_cluster_files(tmp_path, compose, data, match):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=match):
        Experiment.from_cfg(compose([f"cluster={path}"]))


def test_missing_cluster_file_and_remote_without_cluster(tmp_path, compose):
    with pytest.raises(ConfigError, match="not found"):
        Experiment.from_cfg(compose([f"cluster={tmp_path / 'nope.yaml'}"]))
    with pytest.raises(ConfigError, match="needs cluster"):
        Experiment.from_cfg(compose(["launcher=remote"]))


def test_json_cluster_for_mesh(tmp_path, compose):
    import json

    nodes = [{"id": i, "host": "127.0.0.1", "port": 9100 + i, "type": "byzantine" if i == 4 else "honest"} for i in range(5)]
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"nodes": nodes}))
    exp = Experiment.from_cfg(compose(["topology=mesh", f"cluster={path}"]))
    assert exp.place(3).advertised == "tcp://127.0.0.1:9103" and exp.cluster.monitor.port == 29400
