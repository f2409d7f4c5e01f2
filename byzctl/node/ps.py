"""Parameter-server roles: the server aggregates, workers answer with vectors.

Round r, as DAGs (the server's driven by node/rounds.py):
  server:  gather(vectors | honest -> oracle -> byzantine) -> stack -> aggregate -> step -> evaluate -> report
  honest:  model -> momentum gradient -> send
  byzantine: model | oracle view -> attack -> send
With `attack.knowledge=omniscient` the server, acting as the adversary's oracle in
simulation, first sends the round's honest vectors to the Byzantine workers.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

import torch
import zmq
from torch import Tensor

from byzctl.attacks.base import Knowledge
from byzctl.dag import Dag, DagRun, Gather, Op
from byzctl.errors import PeerError
from byzctl.learning import HonestLearner, apply_update, flat_params, make_model
from byzctl.node.cohost import ADVERSARY
from byzctl.node.rounds import RoundLoop
from byzctl.node.runtime import NodeRuntime, by_id, identity
from byzctl.node.shards import Shard
from byzctl.topology.base import Role
from byzctl.transport import sockets
from byzctl.transport.drops import Reason
from byzctl.transport.wire import Message

log = logging.getLogger("byzctl.node")

REFUSALS_PER_ID = 3
"""Refusals the server sends one routing id; later bad hellos on it are only counted
(a peer that floods hellos and never reads must cost the loop nothing)."""


class PsServer(RoundLoop):
    """Holds the model; aggregates the workers' vectors each round and steps."""

    def setup(self, shard: Shard) -> None:
        cfg = self.exp.cfg
        self.test_x, self.test_y = shard.x_test, shard.y_test
        self.model = make_model(self.exp.model, shard.input_shape, shard.num_classes, seed=cfg.seed, device=self.exp.device)
        self.params = flat_params(self.model)  # (d,)
        self.limit_messages(self.params.numel(), vectors=1)
        self.sock = self.router(sndhwm=self.topo.sndhwm)
        self.bound = self.bind_here(self.sock)
        log.info("data endpoint %s", self.bound)
        self.add_socket(self.sock, routed=True)
        self.workers: dict[int, bool] = {}  # id -> byzantine
        self.no_oracle: set[int] = set()
        """Byzantine workers whose host's leader receives the oracle view for them (node/cohost.py)."""
        self.idents: dict[bytes, int] = {}
        self.routes: dict[int, bytes] = {}
        self.refusals: dict[bytes, int] = {}  # routing id -> refusals sent to it
        self.prev_agg: Tensor | None = None
        self.rows: Tensor | None = None
        """The round's (n, d) matrix, written in place each round (`_stack`)."""

    def endpoints(self) -> dict[str, str]:
        return {"data": self.bound}

    def connect(self, peers: dict[int, dict[str, Any]]) -> None:
        """Wait until every planned worker said hello on the data socket."""
        for spec in self.exp.plan():
            if spec.role is Role.worker:
                self.workers[spec.id] = spec.byzantine
        self.wait_for_workers()

    # -- round graph -------------------------------------------------------------------
    def round_dag(self) -> Dag:
        f = self.exp.byzantine
        honest = frozenset(i for i, b in self.workers.items() if not b and i not in self.lost)
        byz = frozenset(i for i, b in self.workers.items() if b and i not in self.lost)
        quorum = max(1, len(self.workers) - f - len(self.lost))
        ops = [
            Op("aggregate", self._aggregate, ("stack",), heavy=True),
            Op("step", self._step, ("aggregate",)),
            *self.eval_ops("step", due=self.evaluation_due()),
        ]
        if self.exp.attack.knowledge == Knowledge.omniscient and byz:
            gathers = {"honest": Gather(honest, max(1, quorum - len(byz))), "byzantine": Gather(byz, 0)}
            ops += [Op("oracle", self._oracle, ("honest",)), Op("stack", self._stack2, ("oracle", "byzantine"))]
        else:
            gathers = {"vectors": Gather(honest | byz, quorum)}
            ops += [Op("stack", self._stack1, ("vectors",))]
        return Dag([], ops, gathers)

    def open_round(self, run: DagRun) -> None:
        msg = self.msg("model", tensors=[self.params])
        for wid in self.workers:
            if wid not in self.lost:
                self._send_to(wid, msg)

    def _send_to(self, wid: int, msg: Message) -> None:
        """Send without blocking: a worker with SNDHWM messages unread (hung, or a
        Byzantine one that floods and never reads) misses this one, as if it were slow,
        and cannot stall the server."""
        if not sockets.send(self.sock, msg, to=self.route(wid), block=False):
            self.drop(f"worker {wid}", Reason.queue_full, f"{msg.kind} of round {msg.round} not sent")

    def route(self, wid: int) -> bytes:
        """The routing id of worker `wid`, learned from its authenticated hello."""
        return self.routes.get(wid, identity(wid))

    def _oracle(self, honest: dict[int, Tensor]) -> Tensor:
        view = torch.stack(by_id(honest))  # (h, d)
        msg = self.msg("oracle", tensors=[view])
        for wid, byz in self.workers.items():
            if byz and wid not in self.lost and wid not in self.no_oracle:
                self._send_to(wid, msg)
        return view

    def _stack(self, rows: list[Tensor]) -> Tensor:
        """(n, d) from n rows, in the matrix kept from the last round: a new one each round
        is fresh pages for the kernel to fault in (40 MB at 125 workers of a 79,510-parameter
        MLP: 28 ms to stack, 5 ms in place)."""
        if self.rows is None or self.rows.shape[0] != len(rows) or self.rows.dtype != rows[0].dtype:
            self.rows = torch.empty((len(rows), *rows[0].shape), dtype=rows[0].dtype)
        return torch.stack(rows, out=self.rows)

    def _stack1(self, vectors: dict[int, Tensor]) -> Tensor:
        return self._stack(by_id(vectors))  # (n, d)

    def _stack2(self, honest: Tensor, byz: dict[int, Tensor]) -> Tensor:
        return self._stack([*honest, *by_id(byz)])  # (n, d): the oracle view is sent on, so copied, never reused

    def _aggregate(self, x: Tensor) -> Tensor:
        agg = self.exp.aggregate(x.to(self.exp.device), center=self.prev_agg, generator=self.rng("aggregate", self.round))  # (d,)
        if self.rows is not None and agg.untyped_storage().data_ptr() == self.rows.untyped_storage().data_ptr():
            agg = agg.clone()  # a row of the matrix (krum's pick): the next round overwrites it
        return agg

    def _step(self, agg: Tensor) -> Tensor:
        self.prev_agg = agg
        self.params = apply_update(self.params, agg, lr=self.exp.cfg.lr, weight_decay=self.exp.cfg.weight_decay)
        return self.params

    # -- messages and deadlines ---------------------------------------------------------
    def on_message(self, ident: bytes | None, msg: Message, sock: zmq.Socket) -> None:
        wid = self.idents.get(ident or b"")
        if msg.kind == "hello":
            self._hello(ident or b"", msg)
            return
        if wid is None or wid != msg.sender:
            self.drop(ident, Reason.unknown_sender, f"{msg.kind} claiming sender {msg.sender} (this routing id is {wid})")
            return
        if msg.kind != "vector" or len(msg.tensors) != 1 or msg.tensors[0].shape != self.params.shape:
            self.drop(ident, Reason.unexpected, f"{msg.kind} of round {msg.round} with shapes {[tuple(t.shape) for t in msg.tensors][:4]}")
            return
        if msg.round != self.round:  # a late vector, after its round closed: normal
            self.dropped += 1
            self.drops.count()
            return
        gather = "byzantine" if "byzantine" in self.run.dag.gathers and self.workers[wid] else (
            "honest" if "honest" in self.run.dag.gathers else "vectors")
        vec = msg.tensors[0]
        if vec.dtype != self.params.dtype:
            self.drop(ident, Reason.unexpected, f"vector of dtype {vec.dtype}")
            return
        self.run.feed(gather, wid, vec)

    def resumable(self) -> dict[str, Any]:
        return {"params": self.params, "prev_agg": self.prev_agg}

    def restore(self, state: dict[str, Any], round: int) -> None:
        super().restore(state, round)
        self.params = state["params"].to(self.params.device, self.params.dtype).clone()
        prev = state.get("prev_agg")
        self.prev_agg = None if prev is None else prev.to(self.exp.device).clone()

    def _hello(self, ident: bytes, msg: Message) -> None:
        """A worker's hello on the data socket. Replies never block: a peer that does not
        read them (a flood) gets a few refusals, then its hellos are only counted."""
        theirs = msg.meta["hash"]  # a str: checked by decode
        if msg.sender not in self.workers or not self.is_from(ident, msg) or theirs != self.exp.hash:
            why = (f"server expects config hash {self.exp.hash}, got {theirs[:64]}" if theirs != self.exp.hash
                   else f"node {msg.sender} is not a worker of this run on this connection")
            self.drop(ident, Reason.refused_hello, f"claiming worker {msg.sender}: {why}")
            sent = self.refusals.get(ident, 0)
            if sent < REFUSALS_PER_ID and len(self.refusals) < 4 * len(self.workers) + 64:
                self.refusals[ident] = sent + 1
                sockets.send(self.sock, self.msg("refuse", meta={"reason": why}), to=ident, block=False)
            return
        for old in [k for k, v in self.idents.items() if v == msg.sender]:
            del self.idents[old]  # a restarted worker's old connection
        self.idents[ident] = msg.sender
        self.routes[msg.sender] = ident
        if msg.meta.get("oracle", True):
            self.no_oracle.discard(msg.sender)
        elif msg.sender not in self.no_oracle:  # a Byzantine worker whose host's leader takes the oracle view for it
            self.no_oracle.add(msg.sender)
            log.info("worker %d takes its attack from its host's leader: no oracle view sent to it", msg.sender)
        if not sockets.send(self.sock, self.msg("welcome"), to=ident, block=False):
            self.drop(ident, Reason.queue_full, "welcome not sent")
        if msg.sender in self.lost and self.workers:  # a restarted worker: include it from the next round
            self.lost.discard(msg.sender)
            log.info("worker %d rejoined", msg.sender)

    def wait_for_workers(self) -> None:
        def missing() -> str:
            ids = sorted(set(self.workers) - self.lost - set(self.idents.values()))
            return f"workers {ids} did not connect to the server within {self.topo.join_timeout}s"

        self.wait_for(self.sock, lambda: set(self.workers) - self.lost <= set(self.idents.values()), self.topo.join_timeout, missing)

    def gather_ready(self, name: str) -> bool:
        return name != "byzantine" or self.run.has("oracle")

    def round_timed_out(self, name: str, missing: list[int]) -> None:
        raise PeerError(f"round {self.round}: no quorum after round_timeout={self.topo.round_timeout}s; missing workers {missing}")

    def finish(self) -> None:
        for wid in self.workers:
            sockets.send(self.sock, self.msg("stop", meta={"reason": "training complete"}), to=self.route(wid), block=False)
        self.report_done()


