"""Nearest-neighbour mixing, NNM (Allouah et al., AISTATS 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, gram, serial, sq_distances, weighted_rows
from byzctl.aggregators.base import check_matrix
from byzctl.errors import check_f
from byzctl.preagg.base import Preagg


def nnm(x: Tensor, *, f: int = 0) -> Tensor:
    """nnm(x)_i = (1/(n-f)) sum of the n - f rows nearest to x_i (x_i included), for every
    i: (n, d) -> (n, d). Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan,
    "Fixing by mixing: a recipe for optimal Byzantine ML under heterogeneity",
    AISTATS 2023.

    Never builds an (n, n, d) tensor: distances come from one Gram matrix and the
    mixing is one (n, n) @ (n, d) product. Ties go to the lowest index. Non-finite rows
    are infinitely far from every row: with at most f of them no finite row mixes them
    in, and they are passed through unchanged (still non-finite, for the rule after).

    Raises:
        RuleError: unless n > 2f.
    """
    n, _ = check_matrix(x, "nnm")
    check_f(n, f, need=2 * f + 1, rule="nnm", formula="n > 2f")
    check_float(x, "nnm")
    g, ok = gram(x)
    w = _weights(g, ok, f)  # (n, n) row i averages its neighbours
    if bool(ok.all()):
        return weighted_rows(x, w, ok)  # (n, d)
    good, bad = torch.nonzero(ok).flatten(), torch.nonzero(~ok).flatten()
    out = torch.empty_like(x)  # (n, d)
    out[bad.to(x.device)] = x[bad.to(x.device)]  # passed through
    out[good.to(x.device)] = weighted_rows(x, w[good], ok)  # NaN only if > f rows are bad
    return out


def nnm_mix(g: Tensor, *, f: int = 0) -> Tensor:
    """The W (n, n) with nnm(x) == W @ x, from g = x @ x.T (every row finite)."""
    n = g.shape[0]
    check_f(n, f, need=2 * f + 1, rule="nnm", formula="n > 2f")
    return _weights(g, torch.ones(g.shape[0], dtype=torch.bool), f)


def _weights(g: Tensor, ok: Tensor, f: int) -> Tensor:
    """Row i of W puts 1 / (n - f) on the n - f rows nearest to row i (itself included)."""
    n = g.shape[0]
    with serial():
        near = torch.sort(sq_distances(g, ok), dim=1, stable=True).indices[:, : n - f]  # (n, n - f)
    w = torch.zeros(n, n, dtype=torch.float64)
    return w.scatter_(1, near, 1.0 / (n - f))  # (n, n)


@dataclass(kw_only=True)
class Nnm(Preagg):
    """Config of `preagg=[nnm]`."""

    _target_: str = "byzctl.preagg.nnm.Nnm"
    name: str = "nnm"

    fn: ClassVar = staticmethod(nnm)
    paper = (
        "Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, 'Fixing by mixing: a recipe for "
        "optimal Byzantine ML under heterogeneity', AISTATS 2023"
    )
    convention = (
        'Each vector replaced by the mean of its n - f nearest vectors, itself included (as the '
        'paper and ByzFL).'
    )
    mix: ClassVar = staticmethod(nnm_mix)
