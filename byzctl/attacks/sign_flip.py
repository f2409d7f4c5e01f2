"""Sign flipping: send the honest direction scaled by a negative factor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from byzctl.attacks.base import Attack, Knowledge


def sign_flip(honest: Tensor, *, f: int, scale: float = -1.0) -> Tensor:
    """sign_flip(H) = scale * mean(H), repeated f times (Allen-Zhu et al., ICLR 2021).

    With `knowledge=local`, H is the Byzantine node's own gradient: it flips what it computed.
    """
    return (scale * honest.mean(dim=0, keepdim=True)).expand(f, -1).clone()  # (f, d)


@dataclass(kw_only=True)
class SignFlip(Attack):
    """Config of `attack=sign_flip`."""

    _target_: str = "byzctl.attacks.sign_flip.SignFlip"
    name: str = "sign_flip"
    knowledge: Knowledge = Knowledge.local
    scale: float = -1.0
    """Multiplier of the honest direction (the seeds' --byz-scale)."""

    fn: ClassVar = staticmethod(sign_flip)
    paper = (
        "Allen-Zhu, Ebrahimian, Li, Alistarh, 'Byzantine-resilient non-convex SGD', ICLR 2021"
    )
    convention = (
        "Sends scale * mean(H), scale = -1 by default (the honest mean reversed, as ByzFL's "
        'SignFlipping).'
    )
