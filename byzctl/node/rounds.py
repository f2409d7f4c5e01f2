"""The round loop of the roles that own rounds: the ps server and decentralized peers.

Each round is the role's DAG (`round_dag`). The loop begins it, closes its gathers
on time, evaluates when due and reports the metric row, then counts the round,
checkpoints when due, and begins the next or finishes. A gather closes when every
live expected node answered; or `quorum_deadline` after its quorum arrived; or at
`round_timeout`, where the role decides (`round_timed_out`) whether the round fails
or goes on with what arrived. The roles supply their DAG, its ops and these policies.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from torch import Tensor, nn

from byzctl.dag import Dag, DagRun, Gather, Op
from byzctl.learning import evaluate, load_flat
from byzctl.node.runtime import NodeRuntime

log = logging.getLogger("byzctl.node")


class RoundLoop(NodeRuntime):
    """Base of the roles that own rounds. Subclasses build `model`, `params`, `test_x`
    and `test_y` in `setup` and implement `round_dag`, `finish` and `on_message`."""

    model: nn.Module
    params: Tensor  # (d,)
    test_x: Tensor
    test_y: Tensor
    run: DagRun
    """The current round's execution."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.eval_row: dict[str, Any] = {}
        """The last evaluation (round, test_loss, test_accuracy): the final figures."""
        self.round_t0 = time.monotonic()
        self.quorum_t: dict[str, float] = {}
        """When each gather of this round reached its quorum (its quorum_deadline runs from there)."""

    # -- what a role supplies -------------------------------------------------------------
    def round_dag(self) -> Dag:
        """The DAG of round `self.round`."""
        raise NotImplementedError

    def open_round(self, run: DagRun) -> None:
        """Provide the new round's inputs and send what starts it (before its first advance)."""

    def gather_ready(self, name: str) -> bool:
        """Whether gather `name` may close yet (the server's `byzantine` waits for `oracle`)."""
        return True

    def quorum(self, name: str, spec: Gather) -> int:
        """How many answers to gather `name` start its quorum_deadline."""
        return spec.minimum

    def round_timed_out(self, name: str, missing: list[int]) -> None:
        """Gather `name` had no quorum at round_timeout: raise to fail the run, or return
        to go on with what arrived."""
        raise NotImplementedError

    def finish(self) -> None:
        """The last round is done (or there was none left): stop the others, report."""
        raise NotImplementedError

    def metric_tensors(self) -> list[Tensor]:
        """Tensors sent with each metric row (a peer's parameters, for consensus distance)."""
        return []

    # -- rounds --------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.monotonic()
        if self.round >= self.exp.cfg.rounds:  # resumed from the final checkpoint: nothing left
            self.finish()
            return
        self.begin_round()

    def begin_round(self) -> None:
        """Start round `self.round`: keep the state it starts from, then run its DAG."""
        self.snapshot()
        self.run = DagRun(self.round_dag(), self.pool, self.wake_w)
        self.round_t0 = time.monotonic()
        self.quorum_t = {}
        self.open_round(self.run)
        self.run.advance()

    def on_tick(self, now: float) -> None:
        self.close_gathers(now)
        self.run.advance()
        if self.run.error is not None:
            raise self.run.error
        if self.run.done:
            self.round_done()

    def close_gathers(self, now: float) -> None:
        """Close each open gather whose answers or deadlines say so."""
        run = self.run
        for name, spec in run.dag.gathers.items():
            if run.has(name):
                continue
            ready = self.gather_ready(name)
            arrived = run.arrived_from(name)
            if ready and set(spec.expected) - self.lost <= arrived:
                run.close(name, force=True)  # every live node answered
            elif ready and len(arrived) >= self.quorum(name, spec):
                t = self.quorum_t.setdefault(name, now)
                if now - t >= self.topo.quorum_deadline:
                    run.close(name, force=True)
            elif now - self.round_t0 >= self.topo.round_timeout:
                self.round_timed_out(name, sorted(cast("set[int]", set(spec.expected) - arrived)))  # node ids
                run.close(name, force=True)

    def next_deadline(self) -> float | None:
        """The earliest deadline of an open gather: quorum_deadline after its quorum, else
        round_timeout. None while no gather is open (finished heavy ops wake the loop)."""
        times = [self.quorum_t[name] + self.topo.quorum_deadline if name in self.quorum_t
                 else self.round_t0 + self.topo.round_timeout
                 for name in self.run.dag.gathers if not self.run.has(name)]
        return min(times, default=None)

    def round_done(self) -> None:
        """A round's DAG finished: count it, checkpoint if due, then finish or begin the next."""
        self.round += 1
        self.snapshot()
        if self.checkpoint_due(self.round):
            self.send_state(self.round, self.resumable())
        if self.round >= self.exp.cfg.rounds:
            self.finish()
        else:
            self.begin_round()

    def report_done(self, **extra: Any) -> None:
        """Send the final figures (the last evaluation) and stop serving."""
        self.state = "done"
        row = self.eval_row
        summary = {"rounds_completed": self.round, "test_accuracy": row.get("test_accuracy"),
                   "test_loss": row.get("test_loss"), "wall_seconds": time.monotonic() - self.started_at,
                   "dropped_messages": self.dropped, **extra}
        self.report("done", summary)
        self.finished = True

    # -- evaluation ----------------------------------------------------------------------
    def evaluation_due(self) -> bool:
        """Whether round `self.round` ends with an evaluation: every eval_every rounds, and the last."""
        done = self.round + 1
        return done % self.exp.cfg.eval_every == 0 or done == self.exp.cfg.rounds

    def eval_ops(self, params: str, *, due: bool) -> list[Op]:
        """`evaluate` the parameters op `params` returns (when `due`), then `report` the row."""
        return [Op("evaluate", self._evaluate if due else _nothing, (params,), heavy=due),
                Op("report", self._report, ("evaluate",))]

    def _evaluate(self, params: Tensor) -> dict[str, Any]:
        load_flat(self.model, params)
        loss, acc = evaluate(self.model, self.test_x, self.test_y)
        return {"round": self.round + 1, "test_loss": loss, "test_accuracy": acc}

    def _report(self, row: dict[str, Any] | None) -> None:
        if row is None:
            return
        self.eval_row = row
        log.info("[round %04d] test loss=%.4f acc=%.4f", row["round"], row["test_loss"], row["test_accuracy"])
        meta = {**row, "node": self.spec.id, "role": self.spec.role.value, "time": time.monotonic() - self.started_at}
        self.report("metric", meta, tensors=self.metric_tensors())


def _nothing(_params: Tensor) -> None:
    return None

