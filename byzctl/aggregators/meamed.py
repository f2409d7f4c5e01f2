"""Mean around the median (Xie et al., 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators import _select
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import check_f


def meamed(x: Tensor, *, f: int = 0) -> Tensor:
    """meamed_j = mean of the n - f values x_ij closest to median_i x_ij, per coordinate j.
    Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", arXiv:1802.10116, 2018.

    Values tied at the cut-off distance (m - t and m + t) share the places left
    equally, which keeps the rule permutation invariant (see `mean_around_median`).
    NaN counts as +inf, so up to f non-finite rows per coordinate are dropped and the
    result stays finite (beyond f it is unspecified); f = 0 is the plain mean. Keeps
    x's dtype and device (CPU: a numba kernel; CUDA: a Triton kernel, n <= 64; see `_select`).

    Raises:
        RuleError: unless n > 2f, or if x is not a floating-point (n, d) tensor.
    """
    n, _ = check_matrix(x, "meamed")
    check_f(n, f, need=2 * f + 1, rule="meamed", formula="n > 2f")
    _select.check_float(x, "meamed")
    if f == 0:
        return torch.mean(x, dim=0)  # (d,) all n values are kept
    if (out := _select.kernel_columns(x, rule="meamed", f=f)) is not None:
        return out  # (d,) compiled kernel
    return around_median(x, keep=n - f)  # (d,)


def around_median(x: Tensor, *, keep: int, rows: Tensor | None = None) -> Tensor:
    """Per coordinate, the mean of the `keep` values of x (or of x[rows]) closest to their
    median, ties sharing places as in `mean_around_median`: (d,). The CPU engine of
    meamed and bulyan (whose keep may be below n / 2).

    The kept values are a window of consecutive ranks, and it lies within the middle M
    ranks: all r of them when keep >= r / 2, else the keep ranks on each side of the
    median (M = 2 keep, or 2 keep - 1 for odd r, the median itself in the middle).
    Of those, the middle M - 2 fb ranks (fb = M - keep) are always kept, so only the
    fb lowest ranks B and fb highest ranks T of the block need sorting: the keep - (M -
    2 fb) = fb closest of B and T are, pair by pair, the closer of B[k] and T[k]
    (merging two sorted lists of distances). The network sorts just that much (see
    `_select.by_columns`; a few values outside the block may be removed first). Where
    a tie at the cut-off distance makes the choice ambiguous (a value outside the
    pairs, or both of a pair, at exactly that distance), the column is redone by
    `mean_around_median` over a full sort of it.
    """
    r = x.shape[0] if rows is None else rows.numel()
    drop = r - keep
    if drop == 0:
        return torch.mean(x if rows is None else x[rows], dim=0)  # (d,) every value is kept
    block = r if keep >= drop else 2 * keep - r % 2  # M
    lo = (r - block) // 2  # ranks below the block
    fb = block - keep  # |B| = |T|
    t_lo, t_hi = lo + block - fb, lo + block  # T = ranks [t_lo, t_hi)
    core = block - 2 * fb

    def post(s: Tensor, blk: _select.Blocks, out: Tensor) -> Tensor | None:
        m = _select.median_of(s, r, blk)  # (w,)
        low, high = s[blk.at(lo) : blk.at(lo + fb)], s[blk.at(t_lo) : blk.at(t_hi)]  # (fb, w) each, sorted
        near = torch.sub(m, low)  # (fb, w) distances of B, T to the median
        far = torch.sub(high, m)
        kept = torch.minimum(near, far)  # (fb, w) distance of the closer of each pair
        side = torch.sub(near, far).sign_()  # +1: T's is closer, -1: B's (0: a tie, redone below)
        # sum of the closer values: m - near where B's is closer, m + far where T's is
        torch.sum(side.mul_(kept), dim=0, out=out)
        out.add_(m, alpha=fb)
        if core:
            out += s[blk.at(lo + fb) : blk.at(t_lo)].sum(dim=0)
        if fb:
            cut = kept.amax(dim=0)  # (w,) farthest kept
            tie = cut == torch.maximum(near, far).amin(dim=0)  # (w,) nearest dropped is as far
        else:  # keep = 1, odd r: the median alone
            cut, tie = torch.zeros_like(m), torch.zeros_like(m, dtype=torch.bool)
        if lo:  # the nearest values outside the block
            tie |= torch.sub(m, _select.rank_value(s, lo - 1, blk)) <= cut
            tie |= torch.sub(_select.rank_value(s, t_hi, blk), m) <= cut
        out.div_(keep)
        return torch.nonzero(tie).flatten() if bool(tie.any()) else None  # rare on real data

    def exact(sorted_cols: Tensor) -> Tensor:
        return mean_around_median(sorted_cols, r, drop)

    return _select.by_columns(
        x, post, exact=exact, rows=rows,
        boundaries=[lo, lo + fb, t_lo, t_hi, *([_select.median_boundary(r)] if core > 1 else [])],
        sorted_ranges=[(lo, lo + fb), (t_lo, t_hi)],
        reads=(max(lo - 1, 0), min(t_hi + 1, r)),
    )


def mean_around_median(s: Tensor, n: int, f: int) -> Tensor:
    """Mean of the n - f values closest to the median, per column of the first n rows
    of s: (N, w) sorted along rows, no NaN, f >= 1 -> (w,). Shared with bulyan, whose
    f may reach n / 2.

    The kept values form a window of keep = n - f consecutive ranks [a, a + keep),
    a in [0, f], and every window covers the core ranks [f, keep). Its radius t is
    the smallest, over the windows, of the larger distance to the median at the
    window's two ends. Of the other ranks, those closer than t are kept and those at
    exactly t share the places left equally; the core is kept. Masks are float
    sign()s: on CPU, comparisons to bool, where() and heaviside() run several times
    slower than arithmetic.
    """
    keep = n - f
    core = max(keep - f, 0)
    m = _select.median_of(s, n, _select.SORTED)  # (w,)
    if core:  # only the window ends [0, f] and [keep - 1, n) can be dropped
        lo, hi = s[: f + 1], s[keep - 1 : n]  # (f + 1, w) each: window a's low and high end
        dist = torch.empty(2, *lo.shape, dtype=s.dtype, device=s.device)  # (2, f + 1, w) to the median
        torch.sub(m, lo, out=dist[0])
        torch.sub(hi, m, out=dist[1])
        t = torch.maximum(dist[0], dist[1]).amin(dim=0)  # (w,) radius of the closest window
        sign = torch.sub(t, dist).sign_()  # (2, f + 1, w): 1 closer than t, 0 at t, -1 farther
        sign[0, f].fill_(1)  # ranks f and keep - 1 are core: kept, and counted once
        sign[1, 0].fill_(1 if core > 1 else -1)
        vals = torch.empty_like(dist)  # (2, f + 1, w) their values; +-inf -> +-max so x 0 = 0
        torch.nan_to_num(lo, out=vals[0])
        torch.nan_to_num(hi, out=vals[1])
        sum_dims: tuple[int, ...] = (0, 1)
    else:  # windows need not contain the median: every rank can be dropped
        dist = (s[:n] - m).abs_()  # (n, w)
        t = torch.maximum(dist[: f + 1], dist[keep - 1 : n]).amin(dim=0)  # (w,)
        sign = torch.sub(t, dist).sign_()  # (n, w)
        vals = torch.nan_to_num(s[:n])  # (n, w)
        sum_dims = (0,)
    inside = sign.clamp_min(0)  # 1 / 0
    edge = sign.abs_().neg_().add_(1)  # 1 / 0
    placed = inside.sum(dim=sum_dims) + max(core - 2, 0)  # (w,) values kept so far
    share = (keep - placed) / edge.sum(dim=sum_dims).clamp_min_(1)  # (w,) places left per tie
    total = (vals * torch.addcmul(inside, edge, share)).sum(dim=sum_dims)  # (w,)
    if core > 2:
        total += s[f + 1 : keep - 1].sum(dim=0)
    return total.div_(keep)


@dataclass(kw_only=True)
class Meamed(Aggregator):
    """Config of `meamed`."""

    _target_: str = "byzctl.aggregators.meamed.Meamed"
    name: str = "meamed"

    fn: ClassVar = staticmethod(meamed)
    paper = (
        "Xie, Koyejo, Gupta, 'Generalized Byzantine-tolerant SGD', arXiv:1802.10116, 2018"
    )
    convention = (
        'Per coordinate, the mean of the n - f values closest to the median (ties share places '
        'equally).'
    )
    compiled: ClassVar[bool] = True
