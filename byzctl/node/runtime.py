"""What every node process shares: control channel, event loop, heartbeats, logging.

A node connects one DEALER to the monitor (the launcher, or `byzctl run
launcher=remote` on another host), says hello with its id, role, config hash and
the endpoints it bound, and waits for the peer table. Its role then drives rounds
as DAGs; the loop here polls sockets, a wake-up pipe for finished heavy ops, and
deadlines, and sends an application heartbeat every `heartbeat_interval`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import zmq
from torch import Tensor

from byzctl.config.experiment import Experiment
from byzctl.errors import HandshakeError, PeerError, WireError
from byzctl.learning.batched import batchable
from byzctl.learning.seeds import generator
from byzctl.learning.trainer import HonestLearner
from byzctl.node.cohost import Cohost
from byzctl.topology.base import NodeSpec
from byzctl.transport import curve, sockets
from byzctl.transport.drops import DropLog, Reason
from byzctl.transport.wire import Message

log = logging.getLogger("byzctl.node")

DRAIN_BUDGET_S = 0.05
"""Longest one socket is read in a row: a flood must not keep the loop from its
deadlines, the monitor's messages and its own heartbeats (the poller comes back at once)."""


def by_id(vectors: dict[Any, Tensor]) -> list[Tensor]:
    """A gather's vectors in node-id order, not arrival order: float sums depend on the
    order, and a run (or a resumed one) must not depend on which message came first."""
    return [vectors[k] for k in sorted(vectors)]


