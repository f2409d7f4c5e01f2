"""The local launcher: spawn every node of a run as a process, supervise, record.

The launcher owns the run directory. Whatever ends the run (completion, a node's
crash, a join timeout, Ctrl-C or SIGTERM), the `finally` reaps every child, flushes
the files and records the state with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.live import Live

from byzctl.config.experiment import Experiment
from byzctl.errors import ByzctlError, ConfigError, PeerError
from byzctl.launch.hosts import Host, start_host
from byzctl.launch.monitor import Monitor, NodeStatus
from byzctl.launch.rundir import RunDir, host_log, read_json
from byzctl.loggers import RunContext, headline
from byzctl.states import RunState
from byzctl.topology.base import Role
from byzctl.transport.sockets import private_ipc_dir

log = logging.getLogger("byzctl")

DONE_GRACE_S = 10.0
"""After the aggregating node finished, how long the others get to exit on their own."""
REAP_GRACE_S = 3.0
"""After SIGTERM, how long a child gets before SIGKILL."""
CHECKPOINT_GRACE_S = 8.0
"""On interrupt, how long nodes get to send their state and exit."""



class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the launcher."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def write_resolved(cfg: DictConfig, rundir: RunDir) -> Path:
    path = rundir.path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True))
    return path


class LocalLauncher:
    def __init__(self, exp: Experiment, rundir: RunDir, console: Console | None = None, resume: bool = False):
        self.exp, self.rundir, self.resume = exp, rundir, resume
        self.console = console or Console(stderr=False)
        self.run_id = uuid.uuid4().hex[:12]
        self.procs: dict[int, Host] = {}
        """Each local node's host process (shared by the nodes packed in it)."""
        self.state, self.reason = RunState.RUNNING, ""

    def local_nodes(self) -> list[int]:
        """The nodes this launcher starts (see Experiment.local_nodes)."""
        return self.exp.local_nodes()

    def spawn(self, monitor: Monitor, resolved: Path) -> None:
        """Start this host's nodes in host processes forked from the preloaded server,
        packed as `processes=` says (topology/packing.py)."""
        for group in self.exp.hosts():
            host = start_host(group, self.control, self.run_id, resolved, host_log(self.rundir.path, group))
            for node_id in group:
                self.procs[node_id] = host

    @property
    def hosts(self) -> list[Host]:
        return list({id(h): h for h in self.procs.values()}.values())

    def host_groups(self) -> list[list[int]]:
        """The node ids of each host process started (one heartbeat each, node/cohost.py)."""
        return [list(h.nodes) for h in self.hosts]

    def run(self) -> dict[str, Any]:
        exp, rundir = self.exp, self.rundir
        cluster = exp.cluster
        # A monitor that cannot bind raises here, before anything started or was recorded:
        # the caller reports it like a failed check (launch/app.py).
        # With a cluster file, TCP where it says; else where `monitor_bind` says.
        monitor = Monitor(exp, self.run_id, rundir, bind=cluster.monitor.bind if cluster else self.monitor_bind())
        self.control = cluster.monitor.advertised if cluster else monitor.endpoint
        old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
        t0 = time.monotonic()
        try:
            if self.resume:
                self._load_resume(monitor)
                resolved = rundir.path / "config.yaml"
                rundir.info = read_json(rundir.run_json)
                rundir.update(state=RunState.RUNNING, reason="", ended=None, run_id=self.run_id, control=self.control,
                              launcher_pid=os.getpid(), host=socket.gethostname(),
                              resumed=[*rundir.info.get("resumed", []), {"time": time.time(), "from_round": self.resumed_from}])
            else:
                resolved = write_resolved(exp.cfg, rundir)
                rundir.start(run_id=self.run_id, config_hash=exp.hash, topology=exp.topology.name,
                             launcher_pid=os.getpid(), host=socket.gethostname(),
                             launcher=exp.launcher.name.value, control=self.control,
                             nodes=[{"id": s.id, "role": s.role.value, "byzantine": s.byzantine} for s in exp.plan()])
            self._open_logger()
            self.spawn(monitor, resolved)
            spawned = time.monotonic()  # a scheduler's spawn returns once its job runs: joins are timed from there
            rundir.update(pids={str(i): p.pid for i, p in self.procs.items()})
            monitor.pids = {i: p.pid for i, p in self.procs.items()}
            monitor.hosts = {min(g): frozenset(g) for g in self.host_groups() if len(g) > 1}
            self._supervise(monitor, spawned)
        except Interrupted as exc:
            self.state, self.reason = RunState.INTERRUPTED, f"interrupted by {exc}"
            self._checkpoint_and_stop(monitor)
        except ByzctlError as exc:
            self.state, self.reason = RunState.FAILED, str(exc)
        except Exception as exc:
            self.state, self.reason = RunState.FAILED, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            with contextlib.suppress(Exception):
                monitor.stop_all(self.reason or "run ended", self.state)
            codes = self.reap()
            with contextlib.suppress(Exception):
                monitor.drain()
            summary = self.summary(monitor, codes, time.monotonic() - t0)
            rundir.summary(summary)
            rundir.end(self.state, self.reason, exit_codes={str(k): v for k, v in codes.items()})
            rundir.close()
            monitor.close()
            for s, h in old.items():
                signal.signal(s, h)
        return summary

    def _supervise(self, monitor: Monitor, t0: float) -> None:
        title = f"byzctl {self.exp.topology.name}: {self.exp.honest} honest + {self.exp.byzantine} Byzantine, {self.exp.aggregator.name} vs {self.exp.attack.name}"
        live = Live(monitor.table(title), console=self.console, refresh_per_second=4, auto_refresh=False) if self.console.is_terminal else contextlib.nullcontext()
        done_at: float | None = None
        with live:
            while True:
                monitor.poll(100)
                now = time.monotonic()
                monitor.beat(now)
                for line in monitor.lines:  # evaluations, above the live table
                    (live.console if isinstance(live, Live) else self.console).print(line, markup=False, highlight=False, soft_wrap=True)
                monitor.lines.clear()
                codes = {i: self.outcome(i, monitor) for i in monitor.nodes}
                for i in monitor.silent(now):
                    monitor.lose(i, f"no heartbeat for {self.exp.topology.peer_timeout}s (dead or hung)")
                for i, code in codes.items():
                    if code not in (None, 0) and not monitor.nodes[i].lost and monitor.welcomed:
                        err = (f"killed by {signal.Signals(-code).name}" if code < 0 else
                               monitor.nodes[i].final.get("error") or _last_line(self.rundir.node_log(i)))
                        monitor.lose(i, f"exited with code {code}: {err}")
                        self._note(i, f"node {i} lost: exited with code {code}")
                fatal = self.fatal(monitor, codes)
                if fatal:
                    self.state, self.reason = RunState.FAILED, fatal
                    break
                primary = [i for i, s in monitor.nodes.items() if s.spec.role is not Role.relay]
                if all(codes[i] == 0 or monitor.nodes[i].lost for i in primary):
                    self.state = RunState.COMPLETED
                    break
                if not monitor.welcomed and now - t0 > self.exp.topology.join_timeout:
                    missing = monitor.missing()
                    cluster = self.exp.cluster
                    why = (cluster.missing_message(missing) if cluster else
                           f"not enough peers: nodes {missing} did not join within join_timeout={self.exp.topology.join_timeout}s")
                    if monitor.refused:  # the nodes refused alone while the run waited: say why
                        why += "; refused meanwhile: " + "; ".join(dict.fromkeys(monitor.refused))
                    raise PeerError(why)
                evaluators = [s for s in monitor.nodes.values() if s.spec.role.evaluates]
                if done_at is None and evaluators and all(s.final for s in evaluators):
                    done_at = now
                if done_at is not None and now - done_at > DONE_GRACE_S:
                    self.state = RunState.COMPLETED
                    break
                if isinstance(live, Live):
                    live.update(monitor.table(title), refresh=True)
            if isinstance(live, Live):
                live.update(monitor.table(title), refresh=True)
        if not isinstance(live, Live):
            self.console.print(monitor.table(title))

    def _open_logger(self) -> None:
        """logger=tensorboard|mlflow: opened before any node starts; from then on every
        metrics.jsonl row goes there too, and RunDir.close ends it with the run's state."""
        exp, path = self.exp, self.rundir.path
        server = next((s.id for s in exp.plan() if s.role is Role.server), None)
        config = OmegaConf.to_container(exp.cfg, resolve=True, enum_to_str=True)
        assert isinstance(config, dict)
        ctx = RunContext(
            path=path, config={str(k): v for k, v in config.items()}, label=f"{path.parent.name}/{path.name}",
            tags={"config_hash": exp.hash, "topology": str(exp.topology.name),
                  "aggregator": str(exp.aggregator.name), "attack": str(exp.attack.name)},
            headline=headline(exp.decentralized, server),
            resumed_from=self.resumed_from if self.resume else None,
            previous=(self.rundir.info.get("logger") or {}) if self.resume else {},
        )
        try:
            sink = exp.logger.open(ctx)
        except ByzctlError:
            raise
        except Exception as exc:
            raise ConfigError(f"logger={exp.logger.name}: cannot open it: {type(exc).__name__}: {exc}") from exc
        if sink is not None:
            self.rundir.attach(sink)

    def _load_resume(self, monitor: Monitor) -> None:
        from byzctl.launch.checkpoints import latest_checkpoint, read_checkpoint

        path = latest_checkpoint(self.rundir.path / "checkpoints")
        if path is None:
            raise ConfigError(f"resume={self.rundir.path}: no checkpoint in {self.rundir.path / 'checkpoints'}")
        self.resumed_from, monitor.resume = read_checkpoint(path)
        log.info("resuming from %s (round %d)", path.name, self.resumed_from)

    def _checkpoint_and_stop(self, monitor: Monitor) -> None:
        """On Ctrl-C: ask every node for its state, give them a moment, save it."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the save short
        with contextlib.suppress(Exception):
            monitor.stop_all(self.reason, self.state, checkpoint=True)
            deadline = time.monotonic() + CHECKPOINT_GRACE_S
            while time.monotonic() < deadline and self.stopping(monitor):
                monitor.poll(50)
            monitor.drain()
            monitor.flush_checkpoint()

    def monitor_bind(self) -> str:
        """Where the monitor listens without a cluster file: one machine, so a unix socket in
        a private (0700) directory, out of other local users' reach."""
        return f"ipc://{private_ipc_dir()}/monitor"

    def stopping(self, monitor: Monitor) -> bool:
        """While interrupted: whether nodes may still send their state (a child runs)."""
        return any(p.poll() is None for p in self.procs.values())

    def fatal(self, monitor: Monitor, codes: dict[int, int | None]) -> str:
        """Why the run cannot go on, or '' if it can: a node failed before the run began,
        the server or relay is gone, or no honest node is left."""
        for i, code in codes.items():
            st = monitor.nodes[i]
            if code not in (None, 0) and (not monitor.welcomed or st.spec.role.central):
                err = st.final.get("error") or _last_line(self.rundir.node_log(i))
                return f"node {i} ({st.spec.label}) exited with code {code}: {err}"
            if st.lost and st.spec.role.central:
                return f"node {i} ({st.spec.label}) was lost: the run cannot go on without it"
        honest = [s for s in monitor.nodes.values() if s.spec.role.trains and not s.spec.byzantine]
        if honest and all(s.lost for s in honest):
            return "every honest node was lost"
        return ""

    def _note(self, node_id: int, line: str) -> None:
        """Append the launcher's view of an event to the node's own log."""
        with contextlib.suppress(OSError), open(self.rundir.node_log(node_id), "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} launcher: {line}\n")

    def outcome(self, node_id: int, monitor: Monitor) -> int | None:
        """None while a node runs; 0 when it finished well; else its exit code (1 for a
        remote node that reported a failure)."""
        proc = self.procs.get(node_id)
        final = monitor.nodes[node_id].final
        if proc is not None:
            code = proc.poll()
            if len(proc.nodes) == 1 or not final:  # a host of many: its nodes report their own ends
                return code
        if not final:
            return None
        return 1 if final.get("state") == "failed" else 0

    def reap(self) -> dict[int, int | None]:
        """Terminate and wait for every child; no process outlives the launcher."""
        for h in self.hosts:
            if h.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(h.pid, signal.SIGTERM)
        deadline = time.monotonic() + REAP_GRACE_S
        for h in self.hosts:
            h.wait(timeout=max(0.0, deadline - time.monotonic()))
            if h.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(h.pid, signal.SIGKILL)
                h.wait()
        return {i: h.returncode for i, h in self.procs.items()}

    def figures(self, monitor: Monitor) -> dict[str, Any]:
        """Final figures: the server's, or for decentralized runs the honest peers' mean
        (as test_accuracy), worst, and the last consensus distance."""
        rounds = max((s.round for s in monitor.nodes.values()), default=0)

        def evaluation(s: NodeStatus) -> dict[str, Any]:  # without a final report: the last evaluation seen
            return s.final if s.final.get("test_accuracy") is not None else s.last_eval

        if not self.exp.decentralized:
            server = next((s for s in monitor.nodes.values() if s.spec.role is Role.server), None)
            ev = evaluation(server) if server else {}
            return {"rounds_completed": server.final.get("rounds_completed", rounds) if server else rounds,
                    "test_accuracy": ev.get("test_accuracy"), "test_loss": ev.get("test_loss")}
        peers = [s for s in monitor.nodes.values() if s.spec.role is Role.peer and not s.spec.byzantine]
        evals = [e for e in map(evaluation, peers) if e.get("test_accuracy") is not None]
        last = monitor.honest_rows[-1] if monitor.honest_rows else {}
        done = [s.final["rounds_completed"] for s in peers if "rounds_completed" in s.final]
        out: dict[str, Any] = {"rounds_completed": min(done, default=rounds)}
        if evals:
            accs = [e["test_accuracy"] for e in evals]
            losses = [e["test_loss"] for e in evals]
            out.update(test_accuracy=sum(accs) / len(accs), test_loss=sum(losses) / len(losses),
                       worst_accuracy=min(accs), worst_loss=max(losses))
        else:
            out.update(test_accuracy=None, test_loss=None)
        out["consensus_distance"] = last.get("consensus_distance")
        return out

    def summary(self, monitor: Monitor, codes: dict[int, int | None], wall: float) -> dict[str, Any]:
        finals = {i: s.final for i, s in monitor.nodes.items()}
        lost = sorted(i for i, s in monitor.nodes.items() if s.lost)
        figures = self.figures(monitor)
        return {
            "state": self.state,
            "reason": self.reason,
            **figures,
            "wall_seconds": round(wall, 3),
            "config_hash": self.exp.hash,
            "topology": self.exp.topology.name,
            "aggregator": self.exp.aggregator.name,
            "preagg": [p.name for p in self.exp.preaggs],
            "attack": self.exp.attack.name,
            "honest": self.exp.honest,
            "byzantine": self.exp.byzantine,
            "checkpoint": monitor.last_checkpoint,
            "monitor_dropped": monitor.dropped,
            "nodes_lost": len(lost),
            "lost_ids": lost,
            "nodes": {str(i): {"state": monitor.nodes[i].state, "exit_code": codes.get(i), **finals[i]} for i in monitor.nodes},
        }


def _last_line(path: Path) -> str:
    """The last line the node wrote to its log (for a failure reason): the launcher's own notes
    in it (`_note`) are skipped, they say nothing the reason does not."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip() and not _NOTE.match(ln)]
    except OSError:
        return ""
    return lines[-1] if lines else f"nothing in its log ({path})"


_NOTE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d launcher: ")
"""A line `LocalLauncher._note` appended to a node's log."""
