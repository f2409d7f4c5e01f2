"""No attack: Byzantine nodes behave honestly (a control run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from byzctl.attacks.base import Attack, Knowledge


def none(honest: Tensor, *, f: int) -> Tensor:
    """none(H) = f copies of mean(H): the Byzantine nodes send an honest-looking vector."""
    return honest.mean(dim=0, keepdim=True).expand(f, -1).clone()  # (f, d)


@dataclass(kw_only=True)
class NoAttack(Attack):
    """Config of `attack=none`. With `knowledge=local` the node sends its own honest gradient."""

    _target_: str = "byzctl.attacks.none.NoAttack"
    name: str = "none"
    knowledge: Knowledge = Knowledge.local

    fn: ClassVar = staticmethod(none)
    paper = (
        '(control run) no attack'
    )
    convention = (
        'Byzantine nodes send the honest mean of what they see.'
    )
