"""Minimum-diameter averaging (El Mhamdi, Guerraoui, Rouault, ICML 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, gram, serial, sq_distances, weighted_sum
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import check_f


def mda(x: Tensor, *, f: int = 0) -> Tensor:
    """mda(x) = mean of x_S, S = argmin over |S| = n - f of max_{i,j in S} ||x_i - x_j||.
    El Mhamdi, Guerraoui, Rouault, "The hidden vulnerability of distributed learning in
    Byzantium", ICML 2018.

    Exact, without enumerating subsets: a set of diameter <= t and size n - f exists iff
    the graph joining pairs farther apart than t has a vertex cover of size <= f. A
    binary search over the sorted pairwise distances finds the smallest such t, each
    step deciding the cover with a bounded search tree (kernel rules, then branching
    on a highest-degree vertex), which is fast because f is small. When more than
    n - f vectors fit in the optimal diameter, those with the smallest eccentricity
    within the set are kept (then the lowest index). Non-finite rows are infinitely far
    from all, so with at most f of them they are excluded and the result is finite.

    Raises:
        RuleError: unless n > 2f.
    """
    n, _ = check_matrix(x, "mda")
    check_f(n, f, need=2 * f + 1, rule="mda", formula="n > 2f")
    check_float(x, "mda")
    g, ok = gram(x)
    with serial():
        keep = min_diameter_subset(sq_distances(g, ok), n - f)
    w = torch.zeros(n, dtype=torch.float64)
    w[keep] = 1.0 / (n - f)
    return weighted_sum(x, w, ok)  # (d,)


def min_diameter_subset(d2: Tensor, m: int) -> list[int]:
    """Indices (sorted) of m rows of minimum diameter, given squared distances d2 (n, n)
    (+inf for non-finite rows). With fewer than m finite rows, non-finite ones fill in."""
    n = d2.shape[0]
    if m >= n:
        return list(range(n))
    k = n - m  # vertices we may drop
    rows = d2.tolist()
    iu = torch.triu_indices(n, n, offset=1)
    cand = d2[iu[0], iu[1]]
    cand = torch.unique(torch.cat([cand[torch.isfinite(cand)], torch.zeros(1, dtype=d2.dtype)])).tolist()
    lo, hi = 0, len(cand) - 1  # invariant: cand[hi] feasible when any finite one is
    cover = _cover_at(rows, cand[hi], k)
    if cover is None:  # more than k non-finite rows: no finite diameter fits
        return sorted(_trim(rows, list(range(n)), m))
    while lo < hi:
        mid = (lo + hi) // 2
        c = _cover_at(rows, cand[mid], k)
        if c is None:
            lo = mid + 1
        else:
            hi, cover = mid, c
    kept = [i for i in range(n) if not (cover >> i) & 1]
    return sorted(_trim(rows, kept, m))


def _trim(rows: list[list[float]], kept: list[int], m: int) -> list[int]:
    """Keep the m members of `kept` with the smallest eccentricity within `kept`."""
    ecc = [(max(rows[i][j] for j in kept), i) for i in kept]
    return [i for _, i in sorted(ecc)[:m]]


def _cover_at(rows: list[list[float]], t: float, k: int) -> int | None:
    """A vertex cover (bitmask) of size <= k of the graph {ij : d2_ij > t}, or None."""
    n = len(rows)
    adj = [0] * n
    for i in range(n):
        r = rows[i]
        mask = 0
        for j in range(n):
            if j != i and r[j] > t:
                mask |= 1 << j
        adj[i] = mask
    return _vertex_cover(adj, (1 << n) - 1, k)


def _vertex_cover(adj: list[int], alive: int, k: int) -> int | None:
    """Bounded search tree for a vertex cover of size <= k of the graph induced on the
    `alive` vertices (bitmasks); returns the cover as a bitmask or None."""
    cover = 0
    while True:  # kernel: forced choices
        changed = False
        best_v, best_deg, edges2 = -1, 0, 0
        a = alive
        while a:
            low = a & -a
            v = low.bit_length() - 1
            a ^= low
            if not alive & low:
                continue  # taken or dropped earlier in this pass
            nb = adj[v] & alive
            deg = nb.bit_count()
            if deg == 0:
                alive &= ~low  # isolated: never needed
                changed = True
            elif deg > k:  # not taking v would take its > k neighbours
                if k == 0:
                    return None
                cover |= low
                alive &= ~low
                k -= 1
                changed = True
            elif deg == 1:  # taking the neighbour is never worse
                if k == 0:
                    return None
                cover |= nb
                alive &= ~(nb | low)
                k -= 1
                changed = True
            else:
                edges2 += deg
                if deg > best_deg:
                    best_v, best_deg = v, deg
        if not changed:
            break
    if best_v < 0:
        return cover  # no edges left
    if k == 0 or edges2 // 2 > k * k:  # each cover vertex covers <= k edges here (Buss)
        return None
    v, nb = best_v, adj[best_v] & alive
    # Branch 1: v in the cover.
    sub = _vertex_cover(adj, alive & ~(1 << v), k - 1)
    if sub is not None:
        return cover | (1 << v) | sub
    # Branch 2: v out, so all its neighbours in.
    deg = nb.bit_count()
    if deg > k:
        return None
    sub = _vertex_cover(adj, alive & ~nb & ~(1 << v), k - deg)
    if sub is not None:
        return cover | nb | sub
    return None


@dataclass(kw_only=True)
class Mda(Aggregator):
    """Config of `mda`."""

    _target_: str = "byzctl.aggregators.mda.Mda"
    name: str = "mda"

    fn: ClassVar = staticmethod(mda)
    paper = (
        "El Mhamdi, Guerraoui, Rouault, 'The hidden vulnerability of distributed learning in "
        "Byzantium', ICML 2018"
    )
    convention = (
        'Exact: the subset of n - f vectors with the smallest diameter (branch and bound over '
        'subsets), averaged; n > 2f.'
    )
