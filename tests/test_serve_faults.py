"""`byzctl serve` under faults and contention (slow): concurrent requests for the same
agents, an agent killed mid-session, the service restarted mid-session (its run alive,
or gone), and stop then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from servekit import SMALL, Service, make_csv, running, start_session

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow

LONG = [*SMALL, "rounds=80", "eval_every=2", "topology.peer_timeout=4", "topology.heartbeat_interval=0.5"]
"""Long enough to act mid-session; a lost node is noticed within 4 s."""


@pytest.fixture
def service(tmp_path):
    with running(tmp_path) as svc:
        yield svc


def wait_rounds(service: Service, client, sid: str, rounds: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = client.get(f"/sessions/{sid}").json()
        if s["rounds_done"] >= rounds or s["state"] != "RUNNING":
            return s
        assert time.monotonic() < deadline, s
        time.sleep(0.3)


def test_two_concurrent_requests_never_get_the_same_agent(service, tmp_path):
    csv = make_csv(tmp_path / "d.csv")
    with service.client() as c:
        service.wait_agents(c, idle=3)
        two = [*SMALL, "nodes.byzantine=0", "aggregator=mean"]  # two workers: two agents each, three online
        answers: list = [None, None]
        go = threading.Barrier(2)

        def ask(k: int) -> None:
            with service.client() as mine:
                go.wait()
                answers[k] = start_session(mine, csv, two)

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(a.status_code for a in answers)
        assert codes == [201, 409], [a.text for a in answers]
        won = next(a for a in answers if a.status_code == 201).json()
        lost = next(a for a in answers if a.status_code == 409).json()
        assert (lost["needed"], lost["idle"]) == (2, 1)
        held = {a["name"] for a in c.get("/agents").json() if a["session"] == won["id"]}
        assert len(held) == 2
        assert service.wait_state(c, won["id"], ("COMPLETED", "FAILED"))["state"] == "COMPLETED"
        assert [s["id"] for s in c.get("/sessions").json()] == [won["id"]]
        report = subprocess.run([sys.executable, "-m", "byzctl", "report", won["run_dir"]], capture_output=True, text=True, timeout=300)
        assert report.returncode == 0, report.stdout + report.stderr


def test_a_mesh_session_with_multi_krum(service, tmp_path):
    """Decentralized: every peer runs on an agent and listens on the agent's port."""
    with service.client() as c:
        service.wait_agents(c, idle=3)
        r = start_session(c, make_csv(tmp_path / "d.csv"), [*SMALL, "topology=mesh", "aggregator=multi_krum",
                                                             "nodes.honest=3", "nodes.byzantine=0"])
        assert r.status_code == 201, r.text
        s = service.wait_state(c, r.json()["id"], ("COMPLETED", "FAILED"))
        assert s["state"] == "COMPLETED" and s["rounds_done"] == 20, s
        assert s["curve"] and s["test_accuracy"] is not None


def test_a_killed_agent_is_lost_and_the_session_completes_without_it(service, tmp_path):
    with service.client() as c:
        service.wait_agents(c, idle=3)
        # three honest workers and the mean: the run can go on with two
        r = start_session(c, make_csv(tmp_path / "d.csv"), [*LONG, "nodes.honest=3", "nodes.byzantine=0", "aggregator=mean"])
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        s = wait_rounds(service, c, sid, 6)
        assert s["state"] == "RUNNING", s
        victim = next(a["name"] for a in c.get("/agents").json() if a["nodes"] == [3])
        service.agents[victim].send_signal(signal.SIGKILL)
        service.agents[victim].wait()
        s = service.wait_state(c, sid, ("COMPLETED", "FAILED"))
        assert s["state"] == "COMPLETED", s
        lost = [e for e in s["events"] if e["event"] == "node_lost"]
        assert [e["node"] for e in lost] == [3], s["events"]
        summary = json.loads((service.root / "outputs" / "sessions" / sid / "summary.json").read_text())
        assert summary["lost_ids"] == [3]
        agents = {a["name"]: a for a in c.get("/agents").json()}
        assert agents[victim]["state"] == "LOST" and not agents[victim]["online"]
        service.wait_agents(c, idle=2)


def test_a_restarted_service_reattaches_to_a_running_session(service, tmp_path):
    with service.client() as c:
        service.wait_agents(c, idle=3)
        sid = start_session(c, make_csv(tmp_path / "d.csv"), [*LONG, "rounds=400", "eval_every=10"]).json()["id"]
        wait_rounds(service, c, sid, 10)
    service.kill_serve(signal.SIGKILL)
    time.sleep(1)
    service.start()
    with service.client() as c:
        s = c.get(f"/sessions/{sid}").json()
        assert s["state"] == "RUNNING" and s["rounds_done"] < 400, s
        assert f"session {sid}: re-attached to its run" in (service.root / "serve.log").read_text()
        s = service.wait_state(c, sid, ("COMPLETED", "FAILED"))
        assert s["state"] == "COMPLETED" and s["rounds_done"] == 400, s
        service.wait_agents(c, idle=3)


def test_a_session_whose_run_died_with_the_service_is_failed_on_restart(service, tmp_path):
    with service.client() as c:
        service.wait_agents(c, idle=3)
        sid = start_session(c, make_csv(tmp_path / "d.csv"), LONG).json()["id"]
        wait_rounds(service, c, sid, 2)
    service.kill_serve(signal.SIGKILL)
    run = json.loads((service.root / "outputs" / "sessions" / sid / "run.json").read_text())
    os.killpg(run["launcher_pid"], signal.SIGKILL)
    time.sleep(1)
    service.start()
    with service.client() as c:
        s = c.get(f"/sessions/{sid}").json()
        assert s["state"] == "FAILED" and "byzctl serve stopped while the session ran" in s["reason"], s
        service.wait_agents(c, idle=3)  # their nodes notice the monitor is gone and exit


def test_stop_then_resume(service, tmp_path):
    with service.client() as c:
        service.wait_agents(c, idle=3)
        sid = start_session(c, make_csv(tmp_path / "d.csv"), LONG).json()["id"]
        wait_rounds(service, c, sid, 6)
        assert c.post(f"/sessions/{sid}/stop").status_code == 202
        s = service.wait_state(c, sid, ("INTERRUPTED", "FAILED", "COMPLETED"))
        assert s["state"] == "INTERRUPTED", s
        assert c.post(f"/sessions/{sid}/stop").status_code == 422  # not running
        service.wait_agents(c, idle=3)
        r = c.post(f"/sessions/{sid}/resume")
        assert r.status_code == 202, r.text
        s = service.wait_state(c, sid, ("COMPLETED", "FAILED", "INTERRUPTED"))
        assert s["state"] == "COMPLETED" and s["rounds_done"] == 80, s
        run = json.loads((service.root / "outputs" / "sessions" / sid / "run.json").read_text())
        assert len(run["resumed"]) == 1
