"""Decentralized peers (hub, mesh, local): each honest node trains and aggregates itself.

Honest round r, as a DAG (driven by node/rounds.py):
  params -> half-step -> send to out-neighbours -+
  gather(in-neighbours' vectors of round r) -----+-> aggregate(own + received) -> update -> evaluate -> report
Byzantine round r:
  (omniscient) gather(honest in-neighbours' vectors) | (local) own computation -> attack -> send
Nodes progress independently: vectors of later rounds are buffered (within a window),
stale ones dropped; after quorum (in-degree - f) a short deadline closes the round.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import torch
import zmq
from torch import Tensor

from byzctl.attacks.base import Knowledge
from byzctl.dag import Dag, DagRun, Gather, Op
from byzctl.errors import RuleError
from byzctl.learning import HonestLearner, flat_params, make_model
from byzctl.node.links import HubLinks, Links, MeshLinks
from byzctl.node.rounds import RoundLoop
from byzctl.node.runtime import by_id
from byzctl.node.shards import Shard
from byzctl.topology.decentralized import Decentralized, Exchange
from byzctl.transport.wire import Message

log = logging.getLogger("byzctl.node")

WINDOW = 4
"""Rounds ahead of its own for which a peer buffers early vectors (a bound on memory)."""


class Peer(RoundLoop):
    @property
    def exchange(self) -> Exchange:
        """What peers send each other: models or gradients (decentralized topologies only)."""
        assert isinstance(self.exp.topology, Decentralized)
        return self.exp.topology.exchange

    def setup(self, shard: Shard) -> None:
        exp, cfg = self.exp, self.exp.cfg
        g = self.graph = exp.neighbours()
        me = self.spec.id
        self.ins = set(g[me])
        self.outs = {j for j, s in g.items() if me in s}
        self.honest_ids = set(range(exp.honest))
        self.model = make_model(exp.model, shard.input_shape, shard.num_classes, seed=cfg.seed, device=exp.device)
        self.params = flat_params(self.model)  # (d,)
        self.limit_messages(self.params.numel(), vectors=1)
        links_cls = HubLinks if exp.topology.name == "hub" else MeshLinks
        self.links: Links = links_cls(self, self.outs, self.ins)
        y = self.poison_labels(shard.y_train, shard.num_classes)
        self.learner = self.learn_with_host(HonestLearner(self.model, shard.x_train, y, batch_size=cfg.batch_size, momentum=cfg.momentum,
                                     seed=cfg.seed * 1000 + me, momentum_init=cfg.momentum_init))
        self.test_x, self.test_y = shard.x_test, shard.y_test
        self.early: dict[int, dict[int, Tensor]] = {}
        self.prev_agg: Tensor | None = None
        self.lr, self.wd = float(cfg.lr), float(cfg.weight_decay)
        self.f = exp.aggregator.resolve_f(exp.byzantine)
        self.skipped = 0
        self.outbox: dict[int, deque[tuple[float, Message]]] = {}
        """Vectors whose send queue was full, per recipient in order, each with its
        deadline (round_timeout): sent as the queue drains, never dropped silently."""
        self.send_drops = 0

    def endpoints(self) -> dict[str, str]:
        return self.links.endpoints()

    def connect(self, peers: dict[int, dict[str, Any]]) -> None:
        self.links.connect(peers)

    def on_peer_event(self, node: int, back: bool, endpoints: dict[str, str]) -> None:
        super().on_peer_event(node, back, endpoints)
        if back and node in self.outs:
            self.links.reconnect(node, endpoints)

    # -- rounds ---------------------------------------------------------------------
    def start(self) -> None:
        if self.rejoin_round > self.round:
            # A restarted peer jumps to the current round; aggregating its neighbours'
            # vectors then brings its model to theirs.
            log.info("rejoining at round %d", self.rejoin_round)
            self.round = self.rejoin_round
        super().start()

    def resumable(self) -> dict[str, Any]:
        return {"params": self.params, "m": self.learner.m, "prev_agg": self.prev_agg}

    def restore(self, state: dict[str, Any], round: int) -> None:
        super().restore(state, round)
        self.params = state["params"].to(self.params.device, self.params.dtype).clone()
        m, prev = state.get("m"), state.get("prev_agg")
        self.learner.m = None if m is None else m.to(self.learner.device).clone()
        self.prev_agg = None if prev is None else prev.to(self.exp.device).clone()

    def _listens_to(self) -> set[int]:
        """Whose round-r vectors this node waits for. A Byzantine node paces itself on its
        honest in-neighbours (so its vectors arrive within their round) but reads them only
        with knowledge=omniscient."""
        return self.ins & self.honest_ids if self.spec.byzantine else self.ins

    def _reads_view(self) -> bool:
        return self.exp.attack.knowledge == Knowledge.omniscient and not self.exp.attack.poisons_data

    def round_dag(self) -> Dag:
        expect = frozenset(self._listens_to())
        gathers = {"neigh": Gather(expect, max(0, len(expect) - self.f))}
        if self.spec.byzantine and not self.exp.attack.poisons_data:
            return Dag(["params"], [
                Op("own", self._own, ("params",), heavy=True),
                Op("attack", self._attack, ("own", "neigh"), heavy=True),
                Op("send", self._send_attack, ("attack",)),
                Op("update", self._byz_update, ("send", "own")),
            ], gathers)
        return Dag(["params"], [
            Op("half", self._half, ("params",), heavy=True),
            Op("send", self._send_all, ("half",)),
            Op("aggregate", self._aggregate, ("send", "neigh"), heavy=True),
            Op("update", self._update, ("aggregate",)),
            *self.eval_ops("update", due=self.evaluation_due() and not self.spec.byzantine),
        ], gathers)

    def open_round(self, run: DagRun) -> None:
        run.provide("params", self.params)
        for src, vec in self.early.pop(self.round, {}).items():
            run.feed("neigh", src, vec)

    # honest ops
    def _half(self, params: Tensor) -> Tensor:
        m = self.learner.momentum_gradient(params, self.round)  # (d,)
        if self.exchange == Exchange.gradient:
            return m
        return params - self.lr * (m + self.wd * params)

    def _send_all(self, vec: Tensor) -> Tensor:
        msg = self.msg("vector", tensors=[vec])
        for j in self.outs:
            self._post(j, msg)
        self.loss = self.learner.last_loss
        return vec

    def _post(self, to: int, msg: Message) -> None:
        """Send now, or queue behind what waits for `to` (its queue is full)."""
        box = self.outbox.get(to)
        if box or not self.links.send(to, msg):
            self.outbox.setdefault(to, deque()).append((time.monotonic() + self.topo.round_timeout, msg))

    def _flush(self, now: float) -> None:
        for to, box in list(self.outbox.items()):
            while box and (to in self.lost or box[0][0] < now):
                box.popleft()
                if to not in self.lost:
                    self.send_drops += 1
                    self.dropped += 1
                    log.warning("round %d: a vector for node %d waited round_timeout=%ss for a full queue and was dropped "
                                "(%d so far)", self.round, to, self.topo.round_timeout, self.send_drops)
            while box and self.links.send(to, box[0][1]):
                box.popleft()
            if not box:
                del self.outbox[to]

    def _aggregate(self, own: Tensor, received: dict[int, Tensor]) -> Tensor:
        x = torch.stack([own, *by_id(received)]).to(self.exp.device)  # (1 + k, d)
        try:
            return self.exp.aggregate(x, center=self.prev_agg, generator=self.rng("aggregate", self.round))  # (d,)
        except RuleError as exc:
            self.skipped += 1
            log.warning("round %d: aggregation over %d vectors impossible (%s); keeping own vector", self.round, len(x), exc)
            return own

    def _update(self, agg: Tensor) -> Tensor:
        self.prev_agg = agg
        if self.exchange == Exchange.gradient:
            self.params = self.params - self.lr * (agg + self.wd * self.params)
        else:
            self.params = agg.to(self.params.dtype)
        return self.params

    def metric_tensors(self) -> list[Tensor]:
        return [self.params]  # the monitor's consensus distance

    # Byzantine ops
    def _own(self, params: Tensor) -> Tensor:
        return self._half(params)

    def _attack(self, own: Tensor, received: dict[int, Tensor]) -> dict[int, Tensor]:
        """Byzantine vectors per recipient (one shared vector unless per_recipient)."""
        exp = self.exp
        view = received if self._reads_view() else {}
        if view:
            honest = torch.stack(by_id(view))  # (h', d)
        else:
            honest = own[None]  # (1, d): knowledge=local, or nothing seen
        ctx = self.attack_context(len(self.ins) + 1, self.round)
        if not exp.attack.per_recipient:
            vec = exp.attack(honest.to(exp.device), f=exp.byzantine, ctx=ctx)[self.spec.byz_index % max(1, exp.byzantine)].clone()  # (d,), not a view of f rows
            return {j: vec for j in self.outs}
        out = {}
        for j in self.outs:
            # What recipient j aggregates, as far as this node saw it: j's own vector and
            # the honest vectors it received from j's in-neighbours.
            mine = [v for src, v in view.items() if src == j or src in self.graph[j]]
            hv = torch.stack(mine) if mine else honest
            out[j] = exp.attack(hv.to(exp.device), f=exp.byzantine, ctx=ctx)[self.spec.byz_index % max(1, exp.byzantine)].clone()
        return out

    def _send_attack(self, vecs: dict[int, Tensor]) -> None:
        for j, vec in vecs.items():
            self._post(j, self.msg("vector", tensors=[vec.to(self.params.dtype)]))
        self.loss = self.learner.last_loss

    def _byz_update(self, _sent: None, own: Tensor) -> Tensor:
        # A Byzantine node keeps training on its own shard, so `own` stays meaningful.
        if self.exchange == Exchange.gradient:
            self.params = self.params - self.lr * (own + self.wd * self.params)
        else:
            self.params = own
        return self.params

    # -- messages and deadlines ---------------------------------------------------------
    def on_message(self, ident: bytes | None, msg: Message, sock: zmq.Socket) -> None:
        src = self.links.source(ident, msg, sock)
        if src is None or msg.kind != "vector":
            if msg.kind != "hello":
                self.dropped += 1
            return
        if src != msg.sender or len(msg.tensors) != 1 or msg.tensors[0].shape != self.params.shape or msg.tensors[0].dtype != self.params.dtype:
            self.dropped += 1
            log.warning("dropped vector from %s claiming sender %s, shape %s", src, msg.sender, [tuple(t.shape) for t in msg.tensors])
            return
        if msg.round == self.round and not self.finished:
            self.run.feed("neigh", src, msg.tensors[0])
        elif self.round < msg.round <= self.round + WINDOW:
            self.early.setdefault(msg.round, {}).setdefault(src, msg.tensors[0].clone())
        else:
            self.dropped += 1  # stale, or too far ahead

    def next_deadline(self) -> float | None:
        if self.outbox:
            return time.monotonic() + 0.01
        return super().next_deadline()

    def on_tick(self, now: float) -> None:
        self._flush(now)
        super().on_tick(now)

    def quorum(self, name: str, spec: Gather) -> int:
        return spec.minimum - len(set(spec.expected) & self.lost)  # a lost neighbour lowers the quorum too

    def round_timed_out(self, name: str, missing: list[int]) -> None:
        log.warning("round %d: round_timeout with neighbours %s missing; going on with %d", self.round, missing, self.run.arrived(name))

    def finish(self) -> None:
        self.report_done(skipped_aggregations=self.skipped)

    def close(self) -> None:
        # Let the last round's vectors reach slower neighbours before the sockets go.
        links = self.__dict__.get("links")  # None when setup failed before making them
        if links is not None:
            links.close(linger_ms=2000 if self.state == "done" else 0)
        super().close()
