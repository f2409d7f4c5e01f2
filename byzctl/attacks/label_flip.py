"""Label flipping: a data-poisoning attack; the Byzantine node trains honestly on y -> C - 1 - y."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.attacks.base import Attack, AttackContext, Knowledge
from byzctl.attacks.none import none
from byzctl.errors import RuleError


def label_flip(labels: Tensor, *, num_classes: int) -> Tensor:
    """label_flip(y) = num_classes - 1 - y, elementwise (e.g. 9 - y on MNIST; Allen-Zhu et
    al., ICLR 2021; Karimireddy, He, Jaggi, ICML 2021).

    Args:
        labels: integer class labels of any shape, each in [0, num_classes).
        num_classes: number of classes C.

    Raises:
        RuleError: if num_classes < 1, labels are not integers, or a label is outside [0, C).
    """
    if num_classes < 1:
        raise RuleError(f"label_flip: num_classes must be >= 1. Got num_classes={num_classes}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise RuleError(f"label_flip expects integer labels. Got dtype={labels.dtype}")
    if labels.numel() > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise RuleError(
                f"label_flip: labels must be in [0, {num_classes}). Got min={lo}, max={hi}"
            )
    return (num_classes - 1) - labels  # same shape and dtype


@dataclass(kw_only=True)
class LabelFlip(Attack):
    """Config of `attack=label_flip`.

    The runtime flips the Byzantine node's training labels with `poison` (or `fn`) and
    the node then computes its update exactly as an honest node would; the vector it
    sends is that honest-form update on poisoned data, unchanged (`__call__` returns its
    own update, so `knowledge` should stay `local`).
    """

    _target_: str = "byzctl.attacks.label_flip.LabelFlip"
    name: str = "label_flip"
    knowledge: Knowledge = Knowledge.local

    fn: ClassVar = staticmethod(label_flip)
    paper = (
        "Allen-Zhu, Ebrahimian, Li, Alistarh, 'Byzantine-resilient non-convex SGD', ICLR 2021; "
        'Karimireddy, He, Jaggi, ICML 2021'
    )
    convention = (
        'Data poisoning: the Byzantine node trains honestly (same momentum) on labels num_classes -'
        ' 1 - y.'
    )
    poisons_data: ClassVar[bool] = True

    def poison(self, labels: Tensor, *, num_classes: int) -> Tensor:
        """The labels this Byzantine node trains on."""
        return label_flip(labels, num_classes=num_classes)

    def __call__(self, honest: Tensor, *, f: int, ctx: AttackContext) -> Tensor:
        """Send the node's own update, computed on flipped labels: (h, d) -> (f, d)."""
        return none(honest, f=f)
