"""Coordinate-wise trimmed mean (Yin et al., ICML 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators import _select
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import check_f


def cw_trimmed_mean(x: Tensor, *, f: int = 0) -> Tensor:
    """tm_j = mean of x_ij over i after dropping the f largest and f smallest values
    of coordinate j. Yin et al., "Byzantine-robust distributed learning", ICML 2018.

    NaN counts as +inf, so up to f non-finite rows per coordinate are trimmed and the
    result stays finite; f = 0 is the plain mean (NaN in, NaN out). Keeps x's dtype
    and device (CPU: a numba kernel; CUDA: a Triton kernel for n <= 64; see `_select`).

    Raises:
        RuleError: unless n > 2f, or if x is not a floating-point (n, d) tensor.
    """
    n, _ = check_matrix(x, "cw_trimmed_mean")
    check_f(n, f, need=2 * f + 1, rule="cw_trimmed_mean", formula="n > 2f")
    _select.check_float(x, "cw_trimmed_mean")
    if f == 0:
        return torch.mean(x, dim=0)  # (d,)
    if (out := _select.kernel_columns(x, rule="trimmed_mean", f=f)) is not None:
        return out  # (d,) compiled kernel

    def post(s: Tensor, blk: _select.Blocks, out: Tensor) -> None:
        torch.sum(s[blk.at(f) : blk.at(n - f)], dim=0, out=out)  # ranks [f, n - f) as a set
        out.div_(n - 2 * f)

    return _select.by_columns(x, post, boundaries=[f, n - f], reads=(f, n - f))  # (d,)


@dataclass(kw_only=True)
class CwTrimmedMean(Aggregator):
    """Config of `cw_trimmed_mean`."""

    _target_: str = "byzctl.aggregators.cw_trimmed_mean.CwTrimmedMean"
    name: str = "cw_trimmed_mean"

    fn: ClassVar = staticmethod(cw_trimmed_mean)
    paper = (
        "Yin, Chen, Ramchandran, Bartlett, 'Byzantine-robust distributed learning: towards optimal "
        "statistical rates', ICML 2018"
    )
    convention = (
        'Drops the f largest and f smallest values per coordinate (f = nodes.byzantine unless '
        "aggregator.f), as ByzFL's TrMean; the paper states it with a fraction beta; n > 2f."
    )
    compiled: ClassVar[bool] = True
