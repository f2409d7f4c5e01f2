"""Bucketing (Karimireddy, He, Jaggi, ICLR 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, empty_rows
from byzctl.aggregators.base import check_matrix
from byzctl.errors import ConfigError, LimitError, RuleError, check_f
from byzctl.preagg.base import Preagg


def bucketing(x: Tensor, *, f: int = 0, bucket_size: int = 2, generator: torch.Generator | None = None) -> Tensor:
    """bucketing(x)_k = mean of x_pi(i) over i in [k s, (k+1) s), pi a uniformly random
    permutation, s = bucket_size: (n, d) -> (ceil(n/s), d), the last bucket holding the
    n mod s left-over rows when s does not divide n. Karimireddy, He, Jaggi,
    "Byzantine-robust learning on heterogeneous datasets via bucketing", ICLR 2022.

    The permutation is drawn from `generator` only (required: byzctl keeps no hidden
    randomness). At most f buckets hold a Byzantine row, so the rule after needs
    ceil(n/s) > 2f buckets; that is checked here. Non-finite rows make their bucket
    non-finite (at most f buckets).

    Raises:
        RuleError: unless bucket_size >= 1, ceil(n / bucket_size) > 2f (so n > 2f) and a
            generator is given.
    """
    n, d = check_matrix(x, "bucketing")
    check_float(x, "bucketing")
    m = _check_limits(n, f, bucket_size, generator)
    perm = _permutation(n, generator).to(x.device)  # (n,)
    mixed = torch.index_select(x, 0, perm, out=empty_rows(n, x))  # (n, d) a shuffled copy
    full = n // bucket_size
    out = mixed[: full * bucket_size].reshape(full, bucket_size, d).mean(dim=1)  # (full, d)
    if full < m:  # the left-over rows form one smaller bucket
        out = torch.cat([out, mixed[full * bucket_size :].mean(dim=0, keepdim=True)])
    return out  # (m, d)


def bucketing_mix(g: Tensor, *, f: int = 0, bucket_size: int = 2, generator: torch.Generator | None = None) -> Tensor:
    """The W (m, n) with bucketing(x) == W @ x for the same generator state."""
    n = g.shape[0]
    m = _check_limits(n, f, bucket_size, generator)
    perm = _permutation(n, generator).cpu()  # (n,)
    bucket = torch.arange(n) // bucket_size  # (n,) bucket of each shuffled place
    size = torch.bincount(bucket, minlength=m).to(torch.float64)  # (m,)
    w = torch.zeros(m, n, dtype=torch.float64)
    w[bucket, perm] = 1.0 / size[bucket]
    return w  # (m, n)


def _check_limits(n: int, f: int, bucket_size: int, generator: torch.Generator | None) -> int:
    """Validate; returns the number of buckets."""
    _check_params(bucket_size, error=RuleError)
    check_f(n, f, need=2 * f + 1, rule="bucketing", formula="n > 2f")
    m = -(-n // bucket_size)  # buckets
    if m <= 2 * f:
        raise LimitError(
            f"bucketing needs ceil(n / bucket_size) > 2f buckets. "
            f"Got n={n}, bucket_size={bucket_size}, buckets={m}, f={f}"
        )
    if generator is None:
        raise RuleError(
            "bucketing shuffles its inputs and needs an explicit generator, e.g. "
            "bucketing(x, f=f, generator=torch.Generator().manual_seed(seed))"
        )
    return m


def _permutation(n: int, generator: torch.Generator | None) -> Tensor:
    assert generator is not None
    return torch.randperm(n, generator=generator, device=generator.device)  # (n,)


def _check_params(bucket_size: int, *, error: type[Exception]) -> None:
    if bucket_size < 1:
        raise error(f"bucketing needs bucket_size >= 1. Got bucket_size={bucket_size}")


@dataclass(kw_only=True)
class Bucketing(Preagg):
    """Config of `preagg=[bucketing]`."""

    _target_: str = "byzctl.preagg.bucketing.Bucketing"
    name: str = "bucketing"
    bucket_size: int = 2
    """Rows averaged per bucket (s in the paper)."""

    fn: ClassVar = staticmethod(bucketing)
    paper = (
        "Karimireddy, He, Jaggi, 'Byzantine-robust learning on heterogeneous datasets via "
        "bucketing', ICLR 2022"
    )
    convention = (
        "A fresh seeded random permutation every round, buckets of s = bucket_size (the last one "
        "smaller when s does not divide n); the rule after it sees ceil(n/s) inputs and the same f."
    )
    mix: ClassVar = staticmethod(bucketing_mix)
    reads: ClassVar[str] = "none"
    randomized: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_params(self.bucket_size, error=ConfigError)
