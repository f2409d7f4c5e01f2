"""The monitor: the control plane every node joins, and the live table of the run.

It checks each hello (known id, matching routing id, same config hash), sends the
peer table once every node joined, records heartbeats (a node's own, or its host
process's one beat for all its nodes: node/cohost.py HostBeats), metric rows and final
figures, and can stop every node.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import zmq
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.table import Table

from byzctl.config.experiment import Experiment
from byzctl.launch.checkpoints import NodeStates
from byzctl.launch.rundir import RunDir
from byzctl.node.cohost import host_identity
from byzctl.node.coordinator import config_identity
from byzctl.node.runtime import identity
from byzctl.topology.base import NodeSpec, Role
from byzctl.transport import curve, sockets
from byzctl.transport.drops import DropLog, Reason
from byzctl.transport.wire import Message

log = logging.getLogger("byzctl")

_ABSENT = object()


@dataclass
class NodeStatus:
    spec: NodeSpec
    state: str = "starting"
    round: int = 0
    train_loss: float = float("nan")
    """The last batch's training loss (heartbeats of training nodes)."""
    test_loss: float = float("nan")
    """The last evaluation's test loss."""
    accuracy: float | None = None
    last_seen: float = 0.0
    endpoints: dict[str, str] = field(default_factory=dict)
    joined: bool = False
    lost: bool = False
    final: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)
    """The node's last evaluation (round, test accuracy and loss): its figures when it
    ends without its final report (interrupted, lost)."""


DRAIN_BUDGET_S = 0.2
"""Longest one `poll` reads messages in a row."""

TABLE_ROWS = 24
"""Runs of more nodes show the compact table (summary rows plus the worst nodes)."""
WORST_ROWS = 8


def _fmt(x: float) -> str:
    return "" if x != x else f"{x:.4f}"


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


