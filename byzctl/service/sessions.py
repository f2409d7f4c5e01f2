"""Sessions: a session is a real `byzctl run launcher=remote` whose nodes run on agents.

Starting one composes and checks the config exactly as `byzctl run` does (same errors),
locks enough idle agents in one transaction, writes a cluster file placing the central
node (ps server, hub relay) and the monitor on this host and every other node on an
agent, and starts `byzctl run` as a child process in its own process group, its run
directory under the service's outputs. Agents learn their assignment on their next
heartbeat and run `byzctl node --id N cluster=...`, which fetches the run's config and
(`dataset.ship=true`) its data shard from the monitor. A background thread (`tick`)
marks silent agents lost, follows each run through its run directory, and records the
end in the database, releasing the agents.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from byzctl.errors import ConfigError
from byzctl.jsonio import read_json
from byzctl.procs import byzctl_alive
from byzctl.service.db import Agent, TrainingSession, new_session_id
from byzctl.states import AgentState, RunState

log = logging.getLogger("byzctl.serve")

SERVICE_KEYS = ("launcher", "cluster", "local_nodes", "resume", "processes", "logger", "hydra", "dataset.path",
                "dataset.ship", "security.keys", "memory_check")
"""Override keys the service sets itself (or that name files on its host): refused from users."""

PORT_HOLD_S = 300.0
"""How long a port handed to a session is not handed to another."""

_compose_lock = threading.Lock()
"""Hydra's compose API keeps global state: one composition at a time."""
_lock_agents = threading.Lock()
"""Picking and locking agents is one transaction; this serialises it inside one process
(SQLite would refuse a second writer's upgrade); the conditional UPDATE guards across processes."""


class NotEnoughAgents(Exception):
    """Fewer idle agents than the session needs (HTTP 409)."""

    def __init__(self, needed: int, idle: int, online: int):
        super().__init__(f"not enough peers: the session needs {needed} agents, {idle} are idle ({online} online)")
        self.needed, self.idle, self.online = needed, idle, online


@dataclass
class Checked:
    """A session's config, composed and checked, before any agent is locked."""

    overrides: list[str]
    """What `byzctl run` gets: the user's overrides plus the service's dataset settings."""
    central: list[int]
    """Node ids run on this host (ps server, hub relay)."""
    remote: list[tuple[int, bool]]
    """(node id, byzantine) of every node placed on an agent."""
    rounds: int


def parse_overrides(text: str) -> list[str]:
    """The `overrides` form field: a JSON list of override strings."""
    try:
        value = json.loads(text or "[]")
    except ValueError as exc:
        raise ConfigError(f"overrides must be a JSON list of strings such as [\"topology=mesh\"]; got {text!r}: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"overrides must be a JSON list of strings such as [\"topology=mesh\"]; got {text!r}")
    for ov in value:
        if ov.startswith("-"):
            raise ConfigError(f"override {ov!r}: flags (-m sweeps, --cfg) are not sessions; give key=value overrides")
        key = ov.partition("=")[0].lstrip("+~")
        for refused in SERVICE_KEYS:
            if key == refused or key.startswith(refused + "."):
                raise ConfigError(f"override {ov!r}: {refused} is set by the service for every session (upload the data as the dataset file)")
    return value


def check(overrides: list[str], csv: Path | None) -> Checked:
    """Compose and check as `byzctl run` would, data included; ConfigError/DataError/
    RuleError carry the CLI's own message."""
    from byzctl.config.compose import compose
    from byzctl.config.experiment import Experiment

    dataset = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == "dataset"]
    if csv is not None:
        if dataset and dataset[-1] != "csv":
            raise ConfigError(f"an uploaded dataset file is a CSV: it needs dataset=csv, not dataset={dataset[-1]}")
        extra = ([] if dataset else ["dataset=csv"]) + [f"dataset.path={csv}"]
    elif dataset and dataset[-1] == "csv":
        raise ConfigError("dataset=csv needs the data: upload the CSV file as the session's dataset")
    else:
        extra = []
    full = [*overrides, *extra, "dataset.ship=true"]
    with _compose_lock:
        cfg = compose(full)
    exp = Experiment.from_cfg(cfg, placed=False)
    if exp.decentralized:
        exp.check_graph()
    else:
        exp.check_rule(exp.n)
    exp.dataset.load(int(cfg.seed))  # a malformed CSV fails here, naming its row and column
    plan = exp.plan()
    return Checked(overrides=full, central=[s.id for s in plan if s.role.central],
                   remote=[(s.id, s.byzantine) for s in plan if not s.role.central], rounds=int(cfg.rounds))


