"""What every pre-aggregator shares: its config base class.

A pre-aggregator is a pure function `pre(x, *, f, **params) -> Tensor` mapping
stacked vectors `x: (n, d)` to `(m, d)`, applied before the aggregation rule.
They compose as an ordered list (`preagg=[clipping,nnm]`). Randomised ones take an
explicit `generator`.

Every pre-aggregator here is linear in x once its data-dependent choices are made:
pre(x) = W @ x with W (m, n) computed from the Gram matrix x @ x.T alone (distances
for nnm, norms for clipping and arc, a permutation for bucketing). Such a one also
offers `mix`, and `aggregate` uses it: a chain followed by a rule that averages
(`Aggregator.averages`) becomes one Gram matrix, small (n, n) products, and a single
weighted sum over x, without the (m, d) intermediate results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import gram, serial, weighted_sum
from byzctl.aggregators.base import Aggregator


@dataclass(kw_only=True)
class Preagg:
    """Base config of a pre-aggregator."""

    _target_: str = "byzctl.preagg.base.Preagg"
    name: str = ""
    """The pre-aggregator's name, as in `preagg=[<name>]`."""
    f: int | None = None
    """Byzantine inputs to tolerate; None takes `nodes.byzantine`."""

    fn: ClassVar[Callable[..., Tensor]]
    paper: ClassVar[str] = ""
    """Where the pre-aggregator comes from: authors, title, venue, year (`byzctl list preaggs --json`)."""
    convention: ClassVar[str] = ""
    """Which form this is where implementations differ (`byzctl list preaggs --json`)."""
    randomized: ClassVar[bool] = False
    """True when the function takes a seeded `generator=`."""
    mix: ClassVar[Callable[..., Tensor] | None] = None
    """mix(g, *, f, **params) -> W (m, n) float64 CPU with fn(x) == W @ x, from g = x @ x.T
    (float64 CPU, every row finite); randomized ones also take `generator=`. It must
    validate f and params and draw randomness exactly as `fn` does."""
    reads: ClassVar[str] = "gram"
    """What `mix` reads of g: "gram" (distances), "norms" (its diagonal only) or "none"."""
    diagonal: ClassVar[bool] = False
    """True when `mix` only scales rows (W diagonal): the norms after it follow from the
    norms before it."""

    def params(self) -> dict[str, Any]:
        skip = {"_target_", "name", "f"}
        return {fl.name: getattr(self, fl.name) for fl in dataclasses.fields(self) if fl.name not in skip}

    def resolve_f(self, byzantine: int) -> int:
        return byzantine if self.f is None else self.f

    def __call__(self, x: Tensor, *, f: int, generator: torch.Generator | None = None) -> Tensor:
        kwargs = self.params()
        if self.randomized:
            kwargs["generator"] = generator
        return type(self).fn(x, f=f, **kwargs)

    def mixing(self, g: Tensor, *, f: int, generator: torch.Generator | None = None) -> Tensor:
        """W (m, n) with self(x) == W @ x, from g = x @ x.T; see `mix`."""
        mix = type(self).mix
        if mix is None:
            raise TypeError(f"pre-aggregator {self.name!r} is not linear")
        kwargs = self.params()
        if self.randomized:
            kwargs["generator"] = generator
        return mix(g, f=f, **kwargs)


def chain(preaggs: list[Preagg], x: Tensor, *, byzantine: int, generator: torch.Generator | None = None) -> Tensor:
    """Apply pre-aggregators in order: (n, d) -> (m, d)."""
    for pre in preaggs:
        x = pre(x, f=pre.resolve_f(byzantine), generator=generator)
    return x


def aggregate(
    preaggs: list[Preagg],
    rule: Aggregator,
    x: Tensor,
    *,
    byzantine: int,
    center: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pre-aggregators in order, then the rule: (n, d) -> (d,).

    When the rule averages and every pre-aggregator is linear, the chain runs on
    G = x @ x.T (as much of it as they read, see `_gram_for`) instead of on x: each
    pre-aggregator's V maps (G, W) to (V G V.T, V W), and the result is mean(W) @ x,
    one weighted sum. Same result as the plain chain up to float rounding (the sums
    are grouped differently); inputs with non-finite rows take the plain chain, where
    each rule's documented handling of them applies.
    """
    if preaggs and rule.averages and all(type(p).mix for p in preaggs):
        g, ok = _gram_for(preaggs, x)
        if bool(ok.all()):
            w = torch.eye(x.shape[0], dtype=torch.float64)  # (m, n): the chain so far is w @ x
            with serial():
                for pre in preaggs:
                    v = pre.mixing(g, f=pre.resolve_f(byzantine), generator=generator)  # (m', m)
                    if pre.diagonal:  # scale rows and columns: entries left NaN (unread) stay apart
                        s = v.diagonal()
                        g = g * s[:, None] * s[None, :]
                    else:
                        g = v @ g @ v.T
                    w = v @ w
            return weighted_sum(x, w.mean(dim=0), ok)  # (d,)
    x = chain(preaggs, x, byzantine=byzantine, generator=generator)
    return rule(x, f=rule.resolve_f(byzantine), center=center)


def _gram_for(preaggs: list[Preagg], x: Tensor) -> tuple[Tensor, Tensor]:
    """As much of G = x @ x.T as the chain's `mix`es read, and the mask of finite rows.

    Entries nobody reads are NaN: norms alone (a pass over x, not a matrix product)
    serve while every mixer before a norm reader is diagonal (clipping, arc, none); a norm
    reader after a mixer that moves rows (nnm, bucketing) needs the whole G. A chain
    that reads nothing (bucketing) does not look at x: non-finite values then reach the
    weighted sum, as they reach the mean on the plain path.
    """
    n = x.shape[0]
    need, moved = "none", False
    for pre in preaggs:
        if pre.reads == "gram" or (pre.reads == "norms" and moved):
            need = "gram"
        elif pre.reads == "norms" and need == "none":
            need = "norms"
        moved = moved or not pre.diagonal
    if need == "gram":
        return gram(x)
    g = torch.full((n, n), float("nan"), dtype=torch.float64)
    if need == "none":
        return g, torch.ones(n, dtype=torch.bool)
    sq = torch.linalg.vector_norm(x, dim=1).to(device="cpu", dtype=torch.float64).square_()  # (n,)
    g.diagonal().copy_(sq)
    return g, torch.isfinite(sq)
