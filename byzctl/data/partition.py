"""Seeded splits of training samples across honest nodes.

partition=dirichlet, precisely (Hsu, Qi, Brown, "Measuring the effects of non-identical
data distribution for federated visual classification", 2019, as ByzFL's `dirichlet_niid`):
for each class c in increasing order, its n_c training samples are shuffled (seeded), a
share vector p_c ~ Dirichlet(alpha 1_K) over the K honest nodes is drawn, and the samples
are cut at the K - 1 points cumsum(p_c)[:-1] * n_c, rounded (cuts=round, default) or
floored (cuts=floor, ByzFL's `astype(int)`, which leaves the remainders to the last
nodes); node k gets the k-th piece of every class. Shard sizes are therefore random
(sum_c p_ck n_c): there is no floor on them beyond one sample, and a node left with none
is a ConfigError naming alpha. The draw depends on the run's `seed` (the held-out test
split does not: see `Dataset.split_seed`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from byzctl.data.base import Cuts, Partition
from byzctl.errors import ConfigError


def partition(
    labels: Tensor, parts: int, *, scheme: Partition | str, seed: int, alpha: float = 1.0, gamma: float = 0.5,
    cuts: Cuts | str = Cuts.round,
) -> list[Tensor]:
    """Indices of the samples each of `parts` nodes trains on; disjoint, deterministic in `seed`."""
    if parts < 1:
        raise ConfigError(f"cannot partition data across {parts} nodes")
    n = len(labels)
    if n < parts:
        raise ConfigError(f"cannot split {n} training samples across {parts} nodes")
    gen = torch.Generator().manual_seed(seed)
    scheme = Partition(scheme)
    if scheme is Partition.iid:
        return list(torch.randperm(n, generator=gen).tensor_split(parts))
    if scheme is Partition.extreme:
        return list(_label_sorted(labels, gen).tensor_split(parts))
    if scheme is Partition.gamma_similarity:
        perm = torch.randperm(n, generator=gen)
        k = int(round(gamma * n))
        iid_part = perm[:k].tensor_split(parts)
        rest = perm[k:]
        sorted_rest = rest[torch.argsort(labels[rest], stable=True)].tensor_split(parts)
        return [torch.cat([a, b]) for a, b in zip(iid_part, sorted_rest)]
    return _dirichlet(labels, parts, alpha, gen, Cuts(cuts))


def _label_sorted(labels: Tensor, gen: torch.Generator) -> Tensor:
    perm = torch.randperm(len(labels), generator=gen)
    return perm[torch.argsort(labels[perm], stable=True)]


def _dirichlet(labels: Tensor, parts: int, alpha: float, gen: torch.Generator, cuts: Cuts = Cuts.round) -> list[Tensor]:
    """Per class, split its samples by proportions drawn from Dirichlet(alpha * 1) (module docstring)."""
    shares: list[list[Tensor]] = [[] for _ in range(parts)]
    conc = torch.full((parts,), float(alpha), dtype=torch.float64)
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        p = _seeded_dirichlet(conc, gen)
        for node, chunk in enumerate(torch.tensor_split(idx, cut_points(p, len(idx), cuts))):
            shares[node].append(chunk)
    out = [torch.cat(s) for s in shares]
    empty = [i for i, s in enumerate(out) if len(s) == 0]
    if empty:
        raise ConfigError(
            f"dirichlet partition with alpha={alpha} left nodes {empty} without data; raise dataset.alpha"
        )
    return out


def cut_points(p: Tensor, n: int, cuts: Cuts | str = Cuts.round) -> list[int]:
    """Where n samples are cut for shares p (K,): cumsum(p)[:-1] * n rounded half to even
    (cuts=round) or floored (cuts=floor); K - 1 non-decreasing points in [0, n]."""
    points = torch.cumsum(p.to(torch.float64), 0)[:-1] * n  # (K - 1,)
    at = points.round() if Cuts(cuts) is Cuts.round else points.floor()
    return at.clamp(0, n).long().tolist()


def _seeded_dirichlet(conc: Tensor, gen: torch.Generator) -> Tensor:
    """Dirichlet(conc) drawn from `gen` (torch's sampler takes no generator)."""
    import numpy as np

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    rng = np.random.default_rng(seed)
    g = rng.standard_gamma(conc.numpy())
    if not g.sum() > 0:
        # Every draw underflowed to 0 (alpha around 1e-3 or below), and 0/0 would be NaN:
        # take Dirichlet's alpha -> 0 limit instead, the whole class to one node.
        g = np.zeros_like(g)
        g[rng.integers(len(g))] = 1.0
    return torch.from_numpy(g / g.sum())
