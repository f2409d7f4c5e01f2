"""Mimic: every Byzantine node copies one honest vector, over-weighting that worker's data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.attacks.base import Attack, check_honest
from byzctl.errors import ConfigError, RuleError


def mimic_target(honest: Tensor) -> int:
    """i* = argmax_i |<z, x_i - mean(H)>|, z the top principal direction of the honest vectors.

    The variance along z of H plus f copies of x_i grows with |<z, x_i - mean(H)>|, so i*
    is the honest worker whose copies stretch the honest spread most. With C = H - mean(H)
    and u the top eigenvector of the Gram matrix C C^T (h, h), the projections C z equal
    sqrt(lambda_max) * u, so i* = argmax_i |u_i|: no (d, d) matrix and no power iteration
    over d are needed. The small eigen-decomposition runs in float64; ties go to the lowest
    index, and H without spread (or with non-finite values) gives i* = 0.
    """
    centered = honest - honest.mean(dim=0, keepdim=True)  # (h, d)
    gram = (centered @ centered.T).to(torch.float64)  # (h, h)
    if not bool(torch.isfinite(gram).all()):  # eigh may fail to converge on NaN/inf
        return 0
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    if not bool(eigenvalues[-1] > 0):  # no spread: every choice is alike
        return 0
    return int(torch.argmax(eigenvectors[:, -1].abs()))


def mimic(honest: Tensor, *, f: int, target: int | None = None) -> Tensor:
    """mimic(H) = x_{i*} repeated f times, i* = argmax_i |<z, x_i - mean(H)>| with z the top
    principal direction of H (see `mimic_target`), unless `target` pins it.
    Karimireddy, He, Jaggi, "Byzantine-robust learning on heterogeneous datasets via
    bucketing", ICLR 2022.

    The paper estimates z over warm-up rounds; this function recomputes it on the current H,
    exactly, so it holds no state between rounds.

    Raises:
        RuleError: if h < 1, f < 0, or target is outside [0, h).
    """
    h, _ = check_honest(honest, f, "mimic")
    if target is None:
        target = mimic_target(honest)
    elif not 0 <= target < h:
        raise RuleError(f"mimic: target must be in [0, h). Got target={target}, h={h}")
    return honest[target].unsqueeze(0).expand(f, -1).clone()  # (f, d)


@dataclass(kw_only=True)
class Mimic(Attack):
    """Config of `attack=mimic`."""

    _target_: str = "byzctl.attacks.mimic.Mimic"
    name: str = "mimic"
    target: int | None = None
    """Index among the honest vectors to copy; null picks the paper's maximal-variance one."""

    fn: ClassVar = staticmethod(mimic)
    paper = (
        "Karimireddy, He, Jaggi, 'Byzantine-robust learning on heterogeneous datasets via "
        "bucketing', ICLR 2022"
    )
    convention = (
        'Copies the honest vector with the largest |projection| on the top principal direction of H'
        " (the paper's heuristic, computed on this round's vectors); attack.target pins one worker "
        'instead.'
    )

    def __post_init__(self) -> None:
        if self.target is not None and self.target < 0:
            raise ConfigError(f"attack.target must be >= 0 or null. Got target={self.target}")
