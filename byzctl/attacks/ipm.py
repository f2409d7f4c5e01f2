"""Inner-product manipulation (IPM): send a small negative multiple of the honest mean."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from byzctl.attacks.base import Attack, check_honest
from byzctl.errors import ConfigError, RuleError


def ipm(honest: Tensor, *, f: int, epsilon: float = 0.1) -> Tensor:
    """ipm(H) = -epsilon * mean(H), repeated f times, so that the aggregate's inner product
    with the true gradient turns negative. Xie, Koyejo, Gupta, "Fall of empires", UAI 2020.

    Raises:
        RuleError: if h < 1, f < 0, or epsilon is negative or not finite.
    """
    check_honest(honest, f, "ipm")
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise RuleError(f"ipm: epsilon must be finite and >= 0. Got epsilon={epsilon}")
    return ipm_vector(honest, epsilon).unsqueeze(0).expand(f, -1).clone()  # (f, d)


def ipm_vector(honest: Tensor, epsilon: float) -> Tensor:
    """-epsilon * mean(H): the one vector every IPM node sends, (h, d) -> (d,)."""
    return -epsilon * honest.mean(dim=0)  # (d,)


@dataclass(kw_only=True)
class Ipm(Attack):
    """Config of `attack=ipm`."""

    _target_: str = "byzctl.attacks.ipm.Ipm"
    name: str = "ipm"
    epsilon: float = 0.1
    """Scale of the reversed honest mean (0.1 and 100 in the paper)."""

    fn: ClassVar = staticmethod(ipm)
    paper = (
        "Xie, Koyejo, Gupta, 'Fall of empires: breaking Byzantine-tolerant SGD by inner product "
        "manipulation', UAI 2020"
    )
    convention = (
        "Sends -epsilon * mean(H) with epsilon > 0 (0.1 by default, the paper's small-epsilon "
        'case); ByzFL calls the same scale tau.'
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ConfigError(f"attack.epsilon must be finite and >= 0. Got epsilon={self.epsilon}")
