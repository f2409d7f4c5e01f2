"""What minmax and minsum share: the perturbation direction and the search for gamma.

Shejwalkar & Houmansadr, "Manipulating the Byzantine: optimizing model poisoning attacks
and defenses for federated learning", NDSS 2021 (their AGR-agnostic attacks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import torch
from torch import Tensor

from byzctl.attacks.base import Attack, check_honest
from byzctl.errors import ConfigError, RuleError


class Direction(str, Enum):
    """The perturbation p added to the honest mean, scaled by gamma."""

    unit_vec = "unit_vec"
    """-mean(H) / ||mean(H)||: against the honest direction, unit length."""
    std = "std"
    """-std(H), coordinate-wise: move most where honest vectors disagree most."""
    sign = "sign"
    """-sign(mean(H)): every coordinate by the same amount, against the honest sign."""


_EXPAND_LIMIT = 200
_BISECT_LIMIT = 200


def check_gamma_search(
    gamma_init: float, tol: float, *, prefix: str, error: type[Exception] = RuleError
) -> None:
    """Reject a search start or tolerance that cannot work, naming the values."""
    if not (math.isfinite(gamma_init) and gamma_init > 0):
        raise error(f"{prefix}gamma_init must be finite and > 0. Got gamma_init={gamma_init}")
    if not 0 < tol < 1:
        raise error(f"{prefix}tol must be in (0, 1). Got tol={tol}")


def perturbation(honest: Tensor, direction: Direction | str, *, attack: str) -> Tensor:
    """p for `direction`, (h, d) -> (d,); zero where the direction is undefined (mean = 0)."""
    mean = honest.mean(dim=0)  # (d,)
    if direction == Direction.unit_vec:
        norm = torch.linalg.vector_norm(mean).clamp_min(torch.finfo(mean.dtype).tiny)
        return -mean / norm
    if direction == Direction.std:
        return -honest.std(dim=0, correction=1)
    if direction == Direction.sign:
        return -torch.sign(mean)
    choices = [k.value for k in Direction]
    raise RuleError(f"{attack}: direction must be one of {choices}. Got direction={direction!r}")


def agr_agnostic(
    honest: Tensor,
    *,
    f: int,
    direction: Direction | str,
    gamma_init: float,
    tol: float,
    reduce: Literal["max", "sum"],
    attack: str,
) -> Tensor:
    """mean(H) + gamma* p repeated f times, gamma* the largest gamma with
    reduce_i ||mean + gamma p - x_i||^2 <= max_i reduce_j ||x_i - x_j||^2.

    Distances come from one Gram matrix of the centred honest vectors: with c_i = x_i - mean,
    ||x_i - x_j||^2 = |c_i|^2 + |c_j|^2 - 2 <c_i, c_j> and
    ||mean + gamma p - x_i||^2 = gamma^2 |p|^2 - 2 gamma <p, c_i> + |c_i|^2, so each test of a
    gamma costs O(h) on (h,) float64 numbers held on the CPU. gamma = 0 always satisfies the
    constraint (the mean is no farther from the x_i than they are from each other). As in the
    paper's binary search, gamma starts at gamma_init; it doubles until the constraint breaks,
    then bisection stops when the bracket is narrower than tol * gamma. The constraint is
    tested in float64; the returned vector, in the input dtype, may exceed it by that dtype's
    rounding.
    """
    h, d = check_honest(honest, f, attack, min_h=2)
    check_gamma_search(gamma_init, tol, prefix=f"{attack}: ")
    p = perturbation(honest, direction, attack=attack)  # (d,)
    mean = honest.mean(dim=0)  # (d,)
    centered = honest - mean  # (h, d)
    gram = centered @ centered.T  # (h, h)
    sq = gram.diagonal()  # (h,) |c_i|^2
    dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0)  # (h, h) squared distances
    threshold = dist.max() if reduce == "max" else dist.sum(dim=1).max()
    scalars = torch.cat([sq, centered @ p, (p @ p).reshape(1), threshold.reshape(1)])
    scalars = scalars.to("cpu", torch.float64)  # one transfer; the search runs on (h,) numbers
    sq64, pc64, pp, limit = (
        scalars[:h],
        scalars[h : 2 * h],
        float(scalars[2 * h]),
        float(scalars[2 * h + 1]),
    )

    def feasible(gamma: float) -> bool:
        to_honest = sq64 - 2 * gamma * pc64 + gamma * gamma * pp  # (h,) ||mean + gamma p - x_i||^2
        value = to_honest.max() if reduce == "max" else to_honest.sum()
        return bool(value <= limit)  # False on NaN: non-finite input gives gamma = 0

    gamma = 0.0
    if pp > 0 and math.isfinite(pp):
        lo, hi = 0.0, gamma_init
        for _ in range(_EXPAND_LIMIT):
            if not feasible(hi):
                break
            lo, hi = hi, 2 * hi
        for _ in range(_BISECT_LIMIT):
            if hi - lo <= tol * hi:
                break
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
        gamma = lo
    return (mean + gamma * p).unsqueeze(0).expand(f, -1).clone()  # (f, d)


def check_config(direction: Direction | str, gamma_init: float, tol: float) -> None:
    """The static checks of a minmax/minsum config, as ConfigError."""
    if direction not in {k.value for k in Direction}:
        raise ConfigError(
            f"attack.direction must be one of {[k.value for k in Direction]}. Got direction={direction!r}"
        )
    check_gamma_search(gamma_init, tol, prefix="attack.", error=ConfigError)


@dataclass(kw_only=True)
class AgrAgnostic(Attack):
    """Base config of the AGR-agnostic attacks (minmax, minsum)."""

    paper = (
        "Shejwalkar, Houmansadr, 'Manipulating the Byzantine: optimizing model poisoning attacks "
        "and defenses for federated learning', NDSS 2021"
    )
    convention = (
        'Perturbation direction p = -std(H) by default (attack.direction), gamma found by halving '
        'search from gamma_init to tol.'
    )

    direction: Direction = Direction.std
    """Perturbation p: unit_vec (-mean/||mean||), std (-std) or sign (-sign(mean))."""
    gamma_init: float = 10.0
    """First gamma tried; the search doubles it until the distance bound breaks, then bisects."""
    tol: float = 1e-5
    """Relative precision of gamma at which the search stops."""

    def __post_init__(self) -> None:
        check_config(self.direction, self.gamma_init, self.tol)
