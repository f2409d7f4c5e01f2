"""A real `byzctl serve` and real `byzctl agent` processes on loopback, for the service tests."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

PASSWORD = "correct horse battery"
SMALL = ["nodes.honest=2", "nodes.byzantine=1", "rounds=20", "eval_every=5", "model.hidden=[16]", "dataset.test_size=60",
         "topology.join_timeout=90", "topology.quorum_deadline=30"]
"""A session on three agents: ps, two honest workers and a sign-flipping one, a small MLP.
The server waits for every worker (the trimmed mean needs all three vectors for f=1,
and a loaded machine misses the default 2 s past the quorum)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_csv(path: Path, rows: int = 360, seed: int = 0) -> Path:
    """Three separable classes named by text labels, four numeric features."""
    rng = random.Random(seed)
    lines = ["f1,f2,f3,f4,species"]
    for i in range(rows):
        y = i % 3
        lines.append(",".join(f"{rng.gauss(2.0 * y + 0.3 * k, 0.8):.4f}" for k in range(4)) + f",{'abc'[y]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "byzctl", *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120)


class Service:
    """`byzctl serve` with a temporary SQLite file, its agents, and the runs it started."""

    def __init__(self, root: Path, *, agent_timeout: float = 4.0, max_upload_mb: float = 1.0):
        self.root = root
        self.db = f"sqlite:///{root / 'byzctl.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.agent_timeout, self.max_upload_mb = agent_timeout, max_upload_mb
        self.serve: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        for name, admin in (("alice", False), ("bob", False), ("root", True)):
            out = cli("users", "add", name, "--db", self.db, *(["--admin"] if admin else []), stdin=f"{PASSWORD}\n{PASSWORD}\n")
            assert out.returncode == 0, out.stderr
        out = cli("agents", "token", "--db", self.db)
        assert out.returncode == 0, out.stderr
        self.token_file = root / "agent.token"
        self.token_file.write_text(out.stdout)

    def start(self) -> Service:
        log = open(self.root / "serve.log", "ab")
        self.serve = subprocess.Popen([sys.executable, "-m", "byzctl", "serve", "--db", self.db, "--port", str(self.port),
                                       "--outputs", str(self.root / "outputs"), "--heartbeat", "0.5",
                                       "--agent-timeout", str(self.agent_timeout), "--max-upload-mb", str(self.max_upload_mb)],
                                      cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            assert self.serve.poll() is None, (self.root / "serve.log").read_text()
            time.sleep(0.2)
        raise AssertionError("byzctl serve did not answer /health within 60 s")

    def kill_serve(self, sig: int = signal.SIGKILL) -> None:
        assert self.serve is not None
        self.serve.send_signal(sig)
        self.serve.wait(timeout=30)

    def agent(self, name: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"agent-{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "byzctl", "agent", "--server", self.url, "--token-file", str(self.token_file),
                                 "--name", name, "--work-dir", str(self.root / f"agent-{name}")],
                                cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        self.agents[name] = proc
        return proc

    def wait_agents(self, client: httpx.Client, idle: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            agents = client.get("/agents").json()
            if sum(a["state"] == "IDLE" for a in agents) >= idle:
                return agents
            assert time.monotonic() < deadline, f"{idle} idle agents expected: {agents}"
            time.sleep(0.3)

    def client(self, user: str = "alice") -> httpx.Client:
        r = httpx.post(f"{self.url}/auth/token", data={"username": user, "password": PASSWORD}, timeout=10)
        assert r.status_code == 200, r.text
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {r.json()['access_token']}"}, timeout=120)

    def wait_state(self, client: httpx.Client, sid: str, states: tuple[str, ...], timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            s = client.get(f"/sessions/{sid}").json()
            if s["state"] in states:
                return s
            assert time.monotonic() < deadline, f"session {sid} still {s['state']} after {timeout}s: {s}"
            time.sleep(0.5)

    def close(self) -> None:
        """Stop every process the test started: agents (their nodes follow), the service,
        and the runs it started (each in its own process group)."""
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.agents.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.serve is not None and self.serve.poll() is None:
            self.serve.terminate()
            try:
                self.serve.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.serve.kill()
                self.serve.wait()
        for run_json in (self.root / "outputs").glob("sessions/*/run.json"):
            with contextlib.suppress(OSError, ValueError, ProcessLookupError, TypeError):
                os.killpg(int(json.loads(run_json.read_text())["launcher_pid"]), signal.SIGTERM)


@contextlib.contextmanager
def running(root: Path, agents: tuple[str, ...] = ("a1", "a2", "a3")) -> Iterator[Service]:
    """A started service with `agents` registered, closed (every process it started
    stopped) on the way out."""
    svc = Service(root)
    try:
        svc.start()
        for name in agents:
            svc.agent(name)
        yield svc
    finally:
        svc.close()


def start_session(client: httpx.Client, csv: Path | None, overrides: list[str]) -> httpx.Response:
    files = {"dataset": (csv.name, csv.read_bytes(), "text/csv")} if csv is not None else None
    return client.post("/sessions", data={"overrides": json.dumps(overrides)}, files=files)
