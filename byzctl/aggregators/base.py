"""What every robust aggregation rule shares: its config base class.

A rule is a pure function `rule(x, *, f, **params) -> Tensor` over stacked vectors
`x: (n, d)` returning `(d,)`. Its config class (a subclass of `Aggregator`) is the
Hydra schema of `conf/aggregator/<name>.yaml`; calling an instance applies the
function with the configured parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor


@dataclass(kw_only=True)
class Aggregator:
    """Base config of a robust aggregation rule."""

    _target_: str = "byzctl.aggregators.base.Aggregator"
    name: str = ""
    """The rule's name, as in `aggregator=<name>`."""
    f: int | None = None
    """Byzantine inputs the rule must tolerate; None takes `nodes.byzantine`."""

    fn: ClassVar[Callable[..., Tensor]]
    """The pure rule function this config applies."""
    stateful: ClassVar[bool] = False
    """True when the rule takes the previous aggregate explicitly as `center=`."""
    compiled: ClassVar[bool] = False
    """True when the rule runs a compiled CPU kernel (numba) that the launcher builds
    once before the nodes start (`launch.preflight.warm`)."""
    paper: ClassVar[str] = ""
    """Where the rule comes from: authors, title, venue, year (`byzctl list aggregators --json`)."""
    convention: ClassVar[str] = ""
    """Which form of the rule this is where implementations differ, and the config value that
    selects the other form (`byzctl list aggregators --json`)."""
    averages: ClassVar[bool] = False
    """True when the rule is the plain mean of its inputs, so linear pre-aggregators
    before it fold into one weighted sum (`byzctl.preagg.base.aggregate`)."""

    def params(self) -> dict[str, Any]:
        """The rule's keyword parameters (every field but `_target_`, `name` and `f`)."""
        skip = {"_target_", "name", "f"}
        return {fl.name: getattr(self, fl.name) for fl in dataclasses.fields(self) if fl.name not in skip}

    def resolve_f(self, byzantine: int) -> int:
        """The f this rule runs with: its own `f`, or the run's Byzantine count."""
        return byzantine if self.f is None else self.f

    def __call__(self, x: Tensor, *, f: int, center: Tensor | None = None) -> Tensor:
        """Apply the rule to `x: (n, d)`; `center` is passed only to stateful rules."""
        kwargs = self.params()
        if self.stateful:
            kwargs["center"] = center
        return type(self).fn(x, f=f, **kwargs)


def check_matrix(x: Tensor, rule: str) -> tuple[int, int]:
    """Validate stacked input vectors and return (n, d)."""
    from byzctl.errors import RuleError

    if x.dim() != 2:
        raise RuleError(f"{rule} expects stacked vectors of shape (n, d). Got shape {tuple(x.shape)}")
    n, d = x.shape
    if n == 0:
        raise RuleError(f"{rule} needs at least one input vector. Got n=0")
    return int(n), int(d)
