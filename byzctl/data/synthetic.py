"""Generated classification data: Gaussian clusters, one per class."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from byzctl.data.base import Dataset, Splits, split_test
from byzctl.errors import ConfigError


@dataclass(kw_only=True)
class Synthetic(Dataset):
    """Config of `dataset=synthetic`: x = mu_y + noise * N(0, I), mu_c ~ N(0, I)."""

    _target_: str = "byzctl.data.synthetic.Synthetic"
    name: str = "synthetic"
    num_samples: int = 4000
    """Samples generated in all (train + test)."""
    num_features: int = 32
    """Dimension of each input vector."""
    num_classes: int = 4
    """Number of classes (clusters)."""
    noise: float = 1.0
    """Standard deviation of the noise around each class centre."""
    test_size: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("num_samples", "num_features", "num_classes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"dataset.{key} must be >= 1. Got {key}={getattr(self, key)}")

    def load(self, seed: int) -> Splits:
        gen = torch.Generator().manual_seed(self.data_seed(seed) + 7919)
        centres = torch.randn(self.num_classes, self.num_features, generator=gen) * 2.0
        y = torch.randint(0, self.num_classes, (self.num_samples,), generator=gen)
        x = centres[y] + self.noise * torch.randn(self.num_samples, self.num_features, generator=gen)
        return split_test(x, y, test_size=self.test_size, seed=self.data_seed(seed), num_classes=self.num_classes)
