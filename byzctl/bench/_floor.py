"""The compute floor of a run: its learning in this process, no node processes, no messages.

Each round does what the nodes of a real run compute (node/ps.py, node/peer.py), with
their seeds (batches, attack and aggregation generators), in node-id order:
  ps:    every worker's momentum gradient at the server's parameters on its own batch;
         Byzantine rows from the attack (on the honest rows, or on the node's own vector
         with knowledge=local); pre-aggregators + aggregator; the SGD step.
  decentralized: every peer's half step; every honest peer aggregates its own vector
         with its in-neighbours'; Byzantine peers send the attack's vector.
Evaluation on the test split every eval_every rounds and at the last (the server, or
every honest peer), as the run does. Simplifications: every vector arrives (no quorum,
no lost node); a per_recipient attack sends every neighbour the same vector.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from byzctl.attacks.base import AttackContext, Knowledge
from byzctl.config.experiment import Experiment
from byzctl.errors import RuleError
from byzctl.learning import (
    HonestLearner,
    apply_update,
    evaluate,
    flat_params,
    load_flat,
    make_model,
)
from byzctl.learning.seeds import generator
from byzctl.node.cohost import ADVERSARY
from byzctl.node.shards import load_shard, shard_indices
from byzctl.topology.base import Role
from byzctl.topology.decentralized import Decentralized, Exchange


@dataclass
class FloorResult:
    rounds: int
    train_s: float
    """Seconds of the round loop (setup excluded)."""
    evals: list[tuple[int, float]] = field(default_factory=list)
    """(round, seconds since the loop started) after each evaluation, as metrics.jsonl's `time`."""
    test_accuracy: float | None = None


