"""Honest learning on one node: model <-> flat vector, momentum gradients, evaluation.

Honest nodes send their worker momentum m <- beta*m + (1 - beta)*g (as ByzFL does);
whoever aggregates applies lr and weight decay: p <- p - lr * (agg + wd * p).
The first momentum has two forms in the literature (`MomentumInit`).
"""

from __future__ import annotations

import threading
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byzctl.learning.batched import GradientBatcher
from byzctl.learning.seeds import generator
from byzctl.models.base import ModelConfig


class MomentumInit(str, Enum):
    """The worker momentum before the first step; implementations differ."""

    gradient = "gradient"
    """m_1 = g_1: the first vector sent is the full gradient (byzctl's default; Karimireddy,
    He, Jaggi, "Learning from history for Byzantine robust optimization", ICML 2021, start
    their averages from the first gradient too)."""
    zero = "zero"
    """m_0 = 0, so m_1 = (1 - beta) g_1: ByzFL's client momentum (LPD-EPFL/byzfl `Client`),
    and Farhadkhani et al., "Byzantine machine learning made easy", ICML 2022."""


_INIT = threading.Lock()
"""Held while a model draws its initial weights from torch's global generator: the nodes
of a host process build theirs on their own threads, and two builds interleaving their
draws gave both nodes other weights than the seed's (found as packed decentralized runs
that differed from one process per node, once set-up had become fast enough to overlap)."""


def make_model(model: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *, seed: int, device: str) -> nn.Module:
    """The run's model, identically initialised on every node for a given seed."""
    with _INIT:
        torch.manual_seed(seed)
        built = model.build(input_shape, num_classes)
    return built.to(device)


def flat_params(model: nn.Module) -> Tensor:
    """A new flat copy of the parameters, (d,)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def load_flat(model: nn.Module, vec: Tensor) -> None:
    """Copy a flat vector (d,) into the model's parameters."""
    torch.nn.utils.vector_to_parameters(vec.to(next(model.parameters()).device), model.parameters())


def apply_update(params: Tensor, agg: Tensor, *, lr: float, weight_decay: float) -> Tensor:
    """p <- p - lr * (agg + wd * p), returned as a new vector (d,)."""
    return params - lr * (agg.to(params.dtype) + weight_decay * params)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) on (x, y)."""
    model.eval()
    device = next(model.parameters()).device
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        out = model(xb)
        loss += F.cross_entropy(out, yb, reduction="sum").item()
        correct += int((out.argmax(1) == yb).sum())
    model.train()
    return loss / len(y), correct / len(y)


class HonestLearner:
    """One node's honest training state: its shard, its momentum.

    The batch of round t is a pure function of (seed, t): batches walk a permutation
    of the shard drawn per epoch, so only the momentum needs checkpointing.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int, momentum: float, seed: int,
                 momentum_init: MomentumInit | str = MomentumInit.gradient):
        self.model = model
        self.device = next(model.parameters()).device
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.batch_size = max(1, min(batch_size, len(y)))
        self.per_epoch = max(1, len(y) // self.batch_size)
        self.beta = momentum
        self.momentum_init = MomentumInit(momentum_init)
        self.seed = seed
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)
        self.m: Tensor | None = None
        self.m_prev: Tensor | None = None
        self.last_loss = float("nan")
        self.batcher: tuple[GradientBatcher, int] | None = None
        """(the host's batcher, this node's id): the gradient is computed in one batched
        call with the other honest nodes of this host process (learning/batched.py)."""

    def batch(self, t: int) -> tuple[Tensor, Tensor]:
        epoch, pos = divmod(t, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = torch.randperm(len(self.y), generator=generator(self.seed, "epoch", epoch))
        idx = self._order[pos * self.batch_size : (pos + 1) * self.batch_size].to(self.device)
        return self.x[idx], self.y[idx]

    def gradient(self, params: Tensor, t: int) -> Tensor:
        """The loss gradient at `params` on round t's batch, (d,)."""
        if self.batcher is not None:
            batcher, node = self.batcher
            g, self.last_loss = batcher.gradient(node, self, params, t)
            return g
        load_flat(self.model, params)
        xb, yb = self.batch(t)
        self.model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(xb), yb)
        loss.backward()
        self.last_loss = float(loss.detach())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.model.parameters()]  # unused: 0
        return torch.cat([g.reshape(-1) for g in grads])  # (d,)

    def momentum_gradient(self, params: Tensor, t: int) -> Tensor:
        """m <- beta*m + (1 - beta)*g at `params` on round t's batch; returns a copy of m, (d,).
        The first m is g (momentum_init=gradient) or (1 - beta)*g (zero: from m_0 = 0)."""
        g = self.gradient(params, t)
        self.m_prev = self.m
        if self.m is None:
            self.m = g if self.momentum_init is MomentumInit.gradient else (1 - self.beta) * g
        else:
            self.m = self.beta * self.m + (1 - self.beta) * g
        return self.m.clone()