class PsWorker(NodeRuntime):
    """An honest or Byzantine worker: answers each model with its vector."""

    def setup(self, shard: Shard) -> None:
        cfg = self.exp.cfg
        model = make_model(self.exp.model, shard.input_shape, shard.num_classes, seed=cfg.seed, device=self.exp.device)
        y = self.poison_labels(shard.y_train, shard.num_classes)
        self.learner = self.learn_with_host(HonestLearner(model, shard.x_train, y, batch_size=cfg.batch_size, momentum=cfg.momentum,
                                     seed=cfg.seed * 1000 + self.spec.id, momentum_init=cfg.momentum_init))
        self.limit_messages(sum(p.numel() for p in model.parameters()), vectors=self.exp.n)  # model, or the oracle's (h, d)
        self.params: Tensor | None = None
        self.pending: DagRun | None = None
        self.computed = 0
        attack = self.exp.attack
        crafted = self.spec.byzantine and not attack.poisons_data and attack.knowledge == Knowledge.omniscient
        adversary = self.host.adversary if self.host is not None else None
        self.adversary = adversary if crafted and adversary is not None and adversary.shares(self.spec.id) else None
        """This host's adversary, when this worker computes its attack with co-hosted ones (node/cohost.py)."""
        if self.adversary is not None and self.adversary.leader != self.spec.id:
            self.adversary.watch(self.spec.id, self.wake_w)

    def connect(self, peers: dict[int, dict[str, Any]]) -> None:
        sid, server = next((i, p) for i, p in peers.items() if p["role"] == Role.server.value)
        self.sock = self.dealer_to(sid)
        self.add_socket(self.sock, routed=False)
        self.sock.connect(server["endpoints"]["data"])
        meta: dict[str, Any] = {"hash": self.exp.hash}
        if self.adversary is not None:  # only the leader of this host's Byzantine workers takes the oracle view
            meta["oracle"] = self.adversary.leader == self.spec.id
        sockets.send(self.sock, self.msg("hello", meta=meta))

    def start(self) -> None:
        pass

    def _dag(self, r: int) -> Dag:
        attack = self.exp.attack

        def vector(params: Tensor) -> Tensor:
            return self.learner.momentum_gradient(params, r)  # (d,)

        if not self.spec.byzantine or attack.poisons_data:
            return Dag(["model"], [Op("vector", vector, ("model",), heavy=True), Op("send", self._send, ("vector",))])

        def attack_op(view: Tensor) -> Tensor:
            exp = self.exp
            out = exp.attack(view.to(exp.device), f=exp.byzantine, ctx=self.attack_context(exp.n, r, ADVERSARY))  # (f, d)
            if self.adversary is not None:
                self.adversary.post(r, out)
            return out[self.spec.byz_index].clone()  # (d,): a view would keep all f rows alive while the send is queued

        if self.adversary is not None and self.adversary.leader != self.spec.id:  # the leader computes this host's attack
            return Dag(["model", "attacked"], [Op("pick", lambda out: out[self.spec.byz_index].clone(), ("attacked",)),
                                              Op("send", self._send, ("pick",))])
        view = "oracle" if attack.knowledge == Knowledge.omniscient else "own"
        ops = [Op("attack", attack_op, (view,), heavy=True), Op("send", self._send, ("attack",))]
        if view == "own":
            # knowledge=local: what this node computes itself on its own shard, (1, d)
            ops.append(Op("own", lambda params: vector(params)[None], ("model",), heavy=True))
            return Dag(["model"], ops)
        return Dag(["model", "oracle"], ops)

    def _send(self, vec: Tensor) -> None:
        sockets.send(self.sock, self.msg("vector", tensors=[vec.to(torch.float32) if vec.dtype != torch.float32 else vec]))
        self.loss = self.learner.last_loss
        self.computed = self.round + 1
        self.round = self.computed  # rounds this worker completed (its heartbeats and final report)
        if self.checkpoint_due(self.computed):
            self.send_state(self.computed, self.resumable())

    def resumable(self) -> dict[str, Any]:
        return {"m": self.learner.m}

    def interrupt_states(self) -> list[tuple[int, dict[str, Any]]]:
        # Let the round in flight run until it waits for an input, so the momentum and
        # its round agree: advance() may start the next heavy op, which writes the momentum.
        if self.pending is not None:
            while self.pending.running and self.pending.error is None:
                futures.wait(list(self.pending.running.values()))
                self.pending.advance()
        # The server may not have finished our last round: offer the state before it too.
        return [(self.computed, {"m": self.learner.m}), (self.computed - 1, {"m": self.learner.m_prev})]

    def restore(self, state: dict[str, Any], round: int) -> None:
        super().restore(state, round)
        self.computed = round
        m = state.get("m")
        self.learner.m = None if m is None else m.to(self.learner.device).clone()

    def on_message(self, ident: bytes | None, msg: Message, sock: zmq.Socket) -> None:
        if msg.sender != 0:
            self.dropped += 1
            return
        if msg.kind == "welcome":
            return
        if msg.kind == "refuse":
            raise PeerError(f"server refused this worker: {msg.meta.get('reason')}")
        if msg.kind == "stop":
            self.state = "done"
            self.finished = True
            return
        if msg.kind == "model" and len(msg.tensors) == 1:
            self.round = msg.round
            self.pending = DagRun(self._dag(msg.round), self.pool, self.wake_w)
            self.pending.provide("model", msg.tensors[0].clone())
        elif msg.kind == "oracle" and self.pending is not None and msg.round == self.round and len(msg.tensors) == 1:
            self.pending.provide("oracle", msg.tensors[0])
        else:
            self.dropped += 1

    def on_tick(self, now: float) -> None:
        if self.pending is not None:
            if self.adversary is not None and "attacked" in self.pending.dag.inputs and not self.pending.has("attacked"):
                out = self.adversary.take(self.round)  # (f, d), once this host's leader computed it
                if out is not None:
                    self.pending.provide("attacked", out)
            self.pending.advance()
            if self.pending.error is not None:
                raise self.pending.error
