"""Experiment loggers: every metrics.jsonl row also goes to TensorBoard or MLflow.

One module per `logger=<name>` option (conf/logger/<name>.yaml); each config class
opens a `Sink` for the launcher. The packages they need are optional
(`pip install 'byzctl[loggers]'`) and imported only when a run uses them.
"""

from byzctl.loggers.base import Logger, RunContext, Scalars, Sink, flatten, headline

__all__ = ["Logger", "RunContext", "Scalars", "Sink", "flatten", "headline"]
