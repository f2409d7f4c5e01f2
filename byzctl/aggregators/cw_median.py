"""Coordinate-wise median (Yin et al., ICML 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from byzctl.aggregators import _select
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import check_f


def cw_median(x: Tensor, *, f: int = 0) -> Tensor:
    """median_j = median_i x_ij for every coordinate j (the mean of the two middle
    values when n is even). Yin et al., "Byzantine-robust distributed learning", ICML 2018.

    NaN counts as +inf, so up to f non-finite rows per coordinate leave the result
    finite; beyond that the result there may be +-inf or NaN. Keeps x's dtype and
    device (CPU: a numba kernel; CUDA: a Triton kernel for n <= 64; see `_select`).

    Raises:
        RuleError: unless n > 2f, or if x is not a floating-point (n, d) tensor.
    """
    n, _ = check_matrix(x, "cw_median")
    check_f(n, f, need=2 * f + 1, rule="cw_median", formula="n > 2f")
    _select.check_float(x, "cw_median")
    if (out := _select.kernel_columns(x, rule="median", f=f)) is not None:
        return out  # (d,) compiled kernel

    def post(s: Tensor, blk: _select.Blocks, out: Tensor) -> None:
        out.copy_(_select.median_of(s, n, blk))

    return _select.by_columns(x, post, boundaries=[_select.median_boundary(n)], reads=((n - 1) // 2, n // 2 + 1))  # (d,)


@dataclass(kw_only=True)
class CwMedian(Aggregator):
    """Config of `cw_median`."""

    _target_: str = "byzctl.aggregators.cw_median.CwMedian"
    name: str = "cw_median"

    fn: ClassVar = staticmethod(cw_median)
    paper = (
        "Yin, Chen, Ramchandran, Bartlett, 'Byzantine-robust distributed learning: towards optimal "
        "statistical rates', ICML 2018"
    )
    convention = (
        'Even n: the mean of the two middle values per coordinate (as numpy/ByzFL, unlike '
        "torch.median's lower median)."
    )
    compiled: ClassVar[bool] = True
