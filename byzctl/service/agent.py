"""`byzctl agent`: a long-lived peer that takes sessions from `byzctl serve`.

It registers with its enrolment token (and its CURVE public key, with --keys), then
heartbeats. A heartbeat's answer may carry an assignment: the session's cluster file and
the node ids placed here. The agent writes the file and starts one `byzctl node --id N
cluster=FILE` per node, the very command a person would type, so the node takes the
run's config and its data shard from the session's monitor and reports to it. Nodes die
with the agent (parent-death signal), so a killed agent's nodes are lost nodes to the
run. When the coordinator is unreachable the agent keeps its nodes and retries; when its
token is refused (a new database) it registers again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("byzctl.agent")

REAP_GRACE_S = 5.0


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Agent:
    server: str
    token: str
    name: str
    port: int
    work_dir: Path
    host: str | None = None
    public_key: str | None = None
    interval: float = 2.0
    fixed_interval: bool = False
    """--interval given: keep it rather than the coordinator's heartbeat_s."""
    children: dict[tuple[str, int, int], subprocess.Popen[bytes]] = field(default_factory=dict)
    """(session, attempt, node id) -> its `byzctl node` process."""
    done: set[tuple[str, int]] = field(default_factory=set)
    finished: list[tuple[str, int, int]] = field(default_factory=list)
    own_token: str | None = None
    stopping: bool = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        client = httpx.Client(base_url=self.server.rstrip("/"), timeout=10.0)
        try:
            while not self.stopping:
                self._reap()
                try:
                    self._beat(client)
                except httpx.HTTPError as exc:
                    log.warning("coordinator %s unreachable (%s); retrying", self.server, exc)
                except PermissionError as exc:
                    log.error("%s", exc)
                    return 2
                self._sleep(self.interval)
            return 0
        finally:
            self._terminate()
            client.close()

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.1, end - time.monotonic()))

    def _register(self, client: httpx.Client) -> None:
        body: dict[str, Any] = {"name": self.name, "port": self.port, "host": self.host, "public_key": self.public_key}
        r = client.post("/agents/register", json=body, headers={"Authorization": f"Bearer {self.token}"})
        if r.status_code in (401, 403, 422):
            raise PermissionError(f"the coordinator refused this agent's registration: {r.status_code} {r.json().get('detail')}")
        r.raise_for_status()
        data = r.json()
        self.own_token = data["token"]
        if not self.fixed_interval:
            self.interval = float(data.get("heartbeat_s", self.interval))
        log.info("registered with %s as agent %s (id %s)", self.server, self.name, data["agent_id"])

    def _beat(self, client: httpx.Client) -> None:
        if self.own_token is None:
            self._register(client)
        r = client.post("/agents/heartbeat", json={"busy": bool(self.children), "finished": self.finished},
                        headers={"Authorization": f"Bearer {self.own_token}"})
        if r.status_code == 401:  # a new coordinator database, or an expired token: register again
            self.own_token = None
            return
        r.raise_for_status()
        self.finished = []
        job = r.json().get("assignment")
        if job and (job["session"], job["attempt"]) not in self.done and not any(k[:2] == (job["session"], job["attempt"]) for k in self.children):
            self._start(job)

    def _start(self, job: dict[str, Any]) -> None:
        sid, attempt = str(job["session"]), int(job["attempt"])
        folder = self.work_dir / "sessions" / sid
        folder.mkdir(parents=True, exist_ok=True)
        cluster = folder / "cluster.yaml"
        cluster.write_text(job["cluster"])
        for node_id in job["nodes"]:
            with open(folder / f"node{node_id}.log", "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "byzctl", "node", "--id", str(node_id), f"cluster={cluster}",
                                         "--state-dir", str(folder)], cwd=folder, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            self.children[(sid, attempt, int(node_id))] = proc
            log.info("session %s: started node %s (pid %d); its log: %s", sid, node_id, proc.pid, folder / f"node{node_id}.log")

    def _reap(self) -> None:
        for key, proc in list(self.children.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.children[key]
            sid, attempt, node_id = key
            self.done.add((sid, attempt))
            self.finished.append((sid, attempt, code))
            log.info("session %s: node %d exited with code %d", sid, node_id, code)

    def _terminate(self) -> None:
        """Stop and reap every node this agent started."""
        for proc in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + REAP_GRACE_S
        for proc in self.children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def free_port() -> int:
    """A port for this agent's nodes, below the ephemeral range (see sessions.PORTS)."""
    import random

    for _ in range(200):
        port = random.randrange(30000, 32700)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("", port))
            return port
    raise OSError("no free port in 30000-32700: give --port")


def public_key(keys: Path, name: str) -> str:
    """This agent's CURVE public key (Z85 text) from `byzctl keys gen` output."""
    from byzctl.errors import ConfigError

    candidates = [keys / "public" / f"{name}.key", keys / f"{name}.key"]
    for path in candidates:
        if path.is_file():
            for line in path.read_text().splitlines():
                line = line.strip()
                if line.startswith("public-key"):
                    return line.split("=", 1)[1].strip().strip('"')
            raise ConfigError(f"--keys: {path} holds no public-key line")
    raise ConfigError(f"--keys {keys}: no public key for agent {name!r} (looked for {', '.join(map(str, candidates))})")


def token_from(path: str) -> str:
    from byzctl.errors import ConfigError

    try:
        token = (sys.stdin.read() if path == "-" else Path(path).read_text()).strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: {exc}") from None
    if not token:
        raise ConfigError(f"--token-file {path} is empty (make a token with `byzctl agents token`)")
    return token


def main_loop(args: Any) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s agent: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per heartbeat
    name = args.name or socket.gethostname()
    agent = Agent(server=args.server, token=token_from(args.token_file), name=name, port=args.port or free_port(),
                  work_dir=Path(args.work_dir or f"byzctl-agent-{name}").absolute(), host=args.host,
                  public_key=public_key(Path(args.keys), name) if args.keys else None,
                  interval=args.interval or 2.0, fixed_interval=args.interval is not None)
    agent.work_dir.mkdir(parents=True, exist_ok=True)
    log.info("agent %s (pid %d): node port %d, work dir %s", name, os.getpid(), agent.port, agent.work_dir)
    return agent.run()
