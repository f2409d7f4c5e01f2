"""Plain average: not robust, the baseline every robust rule is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators.base import Aggregator, check_matrix


def mean(x: Tensor, *, f: int = 0) -> Tensor:
    """mean(x) = (1/n) sum_i x_i. Not robust: one Byzantine input moves it arbitrarily.

    Non-finite inputs propagate (NaN in, NaN out). `f` is accepted for a uniform
    signature and ignored.
    """
    check_matrix(x, "mean")
    return torch.mean(x, dim=0)  # (d,)


@dataclass(kw_only=True)
class Mean(Aggregator):
    """Config of `mean`."""

    _target_: str = "byzctl.aggregators.mean.Mean"
    name: str = "mean"

    fn: ClassVar = staticmethod(mean)
    paper = (
        '(baseline) the plain average of distributed SGD; not robust'
    )
    convention = (
        'Arithmetic mean of all n inputs.'
    )
    averages: ClassVar[bool] = True
