"""Non-finite values: every Byzantine coordinate is +inf, -inf or NaN (a sanity attack)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from byzctl.attacks.base import Attack, Knowledge, check_honest
from byzctl.errors import ConfigError, RuleError

VALUES = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}
"""Accepted spellings of `value` and the float each stands for."""


def _parse(value: str | float) -> float | None:
    # str() also accepts the floats Hydra parses from `attack.value=inf` on the command line.
    return VALUES.get(str(value).strip().lower())


def inf(honest: Tensor, *, f: int, value: str = "inf") -> Tensor:
    """inf(H) = f vectors whose every coordinate is `value` (+inf, -inf or NaN): a rule that
    lets one non-finite input through is broken (the "infinity" attack of ByzFL's benchmarks).

    Raises:
        RuleError: if f < 0, `honest` is not a floating (h, d) tensor, or `value` is not
            one of "inf", "-inf", "nan".
    """
    _, d = check_honest(honest, f, "inf", min_h=0)
    fill = _parse(value)
    if fill is None:
        raise RuleError(f"inf: value must be one of {sorted(VALUES)}. Got value={value!r}")
    return honest.new_full((f, d), fill)  # (f, d)


@dataclass(kw_only=True)
class Inf(Attack):
    """Config of `attack=inf`. Hydra's override grammar reads a bare `inf` as a float, so on
    the command line the option is quoted: `byzctl run 'attack="inf"' attack.value=nan`."""

    _target_: str = "byzctl.attacks.inf.Inf"
    name: str = "inf"
    knowledge: Knowledge = Knowledge.local
    value: str = "inf"
    """What every coordinate is: "inf", "-inf" or "nan"."""

    fn: ClassVar = staticmethod(inf)
    paper = (
        "(sanity attack) the 'infinity' attack of ByzFL's benchmark (LPD-EPFL/byzfl)"
    )
    convention = (
        'Every coordinate equals attack.value: inf (default), -inf or nan.'
    )

    def __post_init__(self) -> None:
        if _parse(self.value) is None:
            raise ConfigError(
                f"attack.value must be one of {sorted(VALUES)}. Got value={self.value!r}"
            )
