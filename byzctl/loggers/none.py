"""No experiment logger (`logger=none`, the default): metrics.jsonl is the whole record."""

from __future__ import annotations

from dataclasses import dataclass

from byzctl.loggers.base import Logger


@dataclass(kw_only=True)
class NoLogger(Logger):
    """Config of `logger=none`: rows go to metrics.jsonl only."""

    _target_: str = "byzctl.loggers.none.NoLogger"
    name: str = "none"
