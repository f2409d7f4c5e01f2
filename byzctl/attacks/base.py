"""What every attack shares: its config base class and the adversary's view.

An attack is a pure function `attack(honest, *, f, **params) -> Tensor` mapping the
honest vectors the adversary may see, `honest: (h, d)`, to the Byzantine vectors
`(f, d)` (one row per Byzantine node; colluding attacks repeat one row). What
`honest` holds depends on `knowledge`: with `omniscient` it is the round's honest
vectors (from the server acting as oracle, or from honest neighbours); with
`local` it is only what the Byzantine node computed itself on its own shard.

Two kinds do not fit that mould exactly. Data-poisoning attacks (`poisons_data`,
e.g. label_flip) change what the Byzantine node trains on; their function maps
labels to labels, and the vector sent is the node's own honest-form update on the
poisoned data. Adaptive attacks (opt_alie, opt_ipm) also take `aggregate`, this
run's pre-aggregators + aggregator, and tune their scale against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import Tensor


class Knowledge(str, Enum):
    """What the adversary may read (see module docstring)."""

    omniscient = "omniscient"
    local = "local"


@dataclass(kw_only=True)
class AttackContext:
    """What the runtime hands an attack besides the honest vectors."""

    n: int
    """Total number of inputs the aggregator sees (honest + Byzantine)."""
    generator: torch.Generator
    """The only source of randomness an attack may draw from."""
    aggregate: Callable[[Tensor], Tensor] | None = None
    """This run's pre-aggregators + aggregator, (n, d) -> (d,), for adaptive attacks."""


@dataclass(kw_only=True)
class Attack:
    """Base config of an attack."""

    _target_: str = "byzctl.attacks.base.Attack"
    name: str = ""
    """The attack's name, as in `attack=<name>`."""
    knowledge: Knowledge = Knowledge.omniscient
    """omniscient: sees the round's honest vectors; local: only its own computations."""
    per_recipient: bool = False
    """Decentralized topologies: craft a different vector for each neighbour."""

    fn: ClassVar[Callable[..., Tensor]]
    uses_context: ClassVar[tuple[str, ...]] = ()
    """Names of AttackContext fields the function takes as keywords (e.g. 'generator')."""
    paper: ClassVar[str] = ""
    """Where the attack comes from: authors, title, venue, year (`byzctl list attacks --json`)."""
    convention: ClassVar[str] = ""
    """Which form of the attack this is where implementations differ (signs, scales, statistics),
    and the config value that selects the other form (`byzctl list attacks --json`)."""
    poisons_data: ClassVar[bool] = False
    """True when the Byzantine node trains honestly on poisoned data (label_flip)."""

    def poison(self, labels: Tensor, *, num_classes: int) -> Tensor:
        """The labels a data-poisoning attack (`poisons_data`) trains on; others have none."""
        raise NotImplementedError(f"attack {self.name!r} does not poison data")

    def params(self) -> dict[str, Any]:
        skip = {"_target_", "name", "knowledge", "per_recipient"}
        return {fl.name: getattr(self, fl.name) for fl in dataclasses.fields(self) if fl.name not in skip}

    def __call__(self, honest: Tensor, *, f: int, ctx: AttackContext) -> Tensor:
        """Byzantine vectors (f, d) from the honest view (h, d)."""
        kwargs = self.params()
        for key in self.uses_context:
            kwargs[key] = getattr(ctx, key)
        return type(self).fn(honest, f=f, **kwargs)


def check_honest(honest: Tensor, f: int, attack: str, *, min_h: int = 1) -> tuple[int, int]:
    """Validate an attack's inputs and return (h, d).

    Raises:
        RuleError: unless `honest` is a floating-point (h, d) tensor with h >= min_h, and f >= 0.
    """
    from byzctl.errors import RuleError

    if f < 0:
        raise RuleError(f"{attack}: f must be >= 0. Got f={f}")
    if honest.dim() != 2:
        raise RuleError(f"{attack} expects honest vectors of shape (h, d). Got shape {tuple(honest.shape)}")
    if not honest.is_floating_point():
        raise RuleError(f"{attack} expects floating-point vectors. Got dtype={honest.dtype}")
    h, d = honest.shape
    if h < min_h:
        raise RuleError(f"{attack} needs at least {min_h} honest vector(s) to see. Got h={h}")
    return int(h), int(d)
