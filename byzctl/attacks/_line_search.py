"""The bounded, deterministic line search shared by the adaptive attacks (opt_alie, opt_ipm)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.attacks.base import Attack
from byzctl.errors import ConfigError, RuleError

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 1/golden ratio


def check_search(
    low: float, high: float, grid: int, steps: int, *, error: type[Exception] = RuleError
) -> None:
    """Reject a search interval or budget that cannot work, naming the values."""
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise error(f"line search needs finite low <= high. Got low={low}, high={high}")
    if grid < 2:
        raise error(f"line search needs grid >= 2 points. Got grid={grid}")
    if steps < 0:
        raise error(f"line search needs steps >= 0. Got steps={steps}")


def maximize(
    objective: Callable[[float], float],
    low: float,
    high: float,
    *,
    grid: int,
    steps: int,
    extra: Iterable[float] = (),
) -> float:
    """argmax of `objective` over [low, high] (plus the `extra` candidates), deterministically.

    A grid of `grid` equally spaced points (ends included) finds the best cell; golden-section
    search then runs `steps` iterations (steps + 2 evaluations) inside the bracket formed by
    the best grid point's two neighbours, shrinking it by 0.618 per iteration. The best point
    ever evaluated is returned (the first one on ties), so the result is never worse than any
    grid point or `extra` candidate even when the objective is not unimodal. NaN objectives
    count as -inf.
    """
    best_x, best_y = low, -math.inf
    seen = False

    def evaluate(x: float) -> float:
        nonlocal best_x, best_y, seen
        y = objective(x)
        y = -math.inf if math.isnan(y) else y
        if not seen or y > best_y:
            best_x, best_y, seen = x, y, True
        return y

    points = [low + (high - low) * k / (grid - 1) for k in range(grid)]
    values = [evaluate(x) for x in points]
    k = max(range(grid), key=lambda i: (values[i], -i))  # first best grid point
    for x in extra:
        evaluate(x)
    if steps == 0:
        return best_x
    a, b = points[max(k - 1, 0)], points[min(k + 1, grid - 1)]
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fd = evaluate(c), evaluate(d)
    for _ in range(steps):
        if fc >= fd:  # the maximum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = evaluate(c)
        else:  # the maximum lies in [c, b]
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = evaluate(d)
    return best_x


def deviation_objective(
    honest: Tensor,
    f: int,
    aggregate: Callable[[Tensor], Tensor],
    base: Tensor,
    direction: Tensor,
    attack: str,
) -> Callable[[float], float]:
    """scale -> || aggregate([H; f copies of base + scale * direction]) - mean(H) ||.

    The stacked (h + f, d) input is allocated once and only its Byzantine rows are rewritten
    per evaluation, so `aggregate` must not mutate its input (no byzctl rule does).
    """
    h, d = honest.shape
    mean = honest.mean(dim=0)  # (d,)
    stacked = torch.empty((h + f, d), dtype=honest.dtype, device=honest.device)  # (h + f, d)
    stacked[:h] = honest
    row = torch.empty_like(base)  # (d,)

    def objective(scale: float) -> float:
        torch.add(base, direction, alpha=scale, out=row)
        stacked[h:] = row  # (f, d), broadcast
        out = aggregate(stacked)  # (d,)
        if tuple(out.shape) != (d,):
            raise RuleError(
                f"{attack}: aggregate must map (n, d) to (d,). Got shape {tuple(out.shape)} for n={h + f}, d={d}"
            )
        return float(torch.linalg.vector_norm(out - mean))

    return objective


def repeat_line_point(base: Tensor, direction: Tensor, scale: float, f: int) -> Tensor:
    """f copies of base + scale * direction, computed exactly as the objective did: (d,) -> (f, d)."""
    return torch.add(base, direction, alpha=scale).unsqueeze(0).expand(f, -1).clone()


@dataclass(kw_only=True)
class LineSearch(Attack):
    """Base config of the attacks whose scale is line-searched against this run's
    aggregator (opt_alie: z, opt_ipm: epsilon)."""

    low: float = 0.0
    """Smallest scale searched."""
    high: float = 10.0
    """Largest scale searched (the search is bounded: against the plain mean it ends here)."""
    grid: int = 11
    """Equally spaced scales tried first, ends included."""
    steps: int = 16
    """Golden-section iterations refining around the best grid value (0: grid only)."""

    uses_context: ClassVar[tuple[str, ...]] = ("n", "aggregate")

    def __post_init__(self) -> None:
        check_search(self.low, self.high, self.grid, self.steps, error=ConfigError)
