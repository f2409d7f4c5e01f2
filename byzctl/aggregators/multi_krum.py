"""Multi-Krum (Blanchard et al., NeurIPS 2017; El Mhamdi et al., ICML 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, gram, serial, smallest, sq_distances, weighted_sum
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.aggregators.krum import Krum, Neighbours, krum_scores
from byzctl.errors import ConfigError, RuleError


def multi_krum(
    x: Tensor, *, f: int = 0, m: int | None = None, neighbours: Neighbours | str = Neighbours.n_f_2
) -> Tensor:
    """multi_krum(x) = (1/m) sum of the m rows with the smallest Krum scores (score_i =
    sum of the k smallest ||x_i - x_j||^2, j != i, with k = n - f - 2 for neighbours=n_f_2,
    the paper's form, or k = n - f - 1 for n_f_1, ByzFL's). Blanchard, El Mhamdi,
    Guerraoui, Stainer, "Machine learning with adversaries: Byzantine tolerant
    gradient descent", NeurIPS 2017.

    m = None takes m = n - f. With f = 0 and m = n it is the mean. Ties go to the
    lowest index; non-finite rows score +inf, so with at most f of them and m <= n - f
    the result is finite.

    Raises:
        RuleError: unless n > 2f + 2 (n_f_2) or n > 2f (n_f_1), and 1 <= m <= n.
    """
    n, _ = check_matrix(x, "multi_krum")
    form = Neighbours.of(neighbours, "multi_krum")
    form.check(n, f, "multi_krum")
    check_float(x, "multi_krum")
    m = n - f if m is None else m
    if not 1 <= m <= n:
        raise RuleError(f"multi_krum needs 1 <= m <= n. Got m={m}, n={n}, f={f}")
    g, ok = gram(x)
    with serial():
        picked = smallest(krum_scores(sq_distances(g, ok), f, offset=form.offset), m)  # (m,)
    w = torch.zeros(n, dtype=torch.float64)
    w[picked] = 1.0 / m
    return weighted_sum(x, w, ok)  # (d,)


@dataclass(kw_only=True)
class MultiKrum(Aggregator):
    """Config of `multi_krum`."""

    _target_: str = "byzctl.aggregators.multi_krum.MultiKrum"
    name: str = "multi_krum"
    m: int | None = None
    """How many best-scored vectors to average; None: n - f."""
    neighbours: Neighbours = Neighbours.n_f_2
    """n_f_2: score over the n - f - 2 nearest, n > 2f + 2 (the paper); n_f_1: over the
    n - f - 1 nearest, n > 2f (ByzFL)."""

    fn: ClassVar = staticmethod(multi_krum)
    paper = Krum.paper + "; El Mhamdi, Guerraoui, Rouault, 'The hidden vulnerability of distributed learning in Byzantium', ICML 2018"
    convention = Krum.convention + " Averages the m = n - f best-scored vectors unless m is set."

    def __post_init__(self) -> None:
        if self.m is not None and self.m < 1:
            raise ConfigError(f"aggregator.m must be >= 1 or null. Got m={self.m}")
