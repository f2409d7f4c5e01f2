"""Comparative gradient elimination (Gupta, Liu, Vaidya, 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, smallest, weighted_sum
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import check_f


def cge(x: Tensor, *, f: int = 0) -> Tensor:
    """cge(x) = (1/(n-f)) sum of the n - f rows with the smallest norms ||x_i||.
    Gupta, Liu, Vaidya, "Byzantine fault-tolerant distributed machine learning with
    norm-based comparative gradient elimination", DSN Workshops 2021.

    The paper sums the kept vectors; byzctl averages them so the step size does not
    scale with n - f (as the other averaging rules). Needs only the norms (one pass
    over x) and one weighted sum. Ties go to the lowest index; non-finite rows have an
    infinite norm, so with at most f of them the result is finite.

    Raises:
        RuleError: unless n > 2f.
    """
    n, _ = check_matrix(x, "cge")
    check_f(n, f, need=2 * f + 1, rule="cge", formula="n > 2f")
    check_float(x, "cge")
    norms = torch.linalg.vector_norm(x, dim=1).to(device="cpu", dtype=torch.float64)  # (n,)
    ok = torch.isfinite(norms)
    w = torch.zeros(n, dtype=torch.float64)
    w[smallest(torch.where(ok, norms, float("inf")), n - f)] = 1.0 / (n - f)
    return weighted_sum(x, w, ok)  # (d,)


@dataclass(kw_only=True)
class Cge(Aggregator):
    """Config of `cge`."""

    _target_: str = "byzctl.aggregators.cge.Cge"
    name: str = "cge"

    fn: ClassVar = staticmethod(cge)
    paper = (
        "Gupta, Liu, Vaidya, 'Byzantine fault-tolerant distributed machine learning with norm-based"
        " comparative gradient elimination', DSN Workshops 2021"
    )
    convention = (
        'Averages the n - f smallest-norm vectors (ties: lowest index); n > 2f.'
    )
