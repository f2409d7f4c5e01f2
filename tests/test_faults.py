"""Faults: dead and hung nodes are lost, recorded, and the run goes on without them."""

from __future__ import annotations

import json
import os
import signal
import time

from conftest import read
from test_e2e_ps import _start

from byzctl.procs import pid_alive


def wait_for(pred, timeout=120.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def events(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if "event" in r]


def test_killed_and_hung_workers_are_lost_and_the_run_completes(tmp_path):
    proc, out = _start(tmp_path, "rounds=150", "topology.peer_timeout=3", "topology.quorum_deadline=0.3")
    pids = {int(k): v for k, v in read(out / "run.json")["pids"].items()}
    os.kill(pids[3], signal.SIGKILL)  # an honest worker dies
    os.kill(pids[5], signal.SIGSTOP)  # the Byzantine worker hangs
    try:
        assert proc.wait(timeout=240) == 0, proc.stdout.read() if proc.stdout else ""
    finally:
        if pid_alive(pids[5]):
            os.kill(pids[5], signal.SIGKILL)
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["rounds_completed"] == 150
    assert summary["nodes_lost"] == 2 and summary["lost_ids"] == [3, 5]
    lost = {e["node"]: e["reason"] for e in events(out) if e["event"] == "node_lost"}
    assert "exited with code -9" in lost[3] and "no heartbeat" in lost[5]
    assert "lost" in (out / "nodes" / "3.log").read_text()
    assert "was lost" in (out / "nodes" / "0.log").read_text()
    assert not [p for p in pids.values() if pid_alive(p)]


def test_killed_peer_in_a_decentralized_run(tmp_path):
    proc, out = _start(tmp_path, "topology=local", "graph=complete", "rounds=120", "topology.quorum_deadline=0.3")
    pids = {int(k): v for k, v in read(out / "run.json")["pids"].items()}
    os.kill(pids[2], signal.SIGKILL)
    assert proc.wait(timeout=240) == 0
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["lost_ids"] == [2]
    assert summary["test_accuracy"] > 0.5
    assert any(e["event"] == "node_lost" and e["node"] == 2 for e in events(out))


def test_the_server_dying_fails_the_run_with_its_reason(tmp_path):
    proc, out = _start(tmp_path)
    pids = read(out / "run.json")["pids"]
    os.kill(int(pids["0"]), signal.SIGKILL)
    proc.wait(timeout=60)
    run = read(out / "run.json")
    assert run["state"] == "FAILED" and "node 0 (server)" in run["reason"]
    assert not [p for p in map(int, pids.values()) if pid_alive(p)]


def test_the_launcher_dying_leaves_no_orphans(tmp_path):
    proc, out = _start(tmp_path)
    pids = [int(p) for p in read(out / "run.json")["pids"].values()]
    proc.kill()  # SIGKILL: no chance to clean up; the children must notice on their own
    proc.wait()
    assert wait_for(lambda: not [p for p in pids if pid_alive(p)], timeout=30), [p for p in pids if pid_alive(p)]
    assert wait_for(lambda: read(out / "run.json")["state"] == "FAILED", timeout=10)
    assert "launcher" in read(out / "run.json")["reason"]
