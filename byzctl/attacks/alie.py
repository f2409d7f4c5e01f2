"""A little is enough (ALIE): shift the honest mean by z standard deviations, coordinate-wise.

Sign convention: byzctl sends mean - z * std with z >= 0 from the paper's formula (the
Byzantine vector sits z deviations below the honest mean on every coordinate). ByzFL
(LPD-EPFL/byzfl `ALittleIsEnough`) writes mean + tau * std; `tau` spells that form, and
tau = -z gives the same vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.attacks.base import Attack, check_honest
from byzctl.errors import ConfigError, RuleError


def alie_z(n: int, f: int) -> float:
    """The paper's z: s = floor(n/2 + 1) - f, z = Phi^{-1}((n - s) / n).

    s is how many honest inputs the Byzantine vectors must look closer than ("supporters");
    z is the largest shift that keeps them inside the honest spread for that many.

    Raises:
        RuleError: unless 0 < s < n (s <= 0 means f is a majority of n).
    """
    if n < 1 or f < 0:
        raise RuleError(f"alie: needs n >= 1 and f >= 0. Got n={n}, f={f}")
    s = n // 2 + 1 - f  # floor(n/2 + 1) - f for integer n
    if not 0 < s < n:
        raise RuleError(
            f"alie: the paper's z needs 0 < s < n with s = floor(n/2 + 1) - f. "
            f"Got n={n}, f={f}, s={s}; set z explicitly"
        )
    return NormalDist().inv_cdf((n - s) / n)


def alie(
    honest: Tensor, *, f: int, n: int | None = None, z: float | None = None, tau: float | None = None
) -> Tensor:
    """alie(H) = mean(H) - z * std(H) coordinate-wise, repeated f times; z from `alie_z(n, f)`
    unless given, or z = -tau when `tau` (ByzFL's mean + tau * std) is given. Baruch, Baruch,
    Goldberg, "A little is enough: circumventing defenses for distributed learning", NeurIPS 2019.

    std is the sample standard deviation (correction 1), so at least 2 honest vectors are needed.

    Args:
        n: inputs the aggregator sees (honest + Byzantine); None means h + f.
        z: the shift in standard deviations, subtracted; None computes the paper's z from n and f.
        tau: the shift added (mean + tau * std), ByzFL's spelling; exclusive with z.

    Raises:
        RuleError: if h < 2, f < 0, z or tau is not finite, both are given, or neither is
            and the paper's z is undefined for (n, f).
    """
    h, _ = check_honest(honest, f, "alie", min_h=2)
    n = h + f if n is None else n
    if tau is not None:
        if z is not None:
            raise RuleError(f"alie: give z (mean - z std) or tau (mean + tau std), not both. Got z={z}, tau={tau}")
        if not math.isfinite(tau):
            raise RuleError(f"alie: tau must be finite. Got tau={tau}")
        z = -tau
    if z is None:
        z = alie_z(n, f) if f > 0 else 0.0
    elif not math.isfinite(z):
        raise RuleError(f"alie: z must be finite. Got z={z}")
    return alie_vector(honest, z).unsqueeze(0).expand(f, -1).clone()  # (f, d)


def alie_vector(honest: Tensor, z: float) -> Tensor:
    """mean(H) - z * std(H): the one vector every ALIE node sends, (h, d) -> (d,)."""
    std, mean = torch.std_mean(honest, dim=0, correction=1)  # (d,), (d,)
    return mean - z * std  # (d,)


@dataclass(kw_only=True)
class Alie(Attack):
    """Config of `attack=alie`."""

    _target_: str = "byzctl.attacks.alie.Alie"
    name: str = "alie"
    z: float | None = None
    """Shift in standard deviations, subtracted (mean - z std); null computes the paper's z
    from n and f (z > 0 for f < n/2)."""
    tau: float | None = None
    """ByzFL's spelling, added (mean + tau std): tau = -z. Set z or tau, not both."""

    fn: ClassVar = staticmethod(alie)
    uses_context: ClassVar[tuple[str, ...]] = ("n",)
    paper = (
        "Baruch, Baruch, Goldberg, 'A little is enough: circumventing defenses for distributed "
        "learning', NeurIPS 2019"
    )
    convention = (
        "Sends mean - z * std (sample std, correction 1) per coordinate, z = Phi^-1((n - s)/n), "
        "s = floor(n/2 + 1) - f (the paper's z, >= 0). ByzFL's form mean + tau * std is attack.tau (tau = -z)."
    )

    def __post_init__(self) -> None:
        if self.z is not None and not math.isfinite(self.z):
            raise ConfigError(f"attack.z must be finite (or null for the paper's z). Got z={self.z}")
        if self.tau is not None and not math.isfinite(self.tau):
            raise ConfigError(f"attack.tau must be finite (or null). Got tau={self.tau}")
        if self.z is not None and self.tau is not None:
            raise ConfigError(f"attack.z and attack.tau are two spellings of one shift (tau = -z): set one. Got z={self.z}, tau={self.tau}")
