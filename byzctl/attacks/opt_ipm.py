"""Optimized IPM: the IPM direction, with epsilon tuned against this run's aggregator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.attacks._line_search import (
    LineSearch,
    check_search,
    deviation_objective,
    maximize,
    repeat_line_point,
)
from byzctl.attacks.base import check_honest
from byzctl.errors import ConfigError, RuleError

IPM_DEFAULT_EPSILON = 0.1
"""Plain `ipm`'s default scale, always among the candidates."""


def opt_ipm(
    honest: Tensor,
    *,
    f: int,
    n: int | None = None,
    aggregate: Callable[[Tensor], Tensor] | None = None,
    low: float = 0.0,
    high: float = 10.0,
    grid: int = 11,
    steps: int = 16,
) -> Tensor:
    """opt_ipm(H) = -eps* mean(H), repeated f times, with
    eps* = argmax_{eps in [low, high]} || aggregate([H; f copies]) - mean(H) ||
    (IPM of Xie et al., UAI 2020, with its scale line-searched like the optimized attacks
    of Allouah et al., e.g. "Fixing by mixing", AISTATS 2023).

    The search (see `_line_search.maximize`) is an 11-point grid on [0, 10] then 16
    golden-section iterations around the best cell; epsilon = 0.1 (plain `ipm`'s default) is
    also tried, so the result never deviates less than plain `ipm`. Costs grid + steps + 3
    calls of `aggregate` on (h + f, d).

    Args:
        n: accepted for a signature shared with opt_alie; unused.
        aggregate: this run's pre-aggregators + aggregator, (h + f, d) -> (d,).

    Raises:
        RuleError: if aggregate is None, h < 1, f < 0, low < 0, or the interval is invalid.
    """
    check_honest(honest, f, "opt_ipm")
    if aggregate is None:
        raise RuleError(
            "opt_ipm needs the aggregator (ctx.aggregate) to tune epsilon against. Got aggregate=None"
        )
    check_search(low, high, grid, steps)
    if low < 0:
        raise RuleError(f"opt_ipm: epsilon must be >= 0, so low >= 0. Got low={low}")
    if f == 0:
        return honest.new_empty((0, honest.shape[1]))  # (0, d)
    mean = honest.mean(dim=0)  # (d,)
    objective = deviation_objective(honest, f, aggregate, torch.zeros_like(mean), -mean, "opt_ipm")
    eps = maximize(objective, low, high, grid=grid, steps=steps, extra=[IPM_DEFAULT_EPSILON])
    return repeat_line_point(torch.zeros_like(mean), -mean, eps, f)  # (f, d)


@dataclass(kw_only=True)
class OptIpm(LineSearch):
    """Config of `attack=opt_ipm`."""

    _target_: str = "byzctl.attacks.opt_ipm.OptIpm"
    name: str = "opt_ipm"

    fn: ClassVar = staticmethod(opt_ipm)
    paper = (
        "Xie, Koyejo, Gupta, UAI 2020 (IPM), scale optimized as in Allouah et al., 'Fixing by "
        "mixing', AISTATS 2023"
    )
    convention = (
        'Sends -eps mean(H) with eps line-searched in [low, high] to maximize ||aggregate - '
        'mean(H)||.'
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low < 0:
            raise ConfigError(f"attack.low must be >= 0 for opt_ipm. Got low={self.low}")
