"""MinSum (AGR-agnostic): push the honest mean as far as possible along p while staying
no farther in total from the honest vectors than the most outlying honest vector is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from byzctl.attacks._agr_agnostic import AgrAgnostic, Direction, agr_agnostic


def minsum(
    honest: Tensor,
    *,
    f: int,
    direction: Direction | str = Direction.std,
    gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> Tensor:
    """minsum(H) = m = mean(H) + gamma* p repeated f times, gamma* the largest gamma with
    sum_i ||m - x_i||^2 <= max_i sum_j ||x_i - x_j||^2. Shejwalkar & Houmansadr, "Manipulating the Byzantine", NDSS 2021.

    Args:
        direction: p = -mean/||mean|| ("unit_vec"), -std ("std", sample std) or -sign(mean) ("sign").
        gamma_init: first gamma tried by the search (doubled until infeasible, then bisected).
        tol: the search stops when gamma is known to relative precision tol.

    Raises:
        RuleError: if h < 2, f < 0, direction is unknown, gamma_init <= 0, or tol not in (0, 1).
    """
    return agr_agnostic(
        honest,
        f=f,
        direction=direction,
        gamma_init=gamma_init,
        tol=tol,
        reduce="sum",
        attack="minsum",
    )  # (f, d)


@dataclass(kw_only=True)
class MinSum(AgrAgnostic):
    """Config of `attack=minsum`."""

    _target_: str = "byzctl.attacks.minsum.MinSum"
    name: str = "minsum"

    fn: ClassVar = staticmethod(minsum)
