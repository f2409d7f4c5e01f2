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
    """Per class, node shares drawn from Dirichlet(alpha): smaller alpha, more skew (see
    `byzctl.data.partition` for the cuts and the minimum shard)."""
    extreme = "extreme"
    """Sorted by label, then cut into contiguous shards."""
    gamma_similarity = "gamma_similarity"
    """A fraction gamma of the samples is spread IID, the rest sorted by label."""


class Cuts(str, Enum):
    """How `partition=dirichlet` turns each class's cumulative shares into sample counts."""

    round = "round"
    """Cut points round(cumsum(p) * n_c): byzctl's default."""
    floor = "floor"
    """Cut points floor(cumsum(p) * n_c): ByzFL's `dirichlet_niid` (numpy astype(int))."""


@dataclass
class Splits:
    """A loaded dataset: float inputs, int64 labels, and a held-out test split."""

    x_train: Tensor  # (N, *input_shape) float32
    y_train: Tensor  # (N,) int64
    x_test: Tensor  # (M, *input_shape) float32
    y_test: Tensor  # (M,) int64
    num_classes: int
    train_ids: Tensor | None = None
    """(N,) int64: the row of each training sample in the source data, where known."""
    test_ids: Tensor | None = None
    """(M,) int64: the row of each test sample in the source data, where known."""

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
    """Samples held out for evaluation (never trained on): a stratified draw (each class in
    proportion to its count) fixed by `split_seed`."""
    split_seed: int | None = 0
    """Seeds the held-out test split (and data a dataset generates): fixed by default, so runs
    that differ in `seed` are evaluated on the same samples and train from the same pool;
    null: follow the run's `seed`."""
    cuts: Cuts = Cuts.round
    """partition=dirichlet: per-class cut points round(cumsum(p) * n_c) (round, default) or
    floor(...) (floor, as ByzFL)."""
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
        """Load (or generate) the data; the test split is a function of `split_seed` (or of
        the run's `seed` when split_seed is null)."""
        raise NotImplementedError

    def data_seed(self, seed: int) -> int:
        """The seed of the held-out split: `split_seed`, or the run's seed when it is null."""
        return seed if self.split_seed is None else self.split_seed

    def peek(self, seed: int) -> tuple[tuple[int, ...], int]:
        """The input shape and number of classes, failing as `load` would (DataError or
        ConfigError naming the file or value) if the data cannot be loaded: what the
        launcher checks before it starts any node. This default loads the data, which
        suits small data (csv, synthetic, mnist_subset); large datasets override it
        with a cheaper check of their files."""
        splits = self.load(seed)
        return splits.input_shape, splits.num_classes


def stratified(y: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """Sorted indices of k samples, each class in proportion to its count.

    Class c gets floor(k n_c / N) samples plus one for the k - sum(floors) classes with the
    largest remainders (lowest label first on ties), drawn uniformly within the class.
    """
    classes, counts = torch.unique(y, return_counts=True)  # (C,), (C,)
    quota = counts.to(torch.float64) * k / len(y)
    take = quota.floor().long()
    extra = k - int(take.sum())
    take[torch.sort(quota - take, descending=True, stable=True).indices[:extra]] += 1
    picked = []
    for c, q in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(y == c).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:q]])
    return torch.sort(torch.cat(picked)).values  # (k,)


def split_test(x: Tensor, y: Tensor, *, test_size: int, seed: int, num_classes: int) -> Splits:
    """Hold out a stratified draw of `test_size` samples (see `stratified`) seeded by `seed`
    (pass the dataset's `data_seed`); both splits keep the source's row order."""
    from byzctl.errors import ConfigError

    if test_size >= len(y):
        raise ConfigError(f"dataset.test_size={test_size} leaves no training data out of {len(y)} samples")
    test = stratified(y, test_size, torch.Generator().manual_seed(seed))  # (M,)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[test] = False
    train = torch.nonzero(keep).flatten()  # (N,)
    return Splits(x[train], y[train], x[test], y[test], num_classes, train_ids=train, test_ids=test)
