"""Optimized ALIE: the ALIE direction, with z tuned against this run's aggregator."""

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
from byzctl.attacks.alie import alie_z
from byzctl.attacks.base import check_honest
from byzctl.errors import RuleError


def opt_alie(
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
    """opt_alie(H) = mean(H) - z* std(H), repeated f times, with
    z* = argmax_{z in [low, high]} || aggregate([H; f copies]) - mean(H) ||
    (ALIE of Baruch et al., NeurIPS 2019, with its scale line-searched like the optimized attacks
    of Allouah et al., e.g. "Fixing by mixing", AISTATS 2023).

    The search (see `_line_search.maximize`) is an 11-point grid on [0, 10] then 16
    golden-section iterations around the best cell; the paper's z for (n, f) is also tried,
    so the result never deviates less than plain `alie`. Costs grid + steps + 3 calls of
    `aggregate` on (h + f, d).

    Args:
        n: inputs the aggregator sees, for the paper's z candidate; None means h + f.
        aggregate: this run's pre-aggregators + aggregator, (h + f, d) -> (d,).

    Raises:
        RuleError: if aggregate is None, h < 2, f < 0, or the search interval is invalid.
    """
    h, _ = check_honest(honest, f, "opt_alie", min_h=2)
    if aggregate is None:
        raise RuleError(
            "opt_alie needs the aggregator (ctx.aggregate) to tune z against. Got aggregate=None"
        )
    check_search(low, high, grid, steps)
    if f == 0:
        return honest.new_empty((0, honest.shape[1]))  # (0, d)
    n = h + f if n is None else n
    try:
        extra = [alie_z(n, f)]
    except RuleError:  # the paper's z is undefined for this (n, f): search the interval only
        extra = []
    std, mean = torch.std_mean(honest, dim=0, correction=1)  # (d,), (d,)
    objective = deviation_objective(honest, f, aggregate, mean, -std, "opt_alie")
    z = maximize(objective, low, high, grid=grid, steps=steps, extra=extra)
    return repeat_line_point(mean, -std, z, f)  # (f, d)


@dataclass(kw_only=True)
class OptAlie(LineSearch):
    """Config of `attack=opt_alie`."""

    _target_: str = "byzctl.attacks.opt_alie.OptAlie"
    name: str = "opt_alie"

    fn: ClassVar = staticmethod(opt_alie)
    paper = (
        'Baruch, Baruch, Goldberg, NeurIPS 2019 (ALIE), scale optimized as in Allouah et al., '
        "'Fixing by mixing', AISTATS 2023"
    )
    convention = (
        'Sends mean - z std (the sign of attack=alie) with z line-searched in [low, high] to '
        'maximize ||aggregate - mean(H)||.'
    )
