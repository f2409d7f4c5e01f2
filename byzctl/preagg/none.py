"""The explicit no-op pre-aggregator (`preagg=none`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators.base import check_matrix
from byzctl.preagg.base import Preagg


def none(x: Tensor, *, f: int = 0) -> Tensor:
    """none(x) = x, returned as a new tensor so callers may not alias the input."""
    check_matrix(x, "none")
    return x.clone()


def none_mix(g: Tensor, *, f: int = 0) -> Tensor:
    """The identity W (n, n): none(x) == W @ x."""
    return torch.eye(g.shape[0], dtype=torch.float64)


@dataclass(kw_only=True)
class Identity(Preagg):
    """Config of `preagg=none`."""

    _target_: str = "byzctl.preagg.none.Identity"
    name: str = "none"

    fn: ClassVar = staticmethod(none)
    paper = (
        '(no-op)'
    )
    convention = (
        'Returns a copy of the inputs.'
    )
    mix: ClassVar = staticmethod(none_mix)
    reads: ClassVar[str] = "none"
    diagonal: ClassVar[bool] = True
