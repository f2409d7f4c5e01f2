"""What every dataset shares: its config base class and the loaded splits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor


class Partition(str, Enum):
    """How training samples are split across honest nodes."""

    iid = "iid"
    """Uniformly at random."""
    dirichlet = "dirichlet"
    """Per class, node shares drawn from Dirichlet(alpha): smaller alpha, more skew."""
    extreme = "extreme"
    """Sorted by label, then cut into contiguous shards."""
    gamma_similarity = "gamma_similarity"
    """A fraction gamma of the samples is spread IID, the rest sorted by label."""


@dataclass
class Splits:
    """A loaded dataset: float inputs, int64 labels, and a held-out test split."""

    x_train: Tensor  # (N, *input_shape) float32
    y_train: Tensor  # (N,) int64
    x_test: Tensor  # (M, *input_shape) float32
    y_test: Tensor  # (M,) int64
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(kw_only=True)
class Dataset:
    """Base config of a dataset."""

    _target_: str = "byzctl.data.base.Dataset"
    name: str = ""
    """The dataset's name, as in `dataset=<name>`."""
    partition: Partition = Partition.iid
    """How training samples are split across honest nodes."""
    alpha: float = 1.0
    """Dirichlet concentration for `partition=dirichlet` (smaller: more heterogeneous)."""
    gamma: float = 0.5
    """Fraction of IID samples for `partition=gamma_similarity`."""
    test_size: int = 1000
    """Samples held out for evaluation (never trained on)."""
    ship: bool = False
    """Send each node its shard over the wire instead of loading it on the node."""

    def __post_init__(self) -> None:
        from byzctl.errors import ConfigError

        if not 0 < self.alpha < math.inf:
            raise ConfigError(f"dataset.alpha must be > 0 and finite. Got alpha={self.alpha}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"dataset.gamma must be in [0, 1]. Got gamma={self.gamma}")
        if self.test_size < 1:
            raise ConfigError(f"dataset.test_size must be >= 1. Got test_size={self.test_size}")

    def load(self, seed: int) -> Splits:
        """Load (or generate) the data; the split is a function of `seed` alone."""
        raise NotImplementedError

    def peek(self, seed: int) -> tuple[tuple[int, ...], int]:
        """The input shape and number of classes, failing as `load` would (DataError or
        ConfigError naming the file or value) if the data cannot be loaded: what the
        launcher checks before it starts any node. This default loads the data, which
        suits small data (csv, synthetic, mnist_subset); large datasets override it
        with a cheaper check of their files."""
        splits = self.load(seed)
        return splits.input_shape, splits.num_classes


def split_test(x: Tensor, y: Tensor, *, test_size: int, seed: int, num_classes: int) -> Splits:
    """Hold out `test_size` samples chosen by a seeded permutation."""
    from byzctl.errors import ConfigError

    if test_size >= len(y):
        raise ConfigError(f"dataset.test_size={test_size} leaves no training data out of {len(y)} samples")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:test_size], perm[test_size:]
    return Splits(x[train], y[train], x[test], y[test], num_classes)
