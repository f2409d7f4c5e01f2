"""CIFAR-10 colour images (50,000 train, 10,000 test, 32x32) from the python batches
torchvision downloads (`cifar-10-batches-py/`).

The batches are read here rather than through `torchvision.datasets.CIFAR10`, which
hashes all 180 MB on every construction, i.e. once per node process. They are Python
pickles; an unpickler restricted to numpy's array reconstruction reads them, so a file
swapped for a malicious pickle fails instead of running code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from byzctl.data._torchvision import TorchvisionDataset, fetch, normalize
from byzctl.data.base import Splits
from byzctl.errors import DataError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}
"""The only globals a CIFAR batch may reference (numpy arrays, and the byte-string
helper Python 2 pickles use)."""


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) int64 labels of one batch file."""
    try:
        with open(path, "rb") as fh:
            batch = _BatchUnpickler(fh, encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except Exception as exc:
        raise DataError(f"dataset=cifar10: cannot read {path}: {type(exc).__name__}: {exc}") from None
    if len(images) != len(labels):
        raise DataError(f"dataset=cifar10: {path} holds {len(images)} images but {len(labels)} labels")
    return images, labels


@dataclass(kw_only=True)
class Cifar10(TorchvisionDataset):
    """Config of `dataset=cifar10`: files in <root>/cifar-10-batches-py/ (extract cifar-10-python.tar.gz in root)."""

    _target_: str = "byzctl.data.cifar10.Cifar10"
    name: str = "cifar10"
    input_shape: ClassVar[tuple[int, ...]] = (3, 32, 32)
    num_classes: ClassVar[int] = 10
    official_sizes: ClassVar[tuple[int, int]] = (50_000, 10_000)

    def files(self) -> tuple[Path, tuple[str, ...], str]:
        return self.root_path / FOLDER, (*TRAIN_FILES, TEST_FILE), "extract cifar-10-python.tar.gz in dataset.root"

    def load(self, seed: int) -> Splits:
        folder, files, hint = self.files()
        if self.download and self.missing(folder, files):
            from torchvision.datasets import CIFAR10

            fetch(self, lambda: CIFAR10(str(self.root_path), train=True, download=True))
        self.require(folder, files, hint)
        parts = [read_batch(folder / f) for f in TRAIN_FILES]
        x_test, y_test = read_batch(folder / TEST_FILE)
        x_train = np.concatenate([x for x, _ in parts])  # (N, 3, 32, 32) uint8
        y_train = np.concatenate([y for _, y in parts])  # (N,)
        labels = np.concatenate([y_train, y_test])
        bad = np.unique(labels[(labels < 0) | (labels >= 10)])
        if len(bad):
            raise DataError(f"dataset=cifar10: labels outside 0..9 in {folder}: {bad[:5].tolist()}")
        return self.finish(
            normalize(torch.from_numpy(x_train), MEAN, STD), torch.from_numpy(y_train),
            normalize(torch.from_numpy(x_test), MEAN, STD), torch.from_numpy(y_test), seed=seed, num_classes=10,
        )
