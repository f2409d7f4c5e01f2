"""Adaptive robust clipping, ARC (Allouah et al., 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float
from byzctl.aggregators.base import check_matrix
from byzctl.errors import check_f
from byzctl.preagg.base import Preagg
from byzctl.preagg.clipping import scale_factors, scale_rows


def arc(x: Tensor, *, f: int = 0) -> Tensor:
    """arc(x)_i = x_i min(1, c / ||x_i||) with k = floor(2 (f/n) (n - f)) and c the
    (k+1)-th largest norm: the k largest vectors are clipped to the norm of the next
    one. Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "Boosting robustness by
    clipping gradients in distributed learning", 2024.

    With f = 0, k = 0 and the input is returned (as a copy). Non-finite rows rank
    as the largest and become zero vectors, so the output is always finite. Ties in
    norm are clipped to the same value, so the order among them does not matter.

    Raises:
        RuleError: unless n > 2f.
    """
    n, _ = check_matrix(x, "arc")
    check_f(n, f, need=2 * f + 1, rule="arc", formula="n > 2f")
    check_float(x, "arc")
    norms = torch.linalg.vector_norm(x, dim=1)  # (n,)
    return scale_rows(x, norms, _threshold(norms, f))  # (n, d)


def arc_mix(g: Tensor, *, f: int = 0) -> Tensor:
    """The diagonal W (n, n) with arc(x) == W @ x, from g = x @ x.T (every row finite)."""
    n = g.shape[0]
    check_f(n, f, need=2 * f + 1, rule="arc", formula="n > 2f")
    norms = g.diagonal().clamp_min(0).sqrt()  # (n,)
    return torch.diag(scale_factors(norms, _threshold(norms, f)))


def _threshold(norms: Tensor, f: int) -> Tensor:
    """The (k+1)-th largest norm, k = floor(2 (f/n) (n - f)); non-finite norms rank largest."""
    n = norms.numel()
    k = (2 * f * (n - f)) // n
    ranked = torch.where(torch.isfinite(norms), norms, float("inf"))
    return torch.sort(ranked, descending=True).values[k]


@dataclass(kw_only=True)
class Arc(Preagg):
    """Config of `preagg=[arc]`."""

    _target_: str = "byzctl.preagg.arc.Arc"
    name: str = "arc"

    fn: ClassVar = staticmethod(arc)
    paper = (
        "Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, 'Boosting robustness by clipping "
        "gradients in distributed learning', 2024"
    )
    convention = (
        'k = floor(2 (f/n) (n - f)) largest vectors clipped to the (k+1)-th largest norm.'
    )
    mix: ClassVar = staticmethod(arc_mix)
    reads: ClassVar[str] = "norms"
    diagonal: ClassVar[bool] = True
