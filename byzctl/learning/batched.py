"""Honest gradients of many nodes in one call (torch.func: `functional_call` and
`grad_and_value` under `vmap`), each node at its own parameters on its own batch.

`GradientBatcher` gathers the requests of the honest nodes packed in one host
process (node/host.py): each node's thread asks for its gradient and waits; once
every member asked (or BATCH_WAIT_S passed), one of them computes them all.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

if TYPE_CHECKING:
    from byzctl.learning.trainer import HonestLearner

BATCH_WAIT_S = 0.01
"""How long a request waits for its siblings before computing what has arrived."""


def batchable(model: nn.Module) -> bool:
    """Whether `model`'s gradient can be batched over nodes: no buffers (BatchNorm's
    running statistics would be shared between the nodes of a batch)."""
    return not any(True for _ in model.buffers())


def batched_gradients(model: nn.Module, params: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of the mean cross-entropy of `model` for k nodes at once.

    params (k, d) flat parameters, xs (k, b, *input), ys (k, b) -> grads (k, d), losses (k,).
    `model` only lends its structure (its own parameters are not used)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def loss(flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
        tensors = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, tensors, (x,)), y)

    grads, losses = vmap(grad_and_value(loss))(params, xs, ys)
    return grads, losses


class GradientBatcher:
    """The honest nodes of one host process, computing their gradients together."""

    def __init__(self) -> None:
        self._structure: nn.Module | None = None
        """A private copy of the run's model, whose structure every batched call borrows:
        `functional_call` swaps a module's parameters for the call's duration, so the
        module must not be a node's own, which its pool thread may be evaluating."""
        self.members: set[int] = set()
        self.cond = threading.Condition()
        self.pending: dict[int, tuple[HonestLearner, Tensor, int]] = {}
        self.results: dict[int, tuple[Tensor, float] | BaseException] = {}

    def join(self, node: int) -> None:
        with self.cond:
            self.members.add(node)

    def leave(self, node: int) -> None:
        """`node` asks no more (it finished, failed or was stopped): nobody waits for it."""
        with self.cond:
            self.members.discard(node)
            self.cond.notify_all()

    def gradient(self, node: int, learner: HonestLearner, params: Tensor, t: int) -> tuple[Tensor, float]:
        """`learner`'s gradient at `params` on round t's batch, and its loss."""
        with self.cond:
            self.pending[node] = (learner, params, t)
            deadline = time.monotonic() + BATCH_WAIT_S
            while node not in self.results:
                if self.members <= set(self.pending) or time.monotonic() >= deadline:
                    self._compute()
                    break
                self.cond.wait(max(0.0, deadline - time.monotonic()))
            out = self.results.pop(node)
        if isinstance(out, BaseException):
            raise out
        return out

    def _compute(self) -> None:
        """Every pending request, grouped by batch shape, one batched call per group
        (under the lock: the requesting threads wait anyway)."""
        jobs, self.pending = self.pending, {}
        groups: dict[tuple[int, ...], list[tuple[int, HonestLearner, Tensor, Tensor, Tensor]]] = {}
        for node, (learner, params, t) in jobs.items():
            xb, yb = learner.batch(t)
            groups.setdefault(tuple(xb.shape), []).append((node, learner, params, xb, yb))
        for group in groups.values():
            try:
                params = torch.stack([params.to(learner.device) for _, learner, params, _, _ in group])  # (k, d)
                if self._structure is None:
                    self._structure = copy.deepcopy(group[0][1].model)
                grads, losses = batched_gradients(self._structure, params, torch.stack([g[3] for g in group]),
                                                  torch.stack([g[4] for g in group]))
                for i, (node, *_rest) in enumerate(group):
                    self.results[node] = (grads[i].detach(), float(losses[i]))
            except Exception as exc:  # noqa: BLE001 - each requester raises it in its own node
                for node, *_rest in group:
                    self.results[node] = exc
        self.cond.notify_all()
