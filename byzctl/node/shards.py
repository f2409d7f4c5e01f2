"""Which data a node holds: its training shard (deterministic from seed and id) and the test split."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from torch import Tensor

from byzctl.config.experiment import Experiment
from byzctl.data.base import Splits
from byzctl.data.partition import partition
from byzctl.topology.base import NodeSpec


@dataclass
class Shard:
    x_train: Tensor  # (k, *input_shape)
    y_train: Tensor  # (k,)
    x_test: Tensor  # (m, *input_shape)
    y_test: Tensor  # (m,)
    num_classes: int
    input_shape: tuple[int, ...]


_cache: dict[str, tuple[Splits, list[Tensor]]] = {}
_cache_lock = threading.Lock()


def shard_indices(exp: Experiment, splits: Splits) -> list[Tensor]:
    """The training-sample indices of every honest shard, (k_i,) each."""
    ds = exp.dataset
    return partition(splits.y_train, exp.honest, scheme=ds.partition, seed=exp.cfg.seed, alpha=ds.alpha, gamma=ds.gamma, cuts=ds.cuts)


def _loaded(exp: Experiment) -> tuple[Splits, list[Tensor]]:
    """The run's data and its partition, loaded once per process: the nodes packed in a
    host process (node/host.py) share them (and the test split) instead of each loading
    the dataset again."""
    with _cache_lock:
        if exp.hash not in _cache:
            _cache.clear()  # one run per host process
            splits = exp.dataset.load(exp.cfg.seed)
            _cache[exp.hash] = splits, shard_indices(exp, splits)
        return _cache[exp.hash]


def load_shard(exp: Experiment, spec: NodeSpec, splits: Splits | None = None, parts: list[Tensor] | None = None) -> Shard:
    """The node's shard: honest node i trains on partition i of the honest shards; a
    Byzantine node j holds shard j mod honest (a compromised participant has data too).
    Without `splits`, the process's cached load; `parts` (`shard_indices` of `splits`)
    saves partitioning again for every node of a process that loads many."""
    if splits is None:
        splits, parts = _loaded(exp)
    parts = parts if parts is not None else shard_indices(exp, splits)
    index = spec.shard if spec.shard >= 0 else (spec.byz_index % exp.honest if spec.byzantine else -1)
    if exp.cluster is not None and spec.id in exp.cluster.shards:
        index = exp.cluster.shards[spec.id] % exp.honest
    if index >= 0:
        idx = parts[index]
        x, y = splits.x_train[idx], splits.y_train[idx]
    else:
        x, y = splits.x_train[:0], splits.y_train[:0]
    return Shard(x, y, splits.x_test, splits.y_test, splits.num_classes, splits.input_shape)