PORTS = (29400, 29999)
"""Where the service's monitors and servers listen (`byzctl serve --ports`): below Linux's
ephemeral range (32768-60999), so no outgoing connection holds one, and a node that keeps
dialling a monitor not yet listening cannot end up connected to itself (a TCP
self-connect, possible when source and destination port are the same)."""


def free_port(host: str, ports: tuple[int, int] = PORTS, taken: set[int] | None = None) -> int:
    """A port in `ports` this host can listen on now (bind, then close), not in `taken`."""
    lo, hi = ports
    span = hi - lo + 1
    start = random.randrange(span)
    for k in range(span):
        port = lo + (start + k) % span
        if taken and port in taken:
            continue
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind((host, port))
            return port
    raise ConfigError(f"no free port in {lo}-{hi} on {host} (byzctl serve --ports)")


class Sessions:
    """Starts, follows, stops and resumes sessions; owns their run processes."""

    def __init__(self, engine: Engine, outputs: Path, *, bind_host: str, advertise: str, agent_timeout: float,
                 ports: tuple[int, int] = PORTS):
        self.engine = engine
        self.ports = ports
        self._given: dict[int, float] = {}
        self._port_lock = threading.Lock()
        self.outputs = outputs.absolute()
        self.bind_host, self.advertise = bind_host, advertise
        self.agent_timeout = agent_timeout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- start --------------------------------------------------------------------------
    def start(self, owner_id: int, overrides: list[str], csv: bytes | None, filename: str | None) -> TrainingSession:
        sid = new_session_id()
        run_dir = self.outputs / "sessions" / sid
        run_dir.mkdir(parents=True)
        try:
            data = None
            if csv is not None:
                data = run_dir / "data.csv"
                data.write_bytes(csv)
            checked = check(overrides, data)
            row = TrainingSession(id=sid, owner_id=owner_id, overrides=json.dumps(overrides), dataset_name=filename,
                                  run_dir=str(run_dir), rounds=checked.rounds, nodes_needed=len(checked.remote),
                                  state=RunState.RUNNING)
            with Session(self.engine) as db:
                db.add(row)
                db.commit()
            try:
                agents = self._lock(sid, checked)
            except NotEnoughAgents:
                with Session(self.engine) as db:
                    db.delete(db.get(TrainingSession, sid))
                    db.commit()
                raise
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        try:
            self._launch(sid, checked, agents, ["run", *self._placement(checked, agents, run_dir), *checked.overrides,
                                                f"hydra.run.dir={run_dir}"])
        except Exception:  # the placed config refused (ByzctlError), no port free, the process not started
            self._release(sid)
            with Session(self.engine) as db:
                db.delete(db.get(TrainingSession, sid))
                db.commit()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        with Session(self.engine) as db:
            found = db.get(TrainingSession, sid)
            assert found is not None
            return found

    def _lock(self, sid: str, checked: Checked) -> list[Agent]:
        """Lock one idle agent per remote node, all or none, in one transaction."""
        needed = len(checked.remote)
        with _lock_agents, Session(self.engine) as db:
            online = db.exec(select(Agent).where(Agent.state != AgentState.LOST)).all()
            idle = sorted((a for a in online if a.state is AgentState.IDLE), key=lambda a: -a.last_seen)
            if len(idle) < needed:
                raise NotEnoughAgents(needed, len(idle), len(online))
            chosen = idle[:needed]
            for agent, (node_id, _) in zip(chosen, checked.remote):
                res = db.execute(update(Agent).where(col(Agent.id) == agent.id, col(Agent.state) == AgentState.IDLE)
                                 .values(state=AgentState.TRAINING, session_id=sid, node_ids=json.dumps([node_id])))
                if res.rowcount != 1:  # type: ignore[attr-defined]
                    db.rollback()
                    raise NotEnoughAgents(needed, len(idle) - 1, len(online))
            db.commit()
            for a in chosen:
                db.refresh(a)
            return list(chosen)

    def _placement(self, checked: Checked, agents: list[Agent], run_dir: Path) -> list[str]:
        """Write the session's cluster file; the overrides that point `byzctl run` at it."""
        mon_port = self._port()
        mon = {"host": self.advertise, "port": mon_port, "bind_host": self.bind_host}
        data: dict[str, Any] = {"monitor": mon}
        entries = [{"id": node_id, "host": a.host, "port": a.port, "bind_host": a.host, "type": "byzantine" if byz else "honest"}
                   for a, (node_id, byz) in zip(agents, checked.remote)]
        if checked.central:
            data["server"] = {"host": self.advertise, "port": self._port(), "bind_host": self.bind_host}
            data["workers" if checked.central[0] == 0 else "nodes"] = entries
        else:
            data["nodes"] = entries
        path = run_dir / "cluster.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return ["launcher=remote", f"cluster={path}", f"local_nodes=[{','.join(map(str, checked.central))}]"]

    def _port(self) -> int:
        """A free port of the range, not handed to another session in the last minutes
        (its run may not have bound it yet)."""
        with self._port_lock:
            now = time.monotonic()
            self._given = {p: t for p, t in self._given.items() if now - t < PORT_HOLD_S}
            port = free_port(self.bind_host, self.ports, taken=set(self._given))
            self._given[port] = now
            return port

    def _launch(self, sid: str, checked: Checked, agents: list[Agent], args: list[str]) -> None:
        run_dir = self.outputs / "sessions" / sid
        self._final_check(args, checked)
        with open(run_dir / "serve.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "byzctl", *args], cwd=run_dir, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "COLUMNS": "160"})
        self.procs[sid] = proc
        with Session(self.engine) as db:
            row = db.get(TrainingSession, sid)
            assert row is not None
            row.pid, row.state, row.reason, row.ended = proc.pid, RunState.RUNNING, "", None
            db.add(row)
            db.commit()
        log.info("session %s: started `byzctl run` (pid %d) with agents %s", sid, proc.pid, [a.name for a in agents])

    def _final_check(self, args: list[str], checked: Checked) -> None:
        """The placed config's own checks (listeners, plaintext TCP off loopback), as
        `byzctl run` makes them, before anything starts."""
        if args[1].startswith("resume="):
            return
        from byzctl.config.compose import compose
        from byzctl.config.experiment import Experiment

        with _compose_lock:
            cfg = compose([*checked.overrides, *[a for a in args[1:] if not a.startswith("hydra.")]])
        Experiment.from_cfg(cfg)

    # -- stop and resume ----------------------------------------------------------------
    def stop(self, row: TrainingSession) -> None:
        """Ctrl-C semantics: the launcher checkpoints, stops the nodes, records INTERRUPTED."""
        if row.state is not RunState.RUNNING or not byzctl_alive(row.pid):
            raise ConfigError(f"session {row.id} is {row.state}, not running: nothing to stop")
        assert row.pid is not None
        os.kill(row.pid, signal.SIGINT)

    def resume(self, row: TrainingSession) -> TrainingSession:
        if row.state not in (RunState.INTERRUPTED, RunState.FAILED):
            raise ConfigError(f"session {row.id} is {row.state}: only an INTERRUPTED or FAILED session resumes")
        run_dir = Path(row.run_dir)
        if not any((run_dir / "checkpoints").glob("round_*.safetensors")):
            raise ConfigError(f"session {row.id} has no checkpoint to resume from ({run_dir / 'checkpoints'})")
        from byzctl.config.compose import load_resolved
        from byzctl.config.experiment import Experiment

        cfg = load_resolved(run_dir / "config.yaml", f"session {row.id}")
        exp = Experiment.from_cfg(cfg, placed=False)
        plan = exp.plan()
        checked = Checked(overrides=[], central=[s.id for s in plan if s.role.central],
                          remote=[(s.id, s.byzantine) for s in plan if not s.role.central], rounds=int(cfg.rounds))
        agents = self._lock(row.id, checked)
        try:
            self._placement(checked, agents, run_dir)  # the same cluster.yaml, on the agents locked now
            self._launch(row.id, checked, agents, ["run", f"resume={run_dir}"])
        except Exception:
            self._release(row.id)
            raise
        with Session(self.engine) as db:
            found = db.get(TrainingSession, row.id)
            assert found is not None
            return found

    # -- follow -------------------------------------------------------------------------
    def recover(self) -> None:
        """At start-up: a session recorded RUNNING whose run process still lives is followed
        again; one whose process is gone is FAILED, saying so (or takes the end its run
        recorded, if it ended while the service was down)."""
        with Session(self.engine) as db:
            # agents heartbeat into the void while the service is down: one timeout of grace to come back
            db.execute(update(Agent).where(col(Agent.state) != AgentState.LOST).values(last_seen=time.time()))
            db.commit()
            for row in db.exec(select(TrainingSession).where(TrainingSession.state == RunState.RUNNING)).all():
                if byzctl_alive(row.pid):
                    log.info("session %s: re-attached to its run (pid %s)", row.id, row.pid)
                    continue
                self._finish(db, row, gone=f"byzctl serve stopped while the session ran, and its run process (pid {row.pid}) is gone",
                             restart=True)

    def tick(self) -> None:
        now = time.time()
        with Session(self.engine) as db:
            silent = db.exec(select(Agent).where(Agent.state != AgentState.LOST, Agent.last_seen < now - self.agent_timeout)).all()
            for a in silent:
                log.warning("agent %s lost: no heartbeat for %.0fs", a.name, now - a.last_seen)
                a.state = AgentState.LOST
                db.add(a)
            db.commit()
            for row in db.exec(select(TrainingSession).where(TrainingSession.state == RunState.RUNNING)).all():
                if row.pid is None:
                    continue  # being started (`start` holds it); recover() ends one a crash left so
                proc = self.procs.get(row.id)
                alive = proc.poll() is None if proc is not None and proc.pid == row.pid else byzctl_alive(row.pid)
                if alive:
                    done = progress(Path(row.run_dir))["rounds_done"]
                    if done != row.rounds_done:
                        row.rounds_done = done
                        db.add(row)
                        db.commit()
                    continue
                code = proc.returncode if proc is not None and proc.pid == row.pid else None
                self.procs.pop(row.id, None)
                self._finish(db, row, gone=f"its run process (pid {row.pid}) exited with code {code} without recording an end")

    def _finish(self, db: Session, row: TrainingSession, *, gone: str, restart: bool = False) -> None:
        """Record how the session's run ended (from its run directory) and free its agents.
        `restart`: found at start-up; a failure then leads with `gone`, the run's own
        reason (its nodes noticed the launcher die) after it."""
        run_dir = Path(row.run_dir)
        try:
            info = read_json(run_dir / "run.json")
        except (OSError, ValueError):
            info = {}
        try:
            summary = read_json(run_dir / "summary.json")
        except (OSError, ValueError):
            summary = {}
        state = info.get("state")
        if restart and state in (RunState.FAILED, RunState.RUNNING):
            row.state, row.reason = RunState.FAILED, gone + (f"; the run recorded: {info['reason']}" if info.get("reason") else "")
        elif state in (RunState.COMPLETED, RunState.FAILED, RunState.INTERRUPTED):
            row.state, row.reason = RunState(state), str(info.get("reason") or "")
        else:
            row.state, row.reason = RunState.FAILED, gone
        if summary.get("state") == row.state:
            row.rounds_done = int(summary.get("rounds_completed") or 0)
            row.test_accuracy, row.test_loss = summary.get("test_accuracy"), summary.get("test_loss")
            row.summary = json.dumps(summary, default=str)
        else:
            row.rounds_done = progress(run_dir)["rounds_done"]
        row.ended = time.time()
        db.add(row)
        db.commit()
        self._release(row.id)
        log.info("session %s: %s %s", row.id, row.state, row.reason)

    def _release(self, sid: str) -> None:
        with Session(self.engine) as db:
            db.execute(update(Agent).where(col(Agent.session_id) == sid, col(Agent.state) == AgentState.TRAINING)
                       .values(state=AgentState.IDLE, session_id=None, node_ids="[]"))
            db.execute(update(Agent).where(col(Agent.session_id) == sid).values(session_id=None, node_ids="[]"))
            db.commit()

    def follow(self, interval: float = 1.0) -> None:
        """Run `tick` every `interval` seconds on a daemon thread until `close`."""
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.tick()
                except Exception:
                    log.exception("session bookkeeping failed; retrying")
        self._thread = threading.Thread(target=loop, name="byzctl-sessions", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following. Runs go on in their own process groups: a restarted service
        re-attaches to them (`recover`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for proc in self.procs.values():  # reap what already ended; the others live on
            with contextlib.suppress(Exception):
                proc.poll()


def progress(run_dir: Path) -> dict[str, Any]:
    """What metrics.jsonl says so far: rounds evaluated, each node's latest figures, the
    accuracy curve (the server's, or the honest peers' mean) and fault events."""
    nodes: dict[str, dict[str, Any]] = {}
    curve: list[list[float]] = []
    events: list[dict[str, Any]] = []
    done = 0
    with contextlib.suppress(OSError), open(run_dir / "metrics.jsonl") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line being written
            if "event" in row:
                events.append(row)
                continue
            r = int(row.get("round") or 0)
            done = max(done, r)
            if row.get("kind") == "honest":
                curve.append([r, float(row["mean_accuracy"])])
            elif "node" in row:
                nodes[str(row["node"])] = {"round": r, "test_accuracy": row.get("test_accuracy"), "test_loss": row.get("test_loss")}
                if row.get("role") == "server" and row.get("test_accuracy") is not None:
                    curve.append([r, float(row["test_accuracy"])])
    return {"rounds_done": done, "nodes": nodes, "curve": curve, "events": events}