class NodeRuntime:
    """Base of every role. Subclasses implement `start()`, `on_message()` and `on_tick()`;
    the roles that own rounds get them from `node/rounds.py` RoundLoop."""

    def __init__(self, exp: Experiment, spec: NodeSpec, control: str, run_id: str, host: Cohost | None = None):
        """`host`: what the host process shares among its nodes (nodes packed in one
        process, node/cohost.py: its context, whose owner runs the one CURVE authenticator,
        batched gradients, the Byzantine workers' adversary); None: this node has its own."""
        self.host = host
        self.batcher = host.batcher if host is not None else None
        self.beats = host.beats if host is not None else None
        """The host's one heartbeat (node/cohost.py HostBeats), or None: this node sends its own."""
        self.exp, self.spec, self.run_id = exp, spec, run_id
        self.started_at = time.monotonic()  # reset by start(): training time is counted from there
        self.topo = exp.topology
        self.max_bytes = int(self.topo.max_message_mb * 2**20)
        self.own_ctx = host is None
        self.ctx = zmq.Context() if host is None else host.ctx
        self.sockets: list[zmq.Socket] = []
        """Every socket this node opened (closed by `close`, the context may outlive it)."""
        self.ring = exp.keyring
        self.auth = curve.start_authenticator(self.ctx, self.ring) if self.ring is not None and self.own_ctx else None
        self.control = self.dealer_to("monitor", sndhwm=64)
        self.control.connect(control)
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.poller.register(self.wake_r, zmq.POLLIN)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"node{spec.id}")
        self.data: dict[zmq.Socket, bool] = {}  # data socket -> is it a ROUTER
        self.round = 0
        self.loss = float("nan")
        self.state = "starting"
        self.finished = False
        self.dropped = 0
        self.drops = DropLog(log, f"node {spec.id}")
        self.lost: set[int] = set()
        self.rejoin_round = 0
        self.reported_done = False
        self._next_heartbeat = 0.0
        self.welcomed = False
        self.monitor_seen = time.monotonic()
        """When the monitor last sent anything (its heartbeats): after peer_timeout of
        silence the coordinator is gone and this node stops."""
        self.stop_state = ""
        self.round_state: dict[str, Any] | None = None
        """The run's state when the monitor stopped this node (COMPLETED, FAILED, ...)."""
        self.stop_reason = ""

    # -- sockets -------------------------------------------------------------------
    def drop(self, sender: object, reason: Reason, detail: object = "") -> None:
        """Count a message this node will not use; logged in bounded, rate-limited lines."""
        self.dropped += 1
        self.drops.drop(sender, reason, detail)

    def add_socket(self, sock: zmq.Socket, *, routed: bool) -> None:
        self.data[sock] = routed
        self.poller.register(sock, zmq.POLLIN)

    # -- identities -----------------------------------------------------------------
    def dealer_to(self, server: int | str, *, sndhwm: int | None = None) -> zmq.Socket:
        """A DEALER that will connect to `server` (a node id or "monitor"): a CURVE client
        pinned to its key when security=curve, else carrying this node's routing id."""
        sock = self.opened(sockets.dealer(self.ctx, None if self.ring else identity(self.spec.id),
                                          sndhwm=sndhwm or self.topo.sndhwm, max_bytes=self.max_bytes))
        if self.ring is not None:
            curve.secure_client(sock, self.ring, self.spec.id, server)
        return sock

    def learn_with_host(self, learner: HonestLearner) -> HonestLearner:
        """Compute `learner`'s gradients in the host's batched calls, if this node is
        packed with others and its model allows it."""
        if self.batcher is not None and batchable(learner.model):
            self.batcher.join(self.spec.id)
            learner.batcher = (self.batcher, self.spec.id)
        return learner

    def router(self, *, sndhwm: int) -> zmq.Socket:
        """A ROUTER of this node (its inbox)."""
        return self.opened(sockets.router(self.ctx, sndhwm=sndhwm, max_bytes=self.max_bytes))

    def opened(self, sock: zmq.Socket) -> zmq.Socket:
        self.sockets.append(sock)
        return sock

    def is_from(self, ident: bytes | None, msg: Message) -> bool:
        """Whether a ROUTER message really comes from `msg.sender`: under CURVE the
        receive already checked the key's owner; otherwise the routing id must match."""
        return self.ring is not None or ident == identity(msg.sender)

    def limit_messages(self, d: int, vectors: int) -> None:
        """Accept data messages of at most `vectors` parameter vectors (d values, up to 8
        bytes each) plus slack: a peer cannot make this node allocate more than that."""
        self.max_bytes = min(self.max_bytes, vectors * d * 8 + (1 << 20))

    def bind_here(self, sock: zmq.Socket) -> str:
        """Bind where this node lives and return the endpoint others dial: the cluster
        file's place, else (a SLURM task, a Ray actor) tcp on its machine's address, else tcp
        on the topology's host (any free port) or a private ipc path."""
        if self.ring is not None:
            curve.secure_server(sock, self.ring, self.spec.id)
        place = self.exp.place(self.spec.id)
        if place is not None:
            sockets.bind(sock, place.bind)
            return place.advertised
        if self.exp.bind_host:  # started by SLURM or Ray: this machine's address, any free port
            return sockets.bind(sock, f"tcp://{self.exp.bind_host}:*")
        if self.topo.transport.value == "ipc":
            return sockets.bind(sock, f"ipc://{sockets.private_ipc_dir()}/n{self.spec.id}")
        return sockets.bind(sock, f"tcp://{self.topo.host}:*")

    def msg(self, kind: str, **kw: Any) -> Message:
        return Message(kind=kind, run=self.run_id, round=kw.pop("round", self.round), sender=self.spec.id, **kw)

    # -- control plane -------------------------------------------------------------------
    def join(self, endpoints: dict[str, str]) -> dict[int, dict[str, Any]]:
        """Hello to the monitor; returns the peer table {id: {role, endpoints}}.

        Waits up to join_timeout for the others to join, heartbeating all the while: a
        node that is alive and waiting is never declared lost, however late the rest."""
        meta = {"role": self.spec.role.value, "hash": self.exp.hash, "endpoints": endpoints, "pid": os.getpid()}
        sockets.send(self.control, self.msg("hello", meta=meta))
        reply = self.await_control("welcome", "the peer table (the other nodes did not all join)")
        self.welcomed = True
        self.run_id = str(reply.meta.get("run", self.run_id))  # a remote node learns it here
        resume = reply.meta.get("resume")
        if resume is not None:
            self.restore(dict(zip(resume["names"], reply.tensors)), int(resume["round"]))
            log.info("resumed after round %d", self.round)
        elif int(reply.meta.get("round", 0)) > 0:
            self.rejoin_round = int(reply.meta["round"])
        return {int(k): v for k, v in reply.meta["peers"].items()}

    def fetch_shard(self) -> Any:
        """dataset.ship: ask the monitor for this node's data instead of loading it here."""
        from byzctl.node.shards import Shard

        sockets.send(self.control, self.msg("shard", meta={"hash": self.exp.hash}))
        reply = self.await_control("shard", "its data shard")
        if len(reply.tensors) != 4:
            raise PeerError(f"node {self.spec.id}: the monitor sent a shard of {len(reply.tensors)} tensors, not 4")
        x, y, xt, yt = (t.clone() for t in reply.tensors)
        log.info("shard received over the wire: %d training samples", len(y))
        return Shard(x, y, xt, yt, int(reply.meta["num_classes"]), tuple(reply.meta["input_shape"]))

    def await_control(self, kind: str, what: str) -> Message:
        """The monitor's next `kind` reply, waiting up to join_timeout and heartbeating
        meanwhile. A refusal raises HandshakeError, a stop PeerError, both with the reason."""
        deadline = time.monotonic() + self.topo.join_timeout
        while (now := time.monotonic()) < deadline:
            self.heartbeat(now)
            if not self.control.poll(max(1, int(1000 * (min(self._next_heartbeat, deadline) - now)))):
                continue
            try:
                _, reply = sockets.recv(self.control, routed=False, max_bytes=self.max_bytes)
            except WireError as exc:
                log.warning("dropped malformed control message: %s", exc)
                continue
            self.monitor_seen = time.monotonic()
            if reply.kind == "refuse":
                raise HandshakeError(str(reply.meta.get("reason")))
            if reply.kind == "stop":
                self.stop_state = str(reply.meta.get("state") or "FAILED")
                raise PeerError(f"the monitor stopped the run before it began: {reply.meta.get('reason', '')}")
            if reply.kind == kind:
                return reply
        raise PeerError(f"node {self.spec.id}: no {what} from the monitor within join_timeout={self.topo.join_timeout}s")

    def wait_for(self, sock: zmq.Socket, done: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
        """Serve `sock` until `done()` holds, heartbeating meanwhile; PeerError naming
        `what()` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if now > deadline:
                raise PeerError(what())
            self.heartbeat(now)
            if self.control.poll(0):
                self._drain_control()
            if sock.poll(100):
                self._drain(sock, True)

    def heartbeat(self, now: float, *, force: bool = False) -> None:
        """Say this node is alive, every heartbeat_interval: through its host's one beat when
        it has one (`force` sends its own)."""
        if force or now >= self._next_heartbeat:
            self._next_heartbeat = now + self.topo.heartbeat_interval
            if self.beats is not None and not force:
                self.beats.record(self.spec.id, self.round, self.state, self.loss)
                return
            meta = {"loss": self.loss, "state": self.state, "dropped": self.dropped}
            sockets.send(self.control, self.msg("heartbeat", meta=meta), block=False)

    def report(self, kind: str, meta: dict[str, Any], tensors: list[Any] | None = None) -> None:
        """Send a metric row or the final figures to the monitor (reliably): while the
        queue to the monitor is full, wait, reading its control messages, and give up
        with CoordinatorLost once it has been silent for peer_timeout."""
        self.reported_done = self.reported_done or kind == "done"
        msg = self.msg(kind, meta=meta, tensors=list(tensors or []))
        while not sockets.send(self.control, msg, block=False):
            if self.control.poll(50, zmq.POLLIN | zmq.POLLOUT) & zmq.POLLIN:
                self._drain_control()
            self.check_coordinator(time.monotonic())

    def check_coordinator(self, now: float) -> None:
        """CoordinatorLost once the monitor (which heartbeats every joined node) has sent
        nothing for peer_timeout."""
        seen = max(self.monitor_seen, self.beats.monitor_seen) if self.beats is not None else self.monitor_seen
        if now - seen > self.topo.peer_timeout:
            raise CoordinatorLost(f"node {self.spec.id}: the monitor sent nothing for {now - seen:.0f}s "
                                  f"(topology.peer_timeout={self.topo.peer_timeout}): the coordinator is gone")

    # -- lifecycle ---------------------------------------------------------------------
    def setup(self, shard: Any) -> None:
        """Build models, sockets and state before joining."""

    def endpoints(self) -> dict[str, str]:
        """What this node bound, announced to the others in its hello."""
        return {}

    def connect(self, peers: dict[int, dict[str, Any]]) -> None:
        """Dial the peers once the monitor sent the table."""

    def rng(self, purpose: str, round: int) -> Any:
        """This node's generator for one purpose in one round (see learning/seeds.py)."""
        return generator(int(self.exp.cfg.seed), self.spec.id, round, purpose)

    def attack_context(self, n: int, round: int, who: int | str | None = None) -> Any:
        """What an attack may use in a round: seeded randomness and this run's rule.
        `who` draws the randomness: this node (None), or a ps run's one adversary.

        The rule gets a fresh generator seeded by the round for every call, so a
        line search over a randomised pre-aggregator compares like with like."""
        from byzctl.attacks.base import AttackContext

        exp, seed, who = self.exp, int(self.exp.cfg.seed), self.spec.id if who is None else who

        def aggregate(x: Any) -> Any:
            return exp.aggregate(x, generator=generator(seed, who, round, "attack-rule"))

        return AttackContext(n=n, generator=generator(seed, who, round, "attack"), aggregate=aggregate)

    def on_peer_event(self, node: int, back: bool, endpoints: dict[str, str]) -> None:
        """The monitor says `node` was lost (stop waiting for it) or is back."""
        if back:
            self.lost.discard(node)
        else:
            self.lost.add(node)

    # -- checkpoints ---------------------------------------------------------------------
    def resumable(self) -> dict[str, Any]:
        """This role's resumable state now (tensors by name)."""
        return {}

    def snapshot(self) -> None:
        """Keep the state at the start of a round: an interrupt that lands mid-round (the
        parameters stepped, the evaluation still running, the round not yet counted) must
        save the state of the round it names, not half of the next one."""
        self.round_state = self.resumable()

    def interrupt_states(self) -> list[tuple[int, dict[str, Any]]]:
        """(completed rounds, state) pairs to save when the run is interrupted."""
        return [(self.round, self.round_state if self.round_state is not None else self.resumable())]

    def restore(self, state: dict[str, Any], round: int) -> None:
        """Continue from a checkpoint: `round` rounds were completed."""
        self.round = round

    def checkpoint_due(self, completed: int) -> bool:
        k = int(self.exp.cfg.checkpoint_every)
        return completed == int(self.exp.cfg.rounds) or (k > 0 and completed % k == 0)

    def send_state(self, completed: int, state: dict[str, Any]) -> None:
        names = [k for k, v in state.items() if v is not None]
        self.report("state", {"round": completed, "names": names}, tensors=[state[k] for k in names])

    def poison_labels(self, y: Any, num_classes: int) -> Any:
        """Labels a Byzantine data-poisoning node trains on (label_flip)."""
        if self.spec.byzantine and self.exp.attack.poisons_data:
            return self.exp.attack.poison(y, num_classes=num_classes)
        return y

    # -- loop ------------------------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def on_message(self, ident: bytes | None, msg: Message, sock: zmq.Socket) -> None:
        raise NotImplementedError

    def on_tick(self, now: float) -> None:
        raise NotImplementedError

    def next_deadline(self) -> float | None:
        """Monotonic time at which on_tick must run even without messages."""
        return None

    def serve(self) -> None:
        """This node's own event loop, until it finishes (a node of a host process of many
        is served by the host's one loop instead: node/hostloop.py)."""
        self.begin()
        while not self.finished:
            wait = self.due() - time.monotonic()
            self.turn(dict(self.poller.poll(max(0, int(wait * 1000)) + 1)))

    def begin(self) -> None:
        """Enter the serving state, before the loop's first turn."""
        self.state = "running"
        self.start()

    def due(self) -> float:
        """When this node needs a turn even if nothing arrives: its heartbeat or its deadline."""
        deadline = self.next_deadline()
        return self._next_heartbeat if deadline is None else min(self._next_heartbeat, deadline)

    def turn(self, events: Mapping[Any, int]) -> None:
        """One pass of the loop: handle what the poll found ready among this node's sockets
        and wake-up pipe (`events`, maybe none when the turn is due), then its deadlines,
        its heartbeat and the coordinator's."""
        if self.wake_r in events:
            try:
                os.read(self.wake_r, 4096)
            except BlockingIOError:
                pass
        if self.control in events:
            self._drain_control()
        for sock, routed in self.data.items():
            if sock in events:
                self._drain(sock, routed)
        now = time.monotonic()
        if not self.finished:
            self.on_tick(now)
        self.heartbeat(now)
        if not self.finished:
            self.check_coordinator(now)

    def _drain(self, sock: zmq.Socket, routed: bool) -> None:
        """Handle what `sock` holds now, for at most DRAIN_BUDGET_S. `decode` has checked
        each message's header and the meta fields its kind's handler reads; what fails
        is dropped here, never handed on."""
        authenticate = self.ring is not None and sock.type == zmq.ROUTER
        until = time.monotonic() + DRAIN_BUDGET_S
        while sockets.readable(sock):
            ident: bytes | None
            try:
                if authenticate:
                    ident, _, msg = curve.recv_authenticated(sock, max_bytes=self.max_bytes)
                else:
                    ident, msg = sockets.recv(sock, routed=routed, max_bytes=self.max_bytes)
            except sockets.Rejected as exc:
                self.drop(exc.ident, Reason.malformed, exc)
                continue
            if msg.run != self.run_id:
                self.drop(ident if routed else msg.sender, Reason.other_run, f"run {msg.run!r}, kind {msg.kind}")
                continue
            self.on_message(ident, msg, sock)
            now = time.monotonic()
            if now > until or self.finished:
                break
        now = time.monotonic()
        self.heartbeat(now)  # a node busy reading still says it is alive
        self.drops.flush(now)

    def _drain_control(self) -> None:
        while sockets.readable(self.control):
            try:
                _, msg = sockets.recv(self.control, routed=False, max_bytes=self.max_bytes)
            except WireError as exc:
                self.drop("monitor", Reason.malformed, exc)
                continue
            self.monitor_seen = time.monotonic()
            if msg.kind == "stop":
                self.stop_state = str(msg.meta.get("state") or "")
                self.stop_reason = str(msg.meta.get("reason", ""))
                log.info("stopped by the monitor: %s", self.stop_reason)
                if msg.meta.get("checkpoint"):
                    for completed, state in self.interrupt_states():
                        self.send_state(completed, state)
                self.state = "stopped"
                self.finished = True
            elif msg.kind == "lost":
                node, back = msg.meta["node"], msg.meta.get("back", False)  # types checked by decode
                log.warning("node %d %s", node, "is back" if back else f"was lost: {msg.meta.get('reason', '')}")
                self.on_peer_event(node, back, dict(msg.meta.get("endpoints", {})))

    def close(self) -> None:
        # The final report must reach the monitor: give the control socket time to flush.
        self.control.close(linger=2000)
        for sock in self.sockets:
            if sock is not self.control:
                sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        if self.own_ctx:
            self.ctx.destroy(linger=0)


class CoordinatorLost(PeerError):
    """The monitor stopped answering: the node saves its state and exits non-zero."""


def identity(node_id: int) -> bytes:
    """The ZeroMQ routing id a node uses (authenticated by CURVE when enabled)."""
    return b"n%d" % node_id
