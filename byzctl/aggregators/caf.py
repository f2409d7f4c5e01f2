"""Covariance-bound agnostic filter, CAF (Allouah et al., 2024; filter of Diakonikolas et al., 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, gram, serial, weighted_sum
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import check_f


def caf(x: Tensor, *, f: int = 0) -> Tensor:
    """caf(x) = the weighted mean mu_c = sum_i c_i x_i / sum_i c_i with the smallest top
    covariance eigenvalue lambda_c among the iterates of the filter
    c_i <- c_i (1 - tau_i / max_j tau_j), tau_i = (v_c . (x_i - mu_c))^2, run from c = 1
    while sum_i c_i > n - 2f; (lambda_c, v_c) is the top eigenpair of the weighted
    covariance sum_i c_i (x_i - mu_c)(x_i - mu_c)^T / sum_i c_i. CAF as in Allouah et al.
    (2024) and ByzFL; the soft filter is Diakonikolas, Kamath, Kane, Li, Moitra, Stewart,
    "Being robust (in high dimensions) can be practical", ICML 2017.

    Each step zeroes at least the weight of the point farthest along v_c, so there are
    at most n steps. The covariance is never formed: its top eigenpair is that of the
    (n, n) matrix sqrt(c) K sqrt(c) / sum c, K the Gram matrix centered at mu_c. With
    f = 0 it is the mean. Non-finite rows start with weight 0, so with at most f of
    them the result is finite.

    Raises:
        RuleError: unless n > 2f.
    """
    n, _ = check_matrix(x, "caf")
    check_f(n, f, need=2 * f + 1, rule="caf", formula="n > 2f")
    check_float(x, "caf")
    g, ok = gram(x)
    c = ok.to(torch.float64)  # (n,) filter weights
    if not bool(ok.any()):
        return weighted_sum(x, torch.full((n,), 1.0 / n, dtype=torch.float64), ok)  # all non-finite
    with serial():
        best_val, best_w, tau = _step(g, c)
        while float(c.sum()) > n - 2 * f:
            top = float(tau.max())
            if top <= 0.0:  # every weighted point sits on mu_c: nothing left to filter
                break
            c = c * (1.0 - tau / top)
            val, w, tau = _step(g, c)
            if val < best_val:
                best_val, best_w = val, w
    return weighted_sum(x, best_w, ok)  # (d,)


def _step(g: Tensor, c: Tensor) -> tuple[float, Tensor, Tensor]:
    """For weights c: (lambda_c, the weights c / sum c of mu_c, tau (n,))."""
    w = c / c.sum()  # (n,) mu_c = sum_i w_i x_i
    gw = g @ w  # (n,)
    k = g - gw[:, None] - gw[None, :] + w @ gw  # (n, n) (x_i - mu).(x_j - mu)
    k = (k + k.T) / 2
    sw = w.sqrt()  # (n,)
    vals, vecs = torch.linalg.eigh(sw[:, None] * k * sw[None, :])
    lam = float(vals[-1])
    if lam <= 0.0:
        return max(lam, 0.0), w, torch.zeros_like(c)
    proj = k @ (sw * vecs[:, -1])  # (n,) sqrt(lam) * v_c . (x_i - mu_c)
    tau = torch.where(c > 0, proj.square() / lam, 0.0)
    return lam, w, tau


@dataclass(kw_only=True)
class Caf(Aggregator):
    """Config of `caf`."""

    _target_: str = "byzctl.aggregators.caf.Caf"
    name: str = "caf"

    fn: ClassVar = staticmethod(caf)
    paper = (
        'Allouah et al., covariance-bound agnostic filter (CAF), 2024; filter of Diakonikolas et '
        "al., 'Being robust (in high dimensions) can be practical', ICML 2017"
    )
    convention = (
        'Filter from uniform weights while their sum exceeds n - 2f; returns the iterate with the '
        'smallest top covariance eigenvalue; n > 2f.'
    )