class Floor:
    """One experiment's nodes as plain objects: shards, learners, parameters."""

    def __init__(self, exp: Experiment):
        cfg = self.cfg = exp.cfg
        self.exp = exp
        self.specs = [s for s in exp.plan() if s.role.trains]
        self.server = next((s for s in exp.plan() if s.role is Role.server), None)
        splits = exp.dataset.load(int(cfg.seed))
        parts = shard_indices(exp, splits)
        self.x_test, self.y_test = splits.x_test, splits.y_test
        # One model module for every gradient: each call first loads the node's parameters.
        self.model = make_model(exp.model, splits.input_shape, splits.num_classes, seed=cfg.seed, device=exp.device)
        self.learners: dict[int, HonestLearner] = {}
        for s in self.specs:
            sh = load_shard(exp, s, splits=splits, parts=parts)
            y = exp.attack.poison(sh.y_train, num_classes=sh.num_classes) if s.byzantine and exp.attack.poisons_data else sh.y_train
            self.learners[s.id] = HonestLearner(self.model, sh.x_train, y, batch_size=cfg.batch_size, momentum=cfg.momentum,
                                                seed=cfg.seed * 1000 + s.id, momentum_init=cfg.momentum_init)
        p0 = flat_params(self.model)  # (d,)
        self.params = {s.id: p0 for s in self.specs}  # decentralized: each peer's own
        self.prev_agg: dict[int, Tensor | None] = {s.id: None for s in exp.plan()}  # whoever aggregates
        self.graph = exp.neighbours() if exp.decentralized else None
        self.lr, self.wd = float(cfg.lr), float(cfg.weight_decay)
        self.accuracy: float | None = None

    def attack(self, who: int | str, view: Tensor, n: int, r: int) -> Tensor:
        """The f Byzantine vectors of round r from a view (h, d) -> (f, d), with the
        randomness of `who` (a peer's id; a ps run's one adversary)."""
        exp, seed = self.exp, int(self.cfg.seed)

        def rule(x: Tensor) -> Tensor:
            return exp.aggregate(x, generator=generator(seed, who, r, "attack-rule"))

        ctx = AttackContext(n=n, generator=generator(seed, who, r, "attack"), aggregate=rule)
        return exp.attack(view, f=exp.byzantine, ctx=ctx)  # (f, d)

    def evaluate(self, params: Tensor) -> float:
        load_flat(self.model, params)
        self.accuracy = evaluate(self.model, self.x_test, self.y_test)[1]
        return self.accuracy

    def ps_round(self, r: int) -> None:
        exp = self.exp
        assert self.server is not None
        p = self.params[self.specs[0].id]
        crafted = exp.byzantine and not exp.attack.poisons_data
        vecs = {s.id: self.learners[s.id].momentum_gradient(p, r) for s in self.specs if not (s.byzantine and crafted)}
        if crafted:
            honest = torch.stack([vecs[s.id] for s in self.specs if not s.byzantine])  # (h, d)
            omniscient = exp.attack.knowledge == Knowledge.omniscient
            out = self.attack(ADVERSARY, honest, exp.n, r) if omniscient else None  # (f, d): one adversary, one attack
            for s in self.specs:
                if s.byzantine:
                    rows = out if out is not None else self.attack(ADVERSARY, self.learners[s.id].momentum_gradient(p, r)[None], exp.n, r)
                    vecs[s.id] = rows[s.byz_index].clone()  # (d,): not a view keeping all f rows alive
        x = torch.stack([vecs[i] for i in sorted(vecs)])  # (n, d)
        sid = self.server.id
        agg = exp.aggregate(x, center=self.prev_agg[sid], generator=generator(int(self.cfg.seed), sid, r, "aggregate"))  # (d,)
        self.prev_agg[sid] = agg
        new = apply_update(p, agg, lr=self.lr, weight_decay=self.wd)
        self.params = {s.id: new for s in self.specs}

    def peer_round(self, r: int) -> None:
        exp, g = self.exp, self.graph
        assert g is not None and isinstance(exp.topology, Decentralized)
        by_model = exp.topology.exchange == Exchange.model
        half = {}
        for s in self.specs:
            p = self.params[s.id]
            m = self.learners[s.id].momentum_gradient(p, r)  # (d,)
            half[s.id] = p - self.lr * (m + self.wd * p) if by_model else m
        sent = dict(half)
        for s in self.specs:
            if s.byzantine and not exp.attack.poisons_data:
                seen = [half[j] for j in sorted(g[s.id]) if j < exp.honest]
                view = torch.stack(seen) if seen and exp.attack.knowledge == Knowledge.omniscient else half[s.id][None]
                sent[s.id] = self.attack(s.id, view, len(g[s.id]) + 1, r)[s.byz_index % max(1, exp.byzantine)].clone()  # (d,)
        new = {}
        for s in self.specs:
            p = self.params[s.id]
            if s.byzantine and not exp.attack.poisons_data:  # a poisoning peer aggregates as an honest one
                new[s.id] = half[s.id] if by_model else p - self.lr * (half[s.id] + self.wd * p)
                continue
            x = torch.stack([half[s.id], *(sent[j] for j in sorted(g[s.id]))])  # (1 + k, d)
            try:
                agg = exp.aggregate(x, center=self.prev_agg[s.id], generator=generator(int(self.cfg.seed), s.id, r, "aggregate"))
            except RuleError:
                agg = half[s.id]  # as the peer: keep its own vector
            self.prev_agg[s.id] = agg
            new[s.id] = agg.to(p.dtype) if by_model else p - self.lr * (agg + self.wd * p)
        self.params = new

    def run(self, rounds: int, *, eval_every: int | None) -> FloorResult:
        """`rounds` rounds; evaluate every `eval_every` and at the last (None: never)."""
        out = FloorResult(rounds=rounds, train_s=0.0)
        step = self.peer_round if self.graph is not None else self.ps_round
        t0 = time.perf_counter()
        for r in range(rounds):
            step(r)
            if eval_every is not None and ((r + 1) % eval_every == 0 or r + 1 == rounds):
                for s in self.specs[:1] if self.graph is None else [s for s in self.specs if not s.byzantine]:
                    self.evaluate(self.params[s.id])
                out.evals.append((r + 1, time.perf_counter() - t0))
        out.train_s = time.perf_counter() - t0
        out.test_accuracy = self.accuracy
        return out
