"""Gaussian noise: each Byzantine node sends an independent draw of N(0, sigma^2 I)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.attacks.base import Attack, Knowledge, check_honest
from byzctl.errors import ConfigError, RuleError


def gaussian(
    honest: Tensor, *, f: int, sigma: float = 200.0, generator: torch.Generator | None = None
) -> Tensor:
    """gaussian(H)_k ~ N(0, sigma^2 I) independently for each of the f Byzantine nodes
    (Blanchard et al., NeurIPS 2017, and Xie et al., 2018, with sigma = 200).

    The zero-mean form of those papers: the honest vectors give only d, dtype and device.
    Noise is drawn on the generator's device and then moved to the honest vectors', so a
    CPU generator gives the same vectors whether `honest` lives on CPU or CUDA.

    Raises:
        RuleError: if f < 0, sigma < 0 or not finite, `honest` is not a floating (h, d) tensor, or no
            generator is given (the attack draws only from an explicit, seeded generator).
    """
    _, d = check_honest(honest, f, "gaussian", min_h=0)
    if not 0 <= sigma < math.inf:
        raise RuleError(f"gaussian: sigma must be >= 0 and finite. Got sigma={sigma}")
    if generator is None:
        raise RuleError(
            "gaussian draws only from an explicit generator; pass generator=torch.Generator().manual_seed(seed)"
        )
    noise = torch.randn(
        (f, d), generator=generator, device=generator.device, dtype=honest.dtype
    )  # (f, d)
    return (sigma * noise).to(honest.device)  # (f, d)


@dataclass(kw_only=True)
class Gaussian(Attack):
    """Config of `attack=gaussian`."""

    _target_: str = "byzctl.attacks.gaussian.Gaussian"
    name: str = "gaussian"
    knowledge: Knowledge = Knowledge.local
    sigma: float = 200.0
    """Standard deviation of every coordinate of the noise (200 in Blanchard et al. 2017)."""

    fn: ClassVar = staticmethod(gaussian)
    paper = (
        "Blanchard et al., NeurIPS 2017; Xie, Koyejo, Gupta, 'Generalized Byzantine-tolerant SGD', "
        '2018'
    )
    convention = (
        "Each Byzantine node draws its own N(0, sigma^2 I) from the run's seeded generator, sigma ="
        ' 200 by default.'
    )
    uses_context: ClassVar[tuple[str, ...]] = ("generator",)

    def __post_init__(self) -> None:
        if not 0 <= self.sigma < math.inf:
            raise ConfigError(f"attack.sigma must be >= 0 and finite. Got sigma={self.sigma}")
