"""Norm clipping, static or adaptive (e.g. Karimireddy, He, Jaggi, ICML 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, empty_rows
from byzctl.aggregators.base import check_matrix
from byzctl.errors import ConfigError, RuleError, check_f
from byzctl.preagg.base import Preagg


def clipping(x: Tensor, *, f: int = 0, threshold: float | None = None) -> Tensor:
    """clipping(x)_i = x_i min(1, c / ||x_i||): (n, d) -> (n, d), with c = threshold, or
    when threshold is None the median norm (the lower median of the n norms, which
    at most f < n/2 huge Byzantine rows cannot move beyond the honest norms). Static
    clipping as used with robust rules in e.g. Karimireddy, He, Jaggi, "Learning from
    history for Byzantine robust optimization", ICML 2021.

    Non-finite rows (NaN, Inf, or a norm that overflows) have no direction to clip
    along and become zero vectors, so the output is always finite.

    Raises:
        RuleError: unless threshold is None or >= 0; for threshold None, unless n > 2f.
    """
    n, _ = check_matrix(x, "clipping")
    check_float(x, "clipping")
    _check_limits(n, f, threshold)
    norms = torch.linalg.vector_norm(x, dim=1)  # (n,)
    return scale_rows(x, norms, _median_norm(norms) if threshold is None else threshold)


def clipping_mix(g: Tensor, *, f: int = 0, threshold: float | None = None) -> Tensor:
    """The diagonal W (n, n) with clipping(x) == W @ x, from g = x @ x.T (every row finite)."""
    _check_limits(g.shape[0], f, threshold)
    norms = g.diagonal().clamp_min(0).sqrt()  # (n,)
    return torch.diag(scale_factors(norms, _median_norm(norms) if threshold is None else threshold))


def _check_limits(n: int, f: int, threshold: float | None) -> None:
    _check_params(threshold, error=RuleError)
    if threshold is None:
        check_f(n, f, need=2 * f + 1, rule="clipping", formula="n > 2f for the adaptive threshold")
    else:
        check_f(n, f, need=1, rule="clipping", formula="n >= 1")


def scale_rows(x: Tensor, norms: Tensor, c: float | Tensor) -> Tensor:
    """x_i min(1, c / ||x_i||) for every row, zero for rows with a non-finite norm."""
    ok = torch.isfinite(norms)  # (n,)
    factor = scale_factors(norms, c)  # (n,)
    out = torch.mul(x, factor[:, None].to(x.dtype), out=empty_rows(x.shape[0], x))  # (n, d)
    if not bool(ok.all()):
        out[~ok] = 0.0  # 0 * Inf is NaN
    return out


def scale_factors(norms: Tensor, c: float | Tensor) -> Tensor:
    """min(1, c / ||x_i||) per row (n,), 0 where the norm is not finite."""
    factor = torch.where(norms > c, c / norms, torch.ones_like(norms))
    return torch.where(torch.isfinite(norms), factor, torch.zeros_like(norms))


def _median_norm(norms: Tensor) -> Tensor:
    """Lower median of the norms, non-finite ones counted as +inf."""
    ranked = torch.where(torch.isfinite(norms), norms, float("inf"))
    return torch.sort(ranked).values[(norms.numel() - 1) // 2]


def _check_params(threshold: float | None, *, error: type[Exception]) -> None:
    if threshold is not None and not (threshold >= 0 and not math.isnan(threshold)):
        raise error(f"clipping needs threshold >= 0 or null. Got threshold={threshold}")


@dataclass(kw_only=True)
class Clipping(Preagg):
    """Config of `preagg=[clipping]`."""

    _target_: str = "byzctl.preagg.clipping.Clipping"
    name: str = "clipping"
    threshold: float | None = None
    """Clip every vector to this norm; null: the median norm of the round's vectors."""

    fn: ClassVar = staticmethod(clipping)
    paper = (
        'Static norm clipping, as used with robust rules in Karimireddy, He, Jaggi, ICML 2021 and '
        "ByzFL's benchmark"
    )
    convention = (
        'threshold=null: clip to the median norm of the round (lower median); a number: a fixed '
        'radius.'
    )
    mix: ClassVar = staticmethod(clipping_mix)
    reads: ClassVar[str] = "norms"
    diagonal: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_params(self.threshold, error=ConfigError)
