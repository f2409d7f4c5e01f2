"""Geometric median by smoothed Weiszfeld iterations (RFA: Pillutla, Kakade, Harchaoui, 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, gram, serial, weighted_sum
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import ConfigError, RuleError, check_f


class Init(str, Enum):
    """Where the Weiszfeld iterations start; implementations differ."""

    mean = "mean"
    """z_0 = the mean of the (finite) inputs, as RFA's reference code (Pillutla et al.)."""
    zero = "zero"
    """z_0 = 0, as ByzFL's `GeometricMedian` (LPD-EPFL/byzfl), usually with nu=0.1, max_iter=3."""


def geometric_median(
    x: Tensor, *, f: int = 0, nu: float = 1e-6, max_iter: int = 100, tol: float = 1e-6,
    init: Init | str = Init.mean,
) -> Tensor:
    """z_{t+1} = sum_i b_i x_i / sum_i b_i with b_i = 1 / max(nu, ||z_t - x_i||), from
    z_0 = mean(x) (init=mean) or z_0 = 0 (init=zero, ByzFL's form): smoothed Weiszfeld
    towards argmin_z sum_i ||z - x_i||. Pillutla, Kakade, Harchaoui, "Robust aggregation
    for federated learning" (RFA), IEEE TSP 2022; Weiszfeld, Tohoku Math. J. 1937.

    With few iterations the start matters: from 0 the first iterate weighs each input by
    1 / ||x_i||, from the mean by 1 / ||x_i - mean||.

    Stops after `max_iter` iterations or once the objective g(z) = sum_i ||z - x_i||
    improves by at most tol * g(z). Every iterate is a weighted mean of the rows, kept
    as its weight vector, so iterations cost O(n^2) on the Gram matrix and the (n, d)
    data is read twice in all. Non-finite rows get weight 0 (they are infinitely far),
    so with at most f of them the result is finite.

    Raises:
        RuleError: unless n > 2f, nu > 0, max_iter >= 1 and tol >= 0.
    """
    n, _ = check_matrix(x, "geometric_median")
    check_f(n, f, need=2 * f + 1, rule="geometric_median", formula="n > 2f")
    check_float(x, "geometric_median")
    _check_params(nu, max_iter, tol, error=RuleError)
    g, ok = gram(x)
    good = ok.to(torch.float64)  # (n,)
    if not bool(ok.any()):
        return weighted_sum(x, torch.full((n,), 1.0 / n, dtype=torch.float64), ok)  # all non-finite
    sq = g.diagonal()  # (n,)
    # (n,) z = sum_i w_i x_i: the mean of the good rows, or 0 (all weights 0)
    w = good / good.sum() if _init(init) is Init.mean else torch.zeros(n, dtype=torch.float64)
    with serial():
        obj = _objective(g, sq, w, good)
        for _ in range(max_iter):
            dist = _distances(g, sq, w)  # (n,) ||z - x_i||
            beta = good / dist.clamp_min(nu)
            w = beta / beta.sum()
            new = _objective(g, sq, w, good)
            done = obj - new <= tol * new
            obj = new
            if done:
                break
    return weighted_sum(x, w, ok)  # (d,)


def _init(value: Init | str) -> Init:
    try:
        return Init(value)
    except ValueError:
        raise RuleError(f"geometric_median: init must be one of {[m.value for m in Init]}. Got init={value!r}") from None


def _distances(g: Tensor, sq: Tensor, w: Tensor) -> Tensor:
    """||z - x_i|| for z = sum_j w_j x_j, from G: sqrt(G_ii - 2 (G w)_i + w^T G w)."""
    gw = g @ w  # (n,)
    return (sq - 2.0 * gw + w @ gw).clamp_min(0.0).sqrt()


def _objective(g: Tensor, sq: Tensor, w: Tensor, good: Tensor) -> float:
    return float((good * _distances(g, sq, w)).sum())


def _check_params(nu: float, max_iter: int, tol: float, *, error: type[Exception]) -> None:
    if not (math.isfinite(nu) and nu > 0):
        raise error(f"geometric_median needs nu > 0 (finite). Got nu={nu}")
    if max_iter < 1:
        raise error(f"geometric_median needs max_iter >= 1. Got max_iter={max_iter}")
    if not tol >= 0:
        raise error(f"geometric_median needs tol >= 0. Got tol={tol}")


@dataclass(kw_only=True)
class GeometricMedian(Aggregator):
    """Config of `geometric_median`."""

    _target_: str = "byzctl.aggregators.geometric_median.GeometricMedian"
    name: str = "geometric_median"
    nu: float = 1e-6
    """Smoothing: distances below nu count as nu (avoids dividing by zero at an input)."""
    max_iter: int = 100
    """Weiszfeld iterations at most (each is O(n^2), independent of d)."""
    tol: float = 1e-6
    """Stop when the objective improves by at most tol times its value."""
    init: Init = Init.mean
    """Starting point z_0: mean (default, RFA) or zero (ByzFL)."""

    fn: ClassVar = staticmethod(geometric_median)
    paper = (
        "Pillutla, Kakade, Harchaoui, 'Robust aggregation for federated learning', IEEE TSP 2022 (RFA); "
        "Weiszfeld, Tohoku Mathematical Journal 1937"
    )
    convention = (
        "Smoothed Weiszfeld, b_i = 1/max(nu, ||z - x_i||). init=mean (default): z_0 = mean, as RFA; "
        "init=zero: z_0 = 0, as ByzFL (which also uses nu=0.1, max_iter=3). Stops at max_iter or when "
        "the objective improves by at most tol times its value."
    )

    def __post_init__(self) -> None:
        _check_params(self.nu, self.max_iter, self.tol, error=ConfigError)
