"""Every decentralized topology end to end: real processes, real sockets, a Byzantine node."""

from __future__ import annotations

import json

import pytest
from conftest import read, run_dir


@pytest.mark.parametrize("topology, graph", [("local", "ring"), ("mesh", "complete"), ("hub", "ring")])
def test_topology_trains_with_a_byzantine_peer(tmp_path, topology, graph):
    out, proc = run_dir(tmp_path, f"topology={topology}", f"graph={graph}", "rounds=20")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["topology"] == topology
    assert summary["rounds_completed"] == 20 and summary["byzantine"] == 1
    assert summary["worst_accuracy"] <= summary["test_accuracy"] and summary["test_accuracy"] > 0.3
    assert summary["consensus_distance"] is not None and summary["consensus_distance"] >= 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    honest = [r for r in rows if r.get("kind") == "honest"]
    assert [r["round"] for r in honest] == [10, 20] and all(r["nodes"] == 4 for r in honest)
    per_node = {r["node"] for r in rows if "node" in r and r.get("role") == "peer"}
    assert per_node == {0, 1, 2, 3}  # the Byzantine node never reports accuracy
    assert "[round 0020] test loss=" in (out / "nodes" / "0.log").read_text()
