"""`byzctl serve` end to end: a real service on loopback, three real agents, a real client.

One service for the module: a session of a CSV of our own making runs to COMPLETED on
the three agents, then sign-in, tokens and bad input are checked against the same
service (each refusal leaves every agent idle and no session behind).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
from servekit import SMALL, make_csv, running, start_session

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running(tmp_path_factory.mktemp("serve")) as svc:
        yield svc


@pytest.fixture(scope="module")
def alice(service):
    with service.client("alice") as c:
        service.wait_agents(c, idle=3)
        yield c


def test_a_session_runs_to_completed_on_three_agents(service, alice, tmp_path):
    csv = make_csv(tmp_path / "iris_like.csv")
    r = start_session(alice, csv, SMALL)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["state"] == "RUNNING"
    assert sorted(a["nodes"][0] for a in r.json()["agents"]) == [1, 2, 3]  # the ps server runs beside the monitor
    s = service.wait_state(alice, sid, ("COMPLETED", "FAILED", "INTERRUPTED"))
    assert s["state"] == "COMPLETED", s
    assert s["rounds_done"] == s["rounds"] == 20 and s["reason"] == ""
    assert s["test_accuracy"] > 0.5 and [r for r, _ in s["curve"]] == [5, 10, 15, 20]
    rows = [json.loads(line) for line in alice.get(f"/sessions/{sid}/metrics").text.splitlines()]
    assert [row["round"] for row in rows if row.get("role") == "server"] == [5, 10, 15, 20]
    assert alice.get(f"/sessions/{sid}/metrics", params={"follow": "true"}).text.splitlines() == \
        alice.get(f"/sessions/{sid}/metrics").text.splitlines()  # an ended session's stream ends
    agents = service.wait_agents(alice, idle=3)
    assert all(a["session"] is None for a in agents)
    assert [x["id"] for x in alice.get("/sessions").json()] == [sid]
    # the run directory is a CLI run's: byzctl status reads it
    status = subprocess.run([sys.executable, "-m", "byzctl", "status", s["run_dir"], "--json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "COMPLETED" in status.stdout, status.stdout + status.stderr


def test_sign_in_and_tokens(service, alice):
    url = service.url
    assert httpx.post(f"{url}/auth/token", data={"username": "alice", "password": "wrong password"}).status_code == 401
    assert httpx.post(f"{url}/auth/token", data={"username": "nobody", "password": "whatever1"}).status_code == 401
    assert httpx.get(f"{url}/sessions").status_code == 401
    forged = jwt.encode({"sub": "1", "kind": "user", "exp": int(time.time()) + 600}, "a key that is not the service key, 32+ bytes", algorithm="HS256")
    r = httpx.get(f"{url}/sessions", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and "invalid token" in r.json()["detail"]
    from byzctl.service.auth import issue, signing_key
    from byzctl.service.db import engine_for

    expired = issue(signing_key(engine_for(service.db)), "user", 1, -5)
    r = httpx.get(f"{url}/sessions", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    assert httpx.get(f"{url}/health").status_code == 200
    # an agent token does not sign a user in, and an enrolment token is needed to register
    r = httpx.post(f"{url}/agents/register", json={"name": "intruder", "port": 9000}, headers={"Authorization": "Bearer guess"})
    assert r.status_code == 401


def test_a_user_sees_and_stops_only_their_own_sessions(service, alice):
    mine = alice.get("/sessions").json()
    assert mine, "the session of the first test"
    sid = mine[0]["id"]
    with service.client("bob") as bob:
        assert bob.get("/sessions").json() == []
        assert bob.get(f"/sessions/{sid}").status_code == 404
        assert bob.post(f"/sessions/{sid}/stop").status_code == 404
        assert bob.get(f"/sessions/{sid}/metrics").status_code == 404
    with service.client("root") as admin:
        assert sid in [s["id"] for s in admin.get("/sessions").json()]
        assert admin.get(f"/sessions/{sid}").json()["owner"] == "alice"


BAD = [
    ("f1,f2,f3,f4,species\n1,2,3,4,a\n1,2,x,4,b\n" + "1,2,3,4,a\n" * 50, [], "row 3, column f3: 'x' is not a number"),
    ("f1,f2,f3,f4,species\n" + "1,2,3,4,a\n2,3,4,5,b\n" * 50, ["dataset.label_column=label"], "dataset.label_column='label' not found"),
    (None, ["roundz=3"], "roundz"),
    (None, ["aggregator=krum", "nodes.honest=2", "nodes.byzantine=1"], "krum"),
    (None, ["cluster=/etc/passwd"], "cluster is set by the service"),
    (None, ["dataset=csv"], "upload the CSV"),
]


@pytest.mark.parametrize("csv, overrides, message", BAD, ids=["bad_row", "label_column", "unknown_key", "impossible", "service_key", "csv_without_file"])
def test_bad_input_is_422_with_the_cli_message_and_starts_nothing(service, alice, tmp_path, csv, overrides, message):
    path = None
    if csv is not None:
        path = tmp_path / "bad.csv"
        path.write_text(csv)
    before = alice.get("/sessions").json()
    r = start_session(alice, path, ["rounds=5", *overrides])
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert alice.get("/sessions").json() == before
    assert all(a["state"] == "IDLE" for a in alice.get("/agents").json())


@pytest.mark.parametrize("overrides", [["roundz=3"], ["aggregator=krum", "nodes.honest=2", "nodes.byzantine=1"]])
def test_the_cli_gives_the_same_message(alice, tmp_path, overrides):
    detail = start_session(alice, None, overrides).json()["detail"]
    out = subprocess.run([sys.executable, "-m", "byzctl", "run", *overrides, f"hydra.run.dir={tmp_path / 'r'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert detail.splitlines()[0] in out.stderr, (detail, out.stderr)


def test_bad_overrides_field_and_oversized_upload(service, alice, tmp_path):
    r = alice.post("/sessions", data={"overrides": "topology=mesh"})
    assert r.status_code == 422 and "JSON list" in r.json()["detail"]
    big = tmp_path / "big.csv"
    big.write_bytes(b"a,b\n" + b"1,2\n" * (300 * 1024))  # 1.2 MB, over the service's 1 MB
    r = start_session(alice, big, ["rounds=5"])
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]
    assert all(a["state"] == "IDLE" for a in alice.get("/agents").json())


def test_too_few_agents_is_409_and_creates_nothing(service, alice, tmp_path):
    before = alice.get("/sessions").json()
    r = start_session(alice, make_csv(tmp_path / "d.csv"), [*SMALL, "nodes.honest=4"])
    assert r.status_code == 409, r.text
    body = r.json()
    assert (body["needed"], body["idle"]) == (5, 3)
    assert "needs 5 agents, 3 are idle" in body["detail"]
    assert alice.get("/sessions").json() == before
    assert len(list((Path(service.root) / "outputs" / "sessions").iterdir())) == len(before)


def test_passwords_are_argon2id_and_the_signing_key_is_in_the_database(service):
    from sqlmodel import Session, select

    from byzctl.service.db import Setting, User, engine_for

    with Session(engine_for(service.db)) as db:
        hashes = [u.password_hash for u in db.exec(select(User)).all()]
        key = db.get(Setting, "jwt_key")
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    assert key is not None and len(key.value) >= 48


def test_without_the_serve_extra_the_commands_exit_2_with_the_pip_line(monkeypatch, capsys):
    import importlib.util

    from byzctl.service import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert cli.serve(["--db", "sqlite:///unused.db"]) == 2
    assert "pip install 'byzctl[serve]'" in capsys.readouterr().err


def test_an_agent_name_is_bound_to_its_public_key(service):
    """Last in the module: the registered agent never heartbeats and turns LOST."""
    url = service.url
    enrol = {"Authorization": f"Bearer {service.token_file.read_text().strip()}"}
    key_a, key_b = "a" * 40, "b" * 40
    r = httpx.post(f"{url}/agents/register", json={"name": "keyed", "port": 9000, "public_key": key_a}, headers=enrol)
    assert r.status_code == 200
    assert httpx.get(f"{url}/sessions", headers={"Authorization": f"Bearer {r.json()['token']}"}).status_code == 401
    r = httpx.post(f"{url}/agents/register", json={"name": "keyed", "port": 9000, "public_key": key_b}, headers=enrol)
    assert r.status_code == 401 and "bound to another CURVE public key" in r.json()["detail"]


def test_account_and_serve_commands_refuse_bad_input(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    run = [sys.executable, "-m", "byzctl"]
    out = subprocess.run([*run, "users", "add", "carol", "--db", db], input="first password\nsecond password\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "the two passwords differ" in out.stderr
    out = subprocess.run([*run, "users", "add", "carol", "--db", db], input="short\nshort\n", capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "use at least 8" in out.stderr
    out = subprocess.run([*run, "serve", "--db", db, "--ports", "9000"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--ports '9000'" in out.stderr
    out = subprocess.run([*run, "serve", "--db", "byzctl.db"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a database URL" in out.stderr
