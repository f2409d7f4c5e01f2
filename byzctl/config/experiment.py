"""A run's config, instantiated and checked: what the launcher and every node build on."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from byzctl.aggregators.base import Aggregator
from byzctl.attacks.base import Attack
from byzctl.config.build import build
from byzctl.config.schema import LauncherKind, Security, SecurityKind
from byzctl.data.base import Dataset
from byzctl.errors import ByzctlError, ConfigError
from byzctl.loggers.base import Logger
from byzctl.loggers.none import NoLogger
from byzctl.models.base import ModelConfig
from byzctl.preagg.base import Preagg, aggregate
from byzctl.topology.base import NodeSpec, Topology
from byzctl.topology.cluster import Cluster, Place, load_cluster
from byzctl.topology.decentralized import Decentralized
from byzctl.topology.graph import Graph, honest_components
from byzctl.transport.curve import Keyring, check_plaintext

HOST_LOCAL_KEYS = ("launcher", "cluster", "local_nodes", "resume", "logger")
"""Keys that say how this host joins or records the run, not what the run is: not hashed."""


def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved run config (sorted keys; Hydra's settings and host-local keys excluded)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    for key in HOST_LOCAL_KEYS:
        data.pop(key, None)
    if isinstance(data.get("security"), dict):
        data["security"].pop("keys", None)  # each host keeps its own copy of the keys
    text = OmegaConf.to_yaml(OmegaConf.create(data), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Experiment:
    """Instantiated components plus training keys of one run."""

    cfg: DictConfig
    topology: Topology
    aggregator: Aggregator
    preaggs: list[Preagg]
    attack: Attack
    dataset: Dataset
    model: ModelConfig
    device: str
    honest: int
    byzantine: int
    graph: Graph
    security: Security
    logger: Logger
    """Where the launcher also sends metrics.jsonl rows (none, tensorboard, mlflow)."""

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Experiment:
        """Instantiate every component and check every limit, before any process starts."""
        parts = {key: build(cfg[key], key) for key in ("topology", "aggregator", "attack", "dataset", "model", "device")}
        preaggs = [build(node, f"preagg.{name}") for name, node in cfg.preagg.items()]
        graph = build(cfg.graph, "graph") if "graph" in cfg else Graph()
        security = build(cfg.security, "security") if "security" in cfg else Security()
        logger = build(cfg.logger, "logger") if "logger" in cfg else NoLogger()
        exp = cls(
            cfg=cfg, topology=parts["topology"], aggregator=parts["aggregator"], preaggs=preaggs,
            attack=parts["attack"], dataset=parts["dataset"], model=parts["model"],
            device=parts["device"].resolve(), honest=int(cfg.nodes.honest), byzantine=int(cfg.nodes.byzantine),
            graph=graph, security=security, logger=logger,
        )
        exp.check()
        return exp

    # -- derived -----------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.honest + self.byzantine

    @property
    def hash(self) -> str:
        return config_hash(self.cfg)

    def plan(self) -> list[NodeSpec]:
        return self.topology.plan(self.honest, self.byzantine)

    @functools.cached_property
    def cluster(self) -> Cluster | None:
        """The cluster file's placement of nodes, if the run has one."""
        path = self.cfg.get("cluster")
        return load_cluster(path, self.plan()) if path else None

    def place(self, node_id: int) -> Place | None:
        return self.cluster.places.get(node_id) if self.cluster else None

    @property
    def remote(self) -> bool:
        return LauncherKind(self.cfg.get("launcher", "local")) is LauncherKind.remote

    @property
    def decentralized(self) -> bool:
        return isinstance(self.topology, Decentralized)

    def neighbours(self) -> dict[int, set[int]]:
        """In-neighbours of every peer (decentralized topologies), seeded by the run."""
        return self.graph.build(self.n, int(self.cfg.seed))

    def aggregate(self, x: torch.Tensor, *, center: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """This run's pre-aggregators then aggregator: (n, d) -> (d,)."""
        return aggregate(self.preaggs, self.aggregator, x, byzantine=self.byzantine, center=center, generator=generator)

    # -- checks --------------------------------------------------------------------
    def check(self) -> None:
        c = self.cfg
        rules: list[tuple[str, Any, str]] = [
            ("nodes.honest", self.honest, "must be >= 1"),
            ("nodes.byzantine", self.byzantine, "must be >= 0"),
            ("rounds", c.rounds, "must be >= 1"),
            ("batch_size", c.batch_size, "must be >= 1"),
            ("eval_every", c.eval_every, "must be >= 1"),
        ]
        for key, value, need in rules:
            low = 0 if key == "nodes.byzantine" else 1
            if value < low:
                raise ConfigError(f"{key} {need}. Got {key}={value}")
        if not c.lr > 0:
            raise ConfigError(f"lr must be > 0. Got lr={c.lr}")
        if not 0 <= c.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1). Got momentum={c.momentum}")
        if c.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0. Got weight_decay={c.weight_decay}")
        if self.remote and not c.get("cluster"):
            raise ConfigError("launcher=remote needs cluster=<file> placing the nodes on hosts")
        _ = self.cluster  # parse the cluster file and check it against the plan now
        self.check_security()
        self.logger.check()  # a missing tensorboard/mlflow fails now, not after the nodes started
        if self.decentralized:
            self.check_graph()
        else:
            self.check_rule(self.n)

    @functools.cached_property
    def keyring(self) -> Keyring | None:
        """security=curve: this host's keys (public allow-list plus its own secrets)."""
        return Keyring(self.security.keys) if self.security.name == SecurityKind.curve else None

    def check_security(self) -> None:
        """Plain TCP beyond loopback needs security=none said explicitly; CURVE needs keys
        for every node of the plan."""
        endpoints = [f"tcp://{self.topology.host}:0"] if self.topology.transport.value == "tcp" else []
        if self.cluster is not None:
            endpoints += [self.cluster.monitor.bind, self.cluster.monitor.advertised]
            endpoints += [e for p in self.cluster.places.values() for e in (p.bind, p.advertised)]
        check_plaintext(endpoints, str(SecurityKind(self.security.name).value))
        ring = self.keyring
        if ring is not None:
            for spec in self.plan():
                ring.public(spec.id)
            ring.public("monitor")

    def check_graph(self) -> None:
        """The honest subgraph is connected and every honest node's in-degree supports the rule."""
        g = self.neighbours()
        comps = honest_components(g, self.honest)
        if len(comps) > 1:
            parts = "; ".join(str(sorted(c)) for c in comps)
            raise ConfigError(f"graph={self.graph.name.value}: the honest nodes are not connected: components {parts}")
        by_degree: dict[int, list[int]] = {}
        for i in range(self.honest):
            by_degree.setdefault(len(g[i]) + 1, []).append(i)
        for n_i, nodes in sorted(by_degree.items()):
            try:
                self.check_rule(n_i)
            except ConfigError as exc:
                raise ConfigError(f"graph={self.graph.name.value}: honest nodes {nodes} aggregate only {n_i} vectors (their own + in-neighbours): {exc}") from None

    def check_rule(self, n: int) -> None:
        """Run pre-aggregators and aggregator once on random (n, 8) inputs, so their
        own limit checks (n vs f) fire now, before any process starts."""
        x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        names = "+".join([p.name for p in self.preaggs] + [self.aggregator.name])
        try:
            self.aggregate(x, generator=torch.Generator().manual_seed(0))
        except ByzctlError as exc:
            raise ConfigError(f"{names} cannot run with nodes.honest={self.honest}, nodes.byzantine={self.byzantine}: {exc}") from None
