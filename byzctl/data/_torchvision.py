"""What the torchvision datasets (mnist, fashion_mnist, cifar10) share: where their
files live, an optional download, a seeded training subset, normalisation.

This machine may be offline: with `download=false` (the default) missing files are a
DataError naming the folder to put them in and the file names expected there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.data.base import Dataset, Splits, stratified
from byzctl.errors import ConfigError, DataError

DEFAULT_ROOT = "~/.cache/byzctl/data"


@dataclass(kw_only=True)
class TorchvisionDataset(Dataset):
    """Base config of a dataset read from the files torchvision downloads."""

    _target_: str = "byzctl.data._torchvision.TorchvisionDataset"
    root: str = DEFAULT_ROOT
    """Folder holding the dataset's files (`~` and environment variables are expanded)."""
    download: bool = False
    """Download the files with torchvision when they are absent (needs network access)."""
    subset: int | None = None
    """Train on a seeded random subset of this many training samples (None: all of them)."""
    test_size: int = 10000
    """Test samples evaluated: a seeded subset of the official test split (10000: all of it)."""
    input_shape: ClassVar[tuple[int, ...]] = ()
    num_classes: ClassVar[int] = 0
    official_sizes: ClassVar[tuple[int, int]] = (0, 0)
    """(training, test) samples in the official files: a subset or test_size above them
    fails when the config is built, before anything reads a file."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.subset is not None and self.subset < 1:
            raise ConfigError(f"dataset.subset must be >= 1 or null. Got subset={self.subset}")
        if all(self.official_sizes):
            self.check_sizes(*self.official_sizes)

    def check_sizes(self, train: int, test: int) -> None:
        """Raise ConfigError if `subset` or `test_size` asks for more samples than there are."""
        if self.subset is not None and self.subset > train:
            raise ConfigError(f"dataset.subset={self.subset} exceeds the {train} training samples of {self.name}")
        if self.test_size > test:
            raise ConfigError(f"dataset.test_size={self.test_size} exceeds the {test} test samples of {self.name}")

    def sizes_on_disk(self) -> tuple[int, int] | None:
        """(training, test) samples in the files here, where that is cheap to read (None: not)."""
        return None

    def files(self) -> tuple[Path, tuple[str, ...], str]:
        """The folder the dataset is read from, the files expected there, and how to get them."""
        raise NotImplementedError

    def peek(self, seed: int) -> tuple[tuple[int, ...], int]:
        # Reading every image in the launcher as well would double the start-up time: check the files only.
        if not self.download:
            self.require(*self.files())
            if (sizes := self.sizes_on_disk()) is not None:  # files smaller than the official ones
                self.check_sizes(*sizes)
        return self.input_shape, self.num_classes

    @property
    def root_path(self) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(self.root)))

    def missing(self, folder: Path, files: Sequence[str]) -> list[str]:
        return [f for f in files if not (folder / f).is_file()]

    def require(self, folder: Path, files: Sequence[str], hint: str) -> None:
        """Raise DataError unless every file is in `folder`."""
        absent = self.missing(folder, files)
        if absent:
            raise DataError(
                f"dataset={self.name}: {len(absent)} file(s) missing in {folder}: {', '.join(absent)}. "
                f"Place them there ({hint}), point dataset.root at the folder holding them, "
                f"or set dataset.download=true on a machine with network access"
            )

    def finish(self, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, seed: int, num_classes: int) -> Splits:
        """Apply `subset` (a draw seeded by the run's `seed`) and `test_size` (a stratified
        draw from the official test split, seeded by `split_seed`) and package the splits."""
        self.check_sizes(len(y_train), len(y_test))
        train_ids, test_ids = torch.arange(len(y_train)), torch.arange(len(y_test))
        if self.subset is not None:
            train_ids = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))[: self.subset]
            x_train, y_train = x_train[train_ids], y_train[train_ids]
        if self.test_size < len(y_test):
            test_ids = stratified(y_test, self.test_size, torch.Generator().manual_seed(self.data_seed(seed)))
            x_test, y_test = x_test[test_ids], y_test[test_ids]
        return Splits(x_train, y_train, x_test, y_test, num_classes, train_ids=train_ids, test_ids=test_ids)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (N, C, H, W) -> float32 with each channel standardised."""
    x = images.to(torch.float32) / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
"""MNIST-format files (uncompressed), as torchvision keeps them in <root>/<Class>/raw/."""


def idx_files(ds: TorchvisionDataset, folder: str) -> tuple[Path, tuple[str, ...], str]:
    """`files()` of an MNIST-format dataset kept in <root>/<folder>/raw/."""
    return ds.root_path / folder / "raw", IDX_FILES, "the uncompressed idx-ubyte files: gunzip the .gz originals"


def idx_sizes(ds: TorchvisionDataset) -> tuple[int, int] | None:
    """`sizes_on_disk()` of an MNIST-format dataset: the counts in its label files'
    headers (magic 0x00000801, then the count, big-endian); None if a header is not that."""
    folder, _, _ = ds.files()
    counts = []
    for split in ("train", "t10k"):
        with open(folder / f"{split}-labels-idx1-ubyte", "rb") as fh:
            head = fh.read(8)
        if len(head) < 8 or int.from_bytes(head[:4], "big") != 0x801:
            return None  # load() names what is wrong with the file
        counts.append(int.from_bytes(head[4:8], "big"))
    return counts[0], counts[1]


def load_idx(ds: TorchvisionDataset, tv_class: type, *, seed: int, num_classes: int,
             mean: Sequence[float], std: Sequence[float]) -> Splits:
    """Read an MNIST-format dataset with torchvision's class `tv_class` (MNIST, FashionMNIST)."""
    root = ds.root_path
    folder, files, hint = ds.files()
    if ds.download and ds.missing(folder, files):
        fetch(ds, lambda: tv_class(str(root), train=True, download=True))
    ds.require(folder, files, hint)
    try:
        train = tv_class(str(root), train=True, download=False)
        test = tv_class(str(root), train=False, download=False)
    except Exception as exc:  # torchvision raises bare RuntimeError/ValueError on bad files
        raise DataError(f"dataset={ds.name}: cannot read the files in {folder}: {type(exc).__name__}: {exc}") from None
    x_train = normalize(train.data.unsqueeze(1), mean, std)  # (N, 1, 28, 28)
    x_test = normalize(test.data.unsqueeze(1), mean, std)  # (M, 1, 28, 28)
    return ds.finish(x_train, train.targets.long(), x_test, test.targets.long(), seed=seed, num_classes=num_classes)


def fetch(ds: TorchvisionDataset, download: object) -> None:
    """Run a torchvision download, turning network failures into a DataError."""
    try:
        ds.root_path.mkdir(parents=True, exist_ok=True)
        download()  # type: ignore[operator]
    except Exception as exc:
        raise DataError(f"dataset={ds.name}: download into {ds.root_path} failed: {type(exc).__name__}: {exc}") from None
