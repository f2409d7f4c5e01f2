"""Krum (Blanchard et al., NeurIPS 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, gram, serial, smallest, sq_distances
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import RuleError, check_f


class Neighbours(str, Enum):
    """How many nearest neighbours a Krum score sums over; the literature has two forms."""

    n_f_2 = "n_f_2"
    """n - f - 2 neighbours, needs n > 2f + 2: the paper (Blanchard et al., 2017, Sec. 4)."""
    n_f_1 = "n_f_1"
    """n - f - 1 neighbours (the n - f nearest counting the vector itself), needs n > 2f:
    ByzFL (LPD-EPFL/byzfl `Krum`, `MultiKrum`) and Allouah et al., "Fixing by mixing", AISTATS 2023."""

    @classmethod
    def of(cls, value: Neighbours | str, rule: str) -> Neighbours:
        """`value` as a Neighbours, or RuleError naming it and the choices."""
        try:
            return cls(value)
        except ValueError:
            raise RuleError(f"{rule}: neighbours must be one of {[m.value for m in cls]}. Got neighbours={value!r}") from None

    @property
    def offset(self) -> int:
        """k = n - f - offset neighbours."""
        return 2 if self is Neighbours.n_f_2 else 1

    def check(self, n: int, f: int, rule: str) -> None:
        """Raise LimitError unless n is large enough for this form."""
        if self is Neighbours.n_f_2:
            check_f(n, f, need=2 * f + 3, rule=rule, formula="n > 2f + 2")
        else:
            check_f(n, f, need=2 * f + 1, rule=rule, formula="n > 2f (neighbours=n_f_1)")


def krum(x: Tensor, *, f: int = 0, neighbours: Neighbours | str = Neighbours.n_f_2) -> Tensor:
    """krum(x) = x_k, k = argmin_i sum of the k smallest ||x_i - x_j||^2 (j != i), with
    k = n - f - 2 (neighbours=n_f_2, the paper's form, n > 2f + 2) or k = n - f - 1
    (neighbours=n_f_1, ByzFL's form, n > 2f). Blanchard, El Mhamdi, Guerraoui, Stainer,
    "Machine learning with adversaries: Byzantine tolerant gradient descent", NeurIPS 2017.

    Distances come from one Gram matrix (see `byzctl.aggregators._gram`); ties go to
    the lowest index. Non-finite rows are infinitely far from all rows, so with at
    most f of them the result is a finite input row. Returns a copy.

    Raises:
        RuleError: unless n > 2f + 2 (n_f_2) or n > 2f (n_f_1).
    """
    n, _ = check_matrix(x, "krum")
    form = Neighbours.of(neighbours, "krum")
    form.check(n, f, "krum")
    check_float(x, "krum")
    g, ok = gram(x)
    with serial():
        k = int(smallest(krum_scores(sq_distances(g, ok), f, offset=form.offset), 1)[0])
    return x[k].clone()  # (d,)


def krum_scores(d2: Tensor, f: int, *, offset: int = 2) -> Tensor:
    """Krum score of every row (n,): the sum of its n - f - offset smallest squared distances
    to the other rows. d2: (n, n) squared distances, +inf for non-finite rows."""
    n = d2.shape[0]
    off = d2.clone().fill_diagonal_(float("inf"))  # a vector is not its own neighbour
    near = torch.sort(off, dim=1).values[:, : n - f - offset]  # (n, n - f - offset)
    return near.sum(dim=1)  # (n,)


@dataclass(kw_only=True)
class Krum(Aggregator):
    """Config of `krum`."""

    _target_: str = "byzctl.aggregators.krum.Krum"
    name: str = "krum"
    neighbours: Neighbours = Neighbours.n_f_2
    """n_f_2: score over the n - f - 2 nearest, n > 2f + 2 (the paper); n_f_1: over the
    n - f - 1 nearest, n > 2f (ByzFL)."""

    fn: ClassVar = staticmethod(krum)
    paper = (
        "Blanchard, El Mhamdi, Guerraoui, Stainer, 'Machine learning with adversaries: "
        "Byzantine tolerant gradient descent', NeurIPS 2017"
    )
    convention = (
        "neighbours=n_f_2 (default): score = sum of the n-f-2 smallest squared distances, n > 2f+2, "
        "as the paper; neighbours=n_f_1: n-f-1, n > 2f, as ByzFL. Ties: lowest index."
    )
