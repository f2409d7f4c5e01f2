"""MNIST handwritten digits (60,000 train, 10,000 test) from the files torchvision reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from byzctl.data._torchvision import TorchvisionDataset, idx_files, idx_sizes, load_idx
from byzctl.data.base import Splits

MEAN, STD = (0.1307,), (0.3081,)


@dataclass(kw_only=True)
class Mnist(TorchvisionDataset):
    """Config of `dataset=mnist`: files in <root>/MNIST/raw/ (idx-ubyte, uncompressed)."""

    _target_: str = "byzctl.data.mnist.Mnist"
    name: str = "mnist"
    input_shape: ClassVar[tuple[int, ...]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10
    official_sizes: ClassVar[tuple[int, int]] = (60_000, 10_000)

    def files(self) -> tuple[Path, tuple[str, ...], str]:
        return idx_files(self, "MNIST")

    def sizes_on_disk(self) -> tuple[int, int] | None:
        return idx_sizes(self)

    def load(self, seed: int) -> Splits:
        from torchvision.datasets import MNIST

        return load_idx(self, MNIST, seed=seed, num_classes=self.num_classes, mean=MEAN, std=STD)
