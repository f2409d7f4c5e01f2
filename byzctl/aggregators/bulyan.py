"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators import _select
from byzctl.aggregators._gram import gram, serial, sq_distances
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.aggregators.meamed import around_median
from byzctl.errors import check_f


def bulyan(x: Tensor, *, f: int = 0) -> Tensor:
    """Bulyan over Krum: pick theta = n - 2f vectors by applying Krum repeatedly to the
    vectors not yet picked, then per coordinate average the beta = theta - 2f picked
    values closest to their median. El Mhamdi, Guerraoui, Rouault, "The hidden
    vulnerability of distributed learning in Byzantium", ICML 2018.

    Krum's squared distances come from one Gram matrix (see `byzctl.aggregators._gram`
    for their precision). Rows with non-finite values are at infinite distance from all, so
    up to f of them are never picked. Ties at the coordinate step share places
    equally (as in `meamed`). Keeps x's dtype and device.

    Raises:
        RuleError: unless n >= 4f + 3, or if x is not a floating-point (n, d) tensor.
    """
    n, _ = check_matrix(x, "bulyan")
    check_f(n, f, need=4 * f + 3, rule="bulyan", formula="n >= 4f + 3")
    _select.check_float(x, "bulyan")
    if f == 0:
        return torch.mean(x, dim=0)  # (d,) every vector is picked and every value kept
    theta = n - 2 * f
    rows = _krum_picks(x, f=f, count=theta)  # (theta,) on x.device
    if (out := _select.kernel_columns(x, rule="meamed", f=2 * f, rows=rows)) is not None:
        return out  # (d,) compiled kernel
    return around_median(x, keep=theta - 2 * f, rows=rows)  # (d,)


def _krum_picks(x: Tensor, *, f: int, count: int) -> Tensor:
    """Indices of the `count` vectors Bulyan's selection picks, in increasing order.

    Each round scores every remaining vector by the sum of its squared distances to
    its m - f - 2 nearest remaining neighbours (m: vectors remaining) and picks the
    lowest score (the first on ties).
    """
    n = x.shape[0]
    if count >= n:
        return torch.arange(n, device=x.device)
    g, ok = gram(x)  # (n, n), the one pass over x
    dist = sq_distances(g, ok).fill_diagonal_(float("inf"))  # a vector is not its own neighbour
    left = torch.arange(n)
    picked = []
    with serial():
        for _ in range(count):
            m = left.numel()
            k = m - f - 2
            sub = dist[left][:, left]  # (m, m)
            scores = sub.topk(k, dim=1, largest=False).values.sum(dim=1) if k > 0 else torch.zeros(m, dtype=sub.dtype)
            best = int(torch.argmin(scores))
            picked.append(int(left[best]))
            left = torch.cat([left[:best], left[best + 1 :]])
    return torch.tensor(sorted(picked), device=x.device)


@dataclass(kw_only=True)
class Bulyan(Aggregator):
    """Config of `bulyan`."""

    _target_: str = "byzctl.aggregators.bulyan.Bulyan"
    name: str = "bulyan"

    fn: ClassVar = staticmethod(bulyan)
    paper = (
        "El Mhamdi, Guerraoui, Rouault, 'The hidden vulnerability of distributed learning in "
        "Byzantium', ICML 2018"
    )
    convention = (
        'Selection by repeated Krum over the vectors left (m - f - 2 neighbours, m: vectors left), '
        'theta = n - 2f picked, then per coordinate the beta = theta - 2f values closest to the '
        'median averaged; n >= 4f + 3.'
    )
    compiled: ClassVar[bool] = True
