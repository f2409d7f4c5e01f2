"""Centered clipping (Karimireddy, He, Jaggi, ICML 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, gram, serial, weighted_sum
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import ConfigError, RuleError, check_f


def centered_clipping(
    x: Tensor, *, f: int = 0, tau: float = 100.0, iters: int = 1, center: Tensor | None = None
) -> Tensor:
    """v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) min(1, tau / ||x_i - v_l||), v_0 = center,
    returning v_iters. Karimireddy, He, Jaggi, "Learning from history for Byzantine
    robust optimization", ICML 2021.

    The rule is stateful but keeps no state: pass the previous aggregate as `center`
    (byzctl's nodes do). center=None starts from the zero vector, as ByzFL does in its
    first round (a coordinate-wise median would cost a sort of x, far above this rule's
    budget). Every iterate is center * a + sum_i c_i x_i, kept as the coefficients
    (c, a) and measured through the Gram matrix of [x; center], so the (n, d) data is
    read once for G, once for x @ center and once for the result. Non-finite rows are
    infinitely far and clipped to nothing (weight 0), so with at most f of them and a
    finite center the result is finite. `center` is taken in x's dtype and device.
    Defaults (tau=100, iters=1) are ByzFL's.

    Raises:
        RuleError: unless n > 2f, tau > 0, iters >= 1 and center has shape (d,).
    """
    n, d = check_matrix(x, "centered_clipping")
    check_f(n, f, need=2 * f + 1, rule="centered_clipping", formula="n > 2f")
    check_float(x, "centered_clipping")
    _check_params(tau, iters, error=RuleError)
    if center is not None and tuple(center.shape) != (d,):
        raise RuleError(f"centered_clipping needs center of shape ({d},). Got shape {tuple(center.shape)}")
    g, ok = gram(x)
    good = ok.to(torch.float64)  # (n,)
    # Gram matrix of the n + 1 vectors [x; center]; a center of zeros adds nothing.
    ext = torch.zeros(n + 1, n + 1, dtype=torch.float64)  # (n + 1, n + 1)
    ext[:n, :n] = g
    if center is not None:
        z = center.to(device=x.device, dtype=x.dtype)
        h = (x @ z).to(device="cpu", dtype=torch.float64)  # (n,)
        ext[:n, n] = ext[n, :n] = torch.where(ok, h, 0.0)
        ext[n, n] = float(torch.linalg.vector_norm(z)) ** 2
    u = torch.zeros(n + 1, dtype=torch.float64)  # v = sum_i u_i x_i + u_n center
    u[n] = 1.0
    sq = ext.diagonal()[:n]  # (n,)
    with serial():
        for _ in range(iters):
            eu = ext @ u  # (n + 1,)
            dist = (sq - 2.0 * eu[:n] + u @ eu).clamp_min(0.0).sqrt()  # (n,) ||x_i - v||
            scale = torch.where(dist > tau, tau / dist, 1.0) * good  # (n,) min(1, tau / dist)
            step = scale.sum() / n
            u = u * (1.0 - step)
            u[:n] += scale / n
    out = weighted_sum(x, u[:n], ok)  # (d,)
    if center is not None and u[n] != 0.0:
        out.add_(center.to(device=x.device, dtype=x.dtype), alpha=float(u[n]))  # out is fresh
    return out


def _check_params(tau: float, iters: int, *, error: type[Exception]) -> None:
    if not tau > 0:
        raise error(f"centered_clipping needs tau > 0. Got tau={tau}")
    if iters < 1:
        raise error(f"centered_clipping needs iters >= 1. Got iters={iters}")


@dataclass(kw_only=True)
class CenteredClipping(Aggregator):
    """Config of `centered_clipping`."""

    _target_: str = "byzctl.aggregators.centered_clipping.CenteredClipping"
    name: str = "centered_clipping"
    tau: float = 100.0
    """Clipping radius around the current center."""
    iters: int = 1
    """Clipping iterations L per call."""

    fn: ClassVar = staticmethod(centered_clipping)
    paper = (
        "Karimireddy, He, Jaggi, 'Learning from history for Byzantine robust optimization', ICML "
        '2021'
    )
    convention = (
        "Centre v_0 = the previous aggregate (the zero vector at the first round, as ByzFL), "
        "radius tau = 100 and iters = 1 by default (ByzFL's defaults)."
    )
    stateful: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_params(self.tau, self.iters, error=ConfigError)