class Monitor:
    def __init__(self, exp: Experiment, run_id: str, rundir: RunDir, bind: str = "tcp://127.0.0.1:*"):
        self.exp, self.run_id, self.rundir = exp, run_id, rundir
        self.ctx = zmq.Context()
        self.sock = sockets.router(self.ctx, sndhwm=1000)
        self.ring = exp.keyring
        self.auth = curve.start_authenticator(self.ctx, self.ring) if self.ring is not None else None
        if self.ring is not None:
            curve.secure_server(self.sock, self.ring, "monitor")
        try:
            self.endpoint = sockets.bind(self.sock, bind)
        except Exception:
            self.close()  # the port is taken: leave no context or ZAP thread behind
            raise
        self.routes: dict[int, bytes] = {}
        self.drops = DropLog(log, "monitor")
        self.pids: dict[int, int] = {}
        """The process the launcher started for each local node. On an ipc:// control socket
        only that process may speak for the node (the kernel names the sender: SO_PEERCRED)."""
        self.read_all_at = time.monotonic()
        """When the monitor last had read everything that had arrived. Silence is measured up
        to then: a node's heartbeat queued behind a backlog (1,100 workers' checkpoint states,
        350 MB at case C) is not its silence."""
        self.hosts: dict[int, frozenset[int]] = {}
        """The launcher's host processes of many nodes, by leader (lowest id): whose beats
        each host's `heartbeats` may carry (set by the launcher once they are started)."""
        self.host_routes: dict[int, bytes] = {}
        """Each beating host's heartbeat connection, by leader: the monitor beats it once for all its nodes."""
        self.nodes = {s.id: NodeStatus(s) for s in exp.plan()}
        self._graph: dict[int, set[int]] = exp.neighbours() if exp.decentralized else {}
        """In-neighbours of each peer: which entries of the peer table a peer gets."""
        self._outs: dict[int, set[int]] = {}
        for i, ins in self._graph.items():
            for j in ins:
                self._outs.setdefault(j, set()).add(i)
        self._central = [i for i, st in self.nodes.items() if st.spec.role.central]
        self.welcomed = False
        self.refused: list[str] = []
        self.max_bytes = int(exp.topology.max_message_mb * 2**20)
        self.pending: dict[int, dict[int, Any]] = {}
        self.states: dict[int, NodeStates] = {}
        self.splits: Any = None
        self.resume: NodeStates = {}
        self.last_checkpoint: str | None = None
        self.honest_rows: list[dict[str, Any]] = []
        self._next_beat = 0.0
        self.lines: list[str] = []
        """Evaluation lines for the console, taken (and cleared) by the launcher."""

    # -- messages ---------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        return self.drops.total

    def poll(self, timeout_ms: int) -> None:
        """Handle what arrived, for at most DRAIN_BUDGET_S: with hundreds of nodes
        heartbeating, the caller must still get to `beat` (nodes stop after peer_timeout
        without the monitor's heartbeats) and to its checks."""
        if not self.sock.poll(timeout_ms):
            self.read_all_at = time.monotonic()
            self.drops.flush()
            return
        until = time.monotonic() + DRAIN_BUDGET_S
        while time.monotonic() < until:
            if not sockets.readable(self.sock):
                self.read_all_at = time.monotonic()
                break
            ident, body = sockets.recv_frames(self.sock, routed=True)
            ident = ident or b""
            try:
                if self.ring is not None:  # the sender is the key's owner, checked on receive
                    _, msg = curve.authenticate(ident, body, max_bytes=self.max_bytes)
                else:
                    msg = sockets.recv_body(ident, body, max_bytes=self.max_bytes)
            except sockets.Rejected as exc:
                self.drops.drop(ident, Reason.malformed, exc)
                continue
            why = self._forged(ident, body[0], msg)
            if why:
                self.drops.drop(ident, Reason.unauthenticated, f"{msg.kind} for node {msg.sender}: {why}")
                continue
            self._handle(ident, msg)
        self.drops.flush()

    def _forged(self, ident: bytes, first: Any, msg: Message) -> str:
        """Why a message cannot be node `msg.sender`'s own ("" if it can): under CURVE the
        key said who sent it; otherwise the routing id must be the node's, and on ipc://
        the sending process must be the one the launcher started for that node."""
        if self.ring is not None:
            return ""
        own = {"config": config_identity, "heartbeats": host_identity}.get(msg.kind, identity)(msg.sender)
        if ident != own:
            return f"routing id {ident!r} is not {own!r}"
        peer = sockets.peer_process(first)
        if peer is None:
            return ""  # tcp: the routing id is all there is (README, threat model)
        uid, pid = peer
        if uid != os.getuid():
            return f"sent by user {uid}"
        expected = self.pids.get(msg.sender)
        if expected is not None and pid != expected:
            return f"sent by process {pid}, not the node's process {expected}"
        return ""

    def drain(self, quiet_ms: int = 200) -> None:
        """Read what nodes sent before exiting, until the socket stays quiet."""
        while self.sock.poll(quiet_ms):
            self.poll(0)

    def _send(self, node_id: int, kind: str, meta: dict[str, Any], tensors: list[Any] | None = None, *, to: bytes | None = None) -> None:
        """To node `node_id` on its accepted connection, or to the connection `to` (the
        answer to a request, which must not take over the node's route)."""
        msg = Message(kind=kind, run=self.run_id, sender=-1, meta=meta, tensors=list(tensors or []))
        sockets.send(self.sock, msg, to=to or self.routes.get(node_id, identity(node_id)), block=False)

    def _handle(self, ident: bytes, msg: Message) -> None:
        """One message `poll` has found to be node `msg.sender`'s own (`_forged`)."""
        st = self.nodes.get(msg.sender)
        if st is None:
            self.drops.drop(ident, Reason.unknown_sender, f"{msg.kind} from node {msg.sender}")
            return
        if msg.kind == "hello":  # a remote node does not know the run id yet
            self._hello(st, ident, msg)
            return
        if msg.kind == "shard":  # asked before hello, with dataset.ship
            self.routes[msg.sender] = ident
            self._ship(st, msg)
            return
        if msg.kind == "config":  # a `byzctl node` asks for the run's config before it builds anything
            self._config(st, ident, msg)
            return
        if msg.kind == "done" and not st.joined and msg.meta.get("state") == "failed":
            # failed while setting up, before its hello: keep the real cause for the run's reason
            st.final, st.state = {"state": "failed", "error": str(msg.meta.get("error", ""))[:2000]}, "failed"
            return
        if msg.kind == "heartbeats":
            self._host_beats(ident, msg)
            return
        if self.routes.get(msg.sender) != ident:
            return  # an older connection of a node that has since said hello again
        if not st.joined or msg.run != self.run_id:
            return
        st.last_seen = time.monotonic()
        st.round = max(st.round, msg.round)
        if msg.kind == "heartbeat":
            st.state = str(msg.meta.get("state", st.state))[:32]
            st.train_loss = float(msg.meta.get("loss", st.train_loss))
        elif msg.kind == "metric":
            if len(msg.tensors) > 1:
                self.drops.drop(ident, Reason.unexpected, f"metric with {len(msg.tensors)} tensors")
                return
            row = {**msg.meta, "node": msg.sender, "role": st.spec.role.value}
            acc, loss = row.get("test_accuracy"), row.get("test_loss")
            if acc is not None:
                st.last_eval = {"round": row.get("round"), "test_accuracy": acc, "test_loss": loss}
            st.accuracy = float(acc) if acc is not None else st.accuracy
            st.test_loss = float(loss) if loss is not None else st.test_loss
            self.rundir.metric(row)
            if st.spec.role is Role.server and acc is not None:
                self.lines.append(f"[round {int(row['round']):04d}] test loss={st.test_loss:.4f} acc={float(acc):.4f}")
            if st.spec.role is Role.peer and not st.spec.byzantine:
                self._honest_round(msg, row)
        elif msg.kind == "state":
            self._state(msg)
        elif msg.kind == "done":
            st.final = dict(msg.meta)
            st.state = str(msg.meta.get("state", "done"))
            if "test_accuracy" in msg.meta and msg.meta["test_accuracy"] is not None:
                st.accuracy = msg.meta["test_accuracy"]

    def _host_beats(self, ident: bytes, msg: Message) -> None:
        """A host process's beats for its joined nodes (`_forged` checked it speaks for its leader)."""
        members = self.hosts.get(msg.sender)
        if members is None or msg.run != self.run_id:
            self.drops.drop(ident, Reason.unexpected, f"heartbeats from node {msg.sender}, which leads no host process of this run")
            return
        self.host_routes[msg.sender] = ident
        now = time.monotonic()
        for node, rnd, state, loss in msg.meta["nodes"]:  # types checked by decode
            st = self.nodes.get(node)
            if st is None or node not in members:
                self.drops.drop(ident, Reason.unauthenticated, f"host of node {msg.sender} beats for node {node}, not one of its nodes")
                continue
            if st.joined:
                st.last_seen = now
                st.round = max(st.round, rnd)
                st.state = state[:32]
                st.train_loss = float(loss)

    def _honest_round(self, msg: Message, row: dict[str, Any]) -> None:
        """Decentralized runs: once every live honest peer evaluated round r, record
        their mean and worst figures and the consensus distance (spread of honest models)."""
        r = int(row["round"])
        box = self.pending.setdefault(r, {})
        box[msg.sender] = (row, msg.tensors[0].clone() if msg.tensors else None)
        self._honest_complete(r)

    def _honest_complete(self, r: int) -> None:
        """Record round r's honest figures if every honest peer still alive reported it."""
        box = self.pending[r]
        alive = [i for i, s in self.nodes.items()
                 if s.spec.role is Role.peer and not s.spec.byzantine and s.state != "failed" and not s.lost]
        if not box or not set(alive) <= set(box):
            return
        del self.pending[r]
        rows = [box[i][0] for i in sorted(box)]
        agg: dict[str, Any] = {"round": r, "kind": "honest", "nodes": len(rows)}
        for key, name in (("test_accuracy", "accuracy"), ("test_loss", "loss")):
            vals = [float(x[key]) for x in rows]
            agg[f"mean_{name}"] = sum(vals) / len(vals)
            agg[f"worst_{name}"] = min(vals) if name == "accuracy" else max(vals)
        models = [v for _, v in box.values() if v is not None]
        if models:
            import torch

            x = torch.stack(models).double()  # (h, d)
            agg["consensus_distance"] = float(((x - x.mean(0)) ** 2).sum(1).mean())
        self.honest_rows.append(agg)
        self.rundir.metric(agg)
        self.lines.append(f"[round {r:04d}] honest nodes: test loss={agg['mean_loss']:.4f} acc={agg['mean_accuracy']:.4f} "
                          f"(worst acc={agg['worst_accuracy']:.4f}, {len(rows)} nodes)")

    def _ship(self, st: NodeStatus, msg: Message) -> None:
        """dataset.ship: send a node its shard (the data lives only here)."""
        if msg.meta.get("hash") != self.exp.hash or not self.exp.dataset.ship:
            self._send(msg.sender, "refuse", {"reason": f"no shard for node {msg.sender}: config hash {msg.meta.get('hash')} vs {self.exp.hash}, or dataset.ship is off"})
            return
        from byzctl.node.shards import load_shard

        sh = load_shard(self.exp, st.spec, splits=self._splits())
        meta = {"num_classes": sh.num_classes, "input_shape": list(sh.input_shape)}
        self._send(msg.sender, "shard", meta, [sh.x_train, sh.y_train, sh.x_test, sh.y_test])

    def _splits(self) -> Any:
        if self.splits is None:
            self.splits = self.exp.dataset.load(int(self.exp.cfg.seed))
        return self.splits

    def _config(self, st: NodeStatus, ident: bytes, msg: Message) -> None:
        """Send a node the run's resolved config, unless the overrides it was started with
        (`meta.overrides`: {dotted key: value}) disagree with the run's: then it alone is
        refused, naming the keys, and the run waits on for a correct one."""
        given = msg.meta.get("overrides", {})  # a map: checked by decode
        differ = []
        for key, value in sorted(given.items()):
            ours = OmegaConf.select(self.exp.cfg, str(key), default=_ABSENT)
            if isinstance(ours, (DictConfig, ListConfig)):
                ours = OmegaConf.to_container(ours, resolve=True)
            if ours != value:
                differ.append(f"{key}={value!r} (the run has {'nothing' if ours is _ABSENT else repr(ours)})")
        if differ:
            self._refuse(st, ident, f"node {msg.sender} was started with overrides that differ from the run's: {', '.join(differ)}; "
                             "start it with only host settings (cluster=, security.keys=) and it takes the run's config")
            return
        text = OmegaConf.to_yaml(self.exp.cfg, resolve=True, sort_keys=True).encode()
        blob = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        self._send(msg.sender, "config", {"run": self.run_id, "hash": self.exp.hash}, [blob], to=ident)

    def _refuse(self, st: NodeStatus, ident: bytes, reason: str) -> None:
        """Refuse one connection's request (logged and recorded); the run goes on, and
        the node's accepted connection, if any, keeps its route."""
        self.refused.append(reason)
        log.error("refused %s", reason)
        self.event("node_refused", st.spec.id, reason)
        self._send(st.spec.id, "refuse", {"reason": reason}, to=ident)

    def _hello(self, st: NodeStatus, ident: bytes, msg: Message) -> None:
        theirs = msg.meta.get("hash")
        if theirs != self.exp.hash:
            self._refuse(st, ident, f"node {msg.sender} has config hash {theirs}, the run has {self.exp.hash}: "
                             "start it with the same config and overrides (or with none, to take the run's)")
            return
        endpoints = msg.meta.get("endpoints", {})
        if not isinstance(endpoints, dict) or not all(isinstance(v, str) for v in endpoints.values()):
            self.drops.drop(ident, Reason.unexpected, f"hello from node {msg.sender} with endpoints {endpoints!r}")
            return
        back = st.lost or (st.joined and self.welcomed)
        self.routes[msg.sender] = ident
        st.joined, st.lost, st.final = True, False, {}
        st.state = "rejoined" if back else "joined"
        st.last_seen = time.monotonic()
        st.endpoints = dict(endpoints)
        if self.welcomed:  # a restarted node rejoins and catches up from the current round
            now_round = max((s.round for s in self.nodes.values() if not s.lost), default=0)
            self._send(msg.sender, "welcome", {"peers": self.peer_table(msg.sender), "run": self.run_id, "round": now_round})
            self.event("node_rejoined", msg.sender, "said hello again")
            self._notify(msg.sender, {"node": msg.sender, "back": True, "endpoints": st.endpoints})
        elif all(s.joined for s in self.nodes.values()):
            now = time.monotonic()
            for s in self.nodes.values():  # liveness counts from the start of the run, not from each hello
                s.last_seen = now
            for node_id in self.nodes:
                meta: dict[str, Any] = {"peers": self.peer_table(node_id), "run": self.run_id}
                tensors = []
                if node_id in self.resume:
                    r, state = self.resume[node_id]
                    meta["resume"] = {"round": r, "names": list(state)}
                    tensors = list(state.values())
                self._send(node_id, "welcome", meta, tensors)
            self.welcomed = True

    # -- checkpoints -------------------------------------------------------------------
    def _state(self, msg: Message) -> None:
        names = msg.meta.get("names", [])
        if not isinstance(names, list) or len(names) != len(msg.tensors):
            log.warning("monitor dropped a malformed state from node %s", msg.sender)
            return
        r = int(msg.meta.get("round", 0))
        self.states.setdefault(r, {})[msg.sender] = (r, {n: t.clone() for n, t in zip(names, msg.tensors)})
        needed = {i for i, s in self.nodes.items() if s.spec.role is not Role.relay and s.joined and not s.lost}
        if needed <= set(self.states[r]):
            self.checkpoint(r, self.states[r])
            for old in [k for k in self.states if k <= r]:
                del self.states[old]

    def checkpoint(self, r: int, states: NodeStates) -> None:
        from byzctl.launch.checkpoints import write_checkpoint

        path = write_checkpoint(self.rundir.path / "checkpoints", r, states, int(self.exp.cfg.keep_checkpoints))
        self.last_checkpoint = str(path)
        log.info("checkpoint %s", path.name)

    def flush_checkpoint(self) -> None:
        """After an interrupt: save the newest consistent state the nodes sent.

        ps needs every worker's state at the server's round; decentralized peers each
        keep their own latest round."""
        if not self.states:
            return
        server = next((i for i, s in self.nodes.items() if s.spec.role is Role.server), None)
        if server is not None:
            rounds = sorted((r for r, box in self.states.items() if server in box), reverse=True)
            if not rounds:
                return
            r = rounds[0]
            self.checkpoint(r, self.states[r])
        else:
            latest: NodeStates = {}
            for r in sorted(self.states):
                latest.update(self.states[r])
            self.checkpoint(min(rr for rr, _ in latest.values()), latest)
        self.states.clear()

    # -- faults ---------------------------------------------------------------------
    def event(self, kind: str, node_id: int, reason: str) -> None:
        st = self.nodes[node_id]
        self.rundir.metric({"event": kind, "node": node_id, "round": st.round, "reason": reason, "time": time.time()})

    def _notify(self, about: int, meta: dict[str, Any]) -> None:
        for node_id, st in self.nodes.items():
            if st.joined and not st.lost and node_id != about:
                self._send(node_id, "lost", meta)

    def lose(self, node_id: int, reason: str) -> None:
        """Record a node as lost and tell the others to stop waiting for it."""
        st = self.nodes[node_id]
        if st.lost:
            return
        st.lost, st.state = True, "lost"
        log.warning("node %d lost: %s", node_id, reason)
        for r in sorted(self.pending):  # rounds that waited only for this node's evaluation
            self._honest_complete(r)
        self.event("node_lost", node_id, reason)
        self._notify(node_id, {"node": node_id, "back": False, "reason": reason})

    def silent(self, now: float) -> list[int]:
        """Joined nodes that still run but sent nothing for peer_timeout (dead or hung), up to
        the last time the monitor had read all that arrived (`read_all_at`)."""
        limit = self.exp.topology.peer_timeout
        return [i for i, s in self.nodes.items()
                if self.welcomed and s.joined and not s.lost and not s.final and self.read_all_at - s.last_seen > limit]

    def peer_table(self, node_id: int) -> dict[str, Any]:
        """The part of the peer table node `node_id` dials: itself, the central nodes (the
        ps server, the hub relay) and its graph neighbours both ways; a central node gets
        all of it. A whole table for every node was O(n^2): at 1,101 nodes, 121 MB of
        welcomes whose decoding kept the hosts busy past peer_timeout."""
        if self.nodes[node_id].spec.role.central:
            wanted: set[int] = set(self.nodes)
        else:
            wanted = {node_id, *self._central, *self._graph.get(node_id, ()), *self._outs.get(node_id, ())}
        return {str(i): {"role": s.spec.role.value, "byzantine": s.spec.byzantine, "endpoints": s.endpoints}
                for i, s in ((i, self.nodes[i]) for i in sorted(wanted))}

    def missing(self) -> list[int]:
        return [i for i, s in self.nodes.items() if not s.joined]

    def stop_all(self, reason: str, state: str, checkpoint: bool = False) -> None:
        """Stop every node that joined; `state` (the run's) decides their exit codes."""
        for node_id, st in self.nodes.items():
            if st.joined:
                self._send(node_id, "stop", {"reason": reason, "state": state, "checkpoint": checkpoint})

    def beat(self, now: float) -> None:
        """The coordinator's heartbeat to every joined node (they stop when it goes silent)."""
        if now < self._next_beat:
            return
        self._next_beat = now + self.exp.topology.heartbeat_interval
        beaten: set[int] = set()
        for leader, route in self.host_routes.items():  # one beat tells every node of that host
            self._send(leader, "heartbeat", {}, to=route)
            beaten |= self.hosts[leader]
        for node_id, st in self.nodes.items():
            if st.joined and not st.lost and not st.final and node_id not in beaten:
                self._send(node_id, "heartbeat", {})

    # -- view -------------------------------------------------------------------------
    def table(self, title: str) -> Table:
        """One row per node; past TABLE_ROWS nodes a compact view: one summary row per role
        and kind, then the worst WORST_ROWS nodes (failed or lost first, then the furthest
        behind, then the least accurate)."""
        t = Table(title=title, title_justify="left")
        for col in ("node", "role", "round", "train loss", "test loss", "accuracy", "state"):
            t.add_column(col, justify="left" if col in ("role", "state") else "right")
        if len(self.nodes) <= TABLE_ROWS:
            for i, s in self.nodes.items():
                self._row(t, str(i), s)
            return t
        groups: dict[str, list[NodeStatus]] = {}
        for s in self.nodes.values():
            groups.setdefault(s.spec.label, []).append(s)
        for label, members in groups.items():
            rounds = [s.round for s in members]
            states = collections.Counter(s.state for s in members)
            accs = [s.accuracy for s in members if s.accuracy is not None]
            t.add_row(f"{len(members)} nodes", label, f"{min(rounds)}-{max(rounds)}" if min(rounds) != max(rounds) else str(rounds[0]),
                      _fmt(_mean([s.train_loss for s in members])), _fmt(_mean([s.test_loss for s in members])),
                      _fmt(_mean(accs)) if accs else "", ", ".join(f"{n} {k}" for k, n in states.most_common()), style="bold")
        def badness(s: NodeStatus) -> tuple[bool, int, float]:
            return (not (s.lost or s.state == "failed"), s.round, s.accuracy if s.accuracy is not None else math.inf)
        t.add_section()
        for s in sorted(self.nodes.values(), key=badness)[:WORST_ROWS]:
            self._row(t, str(s.spec.id), s)
        return t

    @staticmethod
    def _row(t: Table, name: str, s: NodeStatus) -> None:
        acc = "" if s.accuracy is None else f"{s.accuracy:.4f}"
        style = "red" if s.state == "failed" or s.lost else ("magenta" if s.spec.byzantine else None)
        t.add_row(name, s.spec.label, str(s.round), _fmt(s.train_loss), _fmt(s.test_loss), acc, s.state, style=style)

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=0)
