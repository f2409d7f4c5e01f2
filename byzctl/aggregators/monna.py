"""MoNNA: average of the nearest neighbours of a trusted pivot (Farhadkhani et al., ICML 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, smallest, weighted_sum
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import ConfigError, RuleError, check_f


def monna(x: Tensor, *, f: int = 0, pivot: int = 0) -> Tensor:
    """monna(x) = (1/(n-f)) sum of the n - f rows nearest to x_pivot (x_pivot included).
    Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust collaborative learning
    with linear gradient overhead", ICML 2023.

    The pivot is a vector the caller trusts: in decentralized learning an honest node
    aggregates with its own vector as pivot (byzctl's convention, as ByzFL's, puts it
    at index 0). Squared distances to the pivot are ||x_i||^2 + ||x_p||^2 - 2 x_i.x_p
    (the pivot's row of the Gram matrix: one matrix-vector product and one norm pass).
    Ties go to the lowest index. Non-finite rows are infinitely far, so with at most f
    of them and a finite pivot the result is finite; a non-finite pivot gives a
    non-finite result.

    Raises:
        RuleError: unless n > 2f and 0 <= pivot < n.
    """
    n, _ = check_matrix(x, "monna")
    check_f(n, f, need=2 * f + 1, rule="monna", formula="n > 2f")
    check_float(x, "monna")
    _check_pivot(pivot, n=n, error=RuleError)
    dots = (x @ x[pivot]).to(device="cpu", dtype=torch.float64)  # (n,)
    sq = torch.linalg.vector_norm(x, dim=1).to(device="cpu", dtype=torch.float64).square()  # (n,)
    ok = torch.isfinite(sq) & torch.isfinite(dots)
    d2 = (sq + sq[pivot] - 2.0 * dots).clamp_min(0.0)  # (n,) squared distances to the pivot
    d2[pivot] = 0.0
    d2 = torch.where(ok, d2, float("inf"))
    w = torch.zeros(n, dtype=torch.float64)
    w[smallest(d2, n - f)] = 1.0 / (n - f)
    if not bool(ok[pivot]):
        w[pivot] = 1.0 / (n - f)  # a non-finite pivot propagates (documented)
    return weighted_sum(x, w, ok)  # (d,)


def _check_pivot(pivot: int, *, n: int | None, error: type[Exception]) -> None:
    if pivot < 0 or (n is not None and pivot >= n):
        raise error(f"monna needs 0 <= pivot < n. Got pivot={pivot}, n={n}")


@dataclass(kw_only=True)
class Monna(Aggregator):
    """Config of `monna`."""

    _target_: str = "byzctl.aggregators.monna.Monna"
    name: str = "monna"
    pivot: int = 0
    """Row of the trusted vector whose neighbours are averaged (an honest node's own
    vector; byzctl puts it first)."""

    fn: ClassVar = staticmethod(monna)
    paper = (
        "Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, 'Robust collaborative learning with "
        "linear gradient overhead', ICML 2023"
    )
    convention = (
        'Averages the n - f vectors nearest to a trusted pivot (aggregator.pivot, the pivot '
        'included).'
    )

    def __post_init__(self) -> None:
        _check_pivot(self.pivot, n=None, error=ConfigError)
