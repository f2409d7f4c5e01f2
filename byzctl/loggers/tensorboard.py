"""TensorBoard (`logger=tensorboard`): scalars per node and round, the config as hparams.

Written with torch's own `SummaryWriter` (needs the `tensorboard` package); open with
`tensorboard --logdir <run dir>` (a sweep: `--logdir <sweep dir>`, one run per job).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import OmegaConf

from byzctl.errors import ConfigError
from byzctl.loggers.base import Logger, RunContext, Scalars, flatten


@dataclass(kw_only=True)
class TensorBoard(Logger):
    """Config of `logger=tensorboard`: event files beside metrics.jsonl."""

    _target_: str = "byzctl.loggers.tensorboard.TensorBoard"
    name: str = "tensorboard"
    dir: str = "tensorboard"
    """Where the event files go; a relative path is inside the run directory."""
    flush_secs: int = 10
    """Write pending events to disk at least this often (seconds)."""

    requires: ClassVar[tuple[tuple[str, str], ...]] = (("tensorboard", "tensorboard"),)

    def __post_init__(self) -> None:
        if self.flush_secs < 1:
            raise ConfigError(f"logger.flush_secs must be >= 1. Got logger.flush_secs={self.flush_secs}")
        if not self.dir:
            raise ConfigError("logger.dir must name a directory (relative paths are inside the run directory)")

    def open(self, ctx: RunContext) -> TensorBoardSink:
        return TensorBoardSink(self, ctx)


class TensorBoardSink:
    def __init__(self, cfg: TensorBoard, ctx: RunContext):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as exc:
            raise ConfigError(f"logger=tensorboard: cannot import torch.utils.tensorboard ({exc}): pip install tensorboard") from None
        logdir = Path(cfg.dir) if Path(cfg.dir).is_absolute() else ctx.path / cfg.dir
        # On resume, hide what the first attempt logged after the checkpoint: those rounds run again.
        purge = ctx.resumed_from + 1 if ctx.resumed_from is not None else None
        self.writer = SummaryWriter(log_dir=str(logdir), flush_secs=cfg.flush_secs, purge_step=purge)
        self.scalars = Scalars()
        self.record: dict[str, Any] = {"name": cfg.name, "dir": str(logdir.resolve())}
        if ctx.resumed_from is None:
            # the HParams dashboard: the config, with the headline figures as its metrics
            for summary in hparams(flatten(ctx.config), dict.fromkeys(ctx.headline, 0.0)):
                self.writer._get_file_writer().add_summary(summary)
            text = OmegaConf.to_yaml(OmegaConf.create(ctx.config), sort_keys=True)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "))  # markdown code block

    def row(self, row: dict[str, Any]) -> None:
        out = self.scalars(row)
        if out is None:
            return
        step, values = out
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        if "event" in row:
            self.writer.add_text("events", f"node {row.get('node')}: {row['event']}: {row.get('reason', '')}", step)

    def close(self, state: str) -> None:
        self.writer.add_text("state", state)
        self.writer.close()
