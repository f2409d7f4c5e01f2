"""A run's config, instantiated and checked: what the launcher and every node build on."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from byzctl.aggregators.base import Aggregator
from byzctl.attacks.base import Attack
from byzctl.config.build import build
from byzctl.config.launchers import Launcher, LauncherKind, launcher_kind
from byzctl.config.schema import Security, SecurityKind
from byzctl.data.base import Dataset
from byzctl.errors import ByzctlError, ConfigError
from byzctl.loggers.base import Logger
from byzctl.loggers.none import NoLogger
from byzctl.models.base import ModelConfig
from byzctl.preagg.base import Preagg, aggregate
from byzctl.topology import packing
from byzctl.topology.base import NodeSpec, Topology, Transport
from byzctl.topology.cluster import Cluster, Place, load_cluster
from byzctl.topology.decentralized import Decentralized
from byzctl.topology.graph import Graph, honest_components
from byzctl.transport.curve import Keyring, check_plaintext

HOST_LOCAL_KEYS = ("launcher", "cluster", "local_nodes", "resume", "logger", "memory_check", "processes")
"""Keys that say how this host joins or records the run, not what the run is: not hashed."""

MIN_ROUND_TIMEOUT_S = 1.0
"""Shortest topology.round_timeout allowed: rounds measured 0.3-0.5 s on 2 cores (README,
`byzctl bench rounds`), and a loaded machine stretches them; below 1 s rounds time out."""

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
    launcher: Launcher
    """Where the node processes come from (local, remote, slurm, ray)."""
    bind_host: str | None = None
    """Set in a host process a scheduler started (a SLURM task, a Ray actor; not config):
    the address of its machine its nodes listen on (any free port), in place of
    topology.host, and report to the monitor."""

    @classmethod
    def from_cfg(cls, cfg: DictConfig, *, placed: bool = True) -> Experiment:
        """Instantiate every component and check every limit, before any process starts.
        `placed=False` checks values only, not the plan against a cluster file, keys or the
        rule's limits: `byzctl node` checks its own overrides so before it asks the monitor
        for the run's config (whose node counts it does not know yet)."""
        parts = {key: build(cfg[key], key) for key in ("topology", "aggregator", "attack", "dataset", "model", "device")}
        preaggs = [build(node, f"preagg.{name}") for name, node in cfg.preagg.items()]
        graph = build(cfg.graph, "graph") if "graph" in cfg else Graph()
        security = build(cfg.security, "security") if "security" in cfg else Security()
        logger = build(cfg.logger, "logger") if "logger" in cfg else NoLogger()
        launcher = build(cfg.launcher, "launcher") if isinstance(cfg.get("launcher"), DictConfig) else Launcher(name=launcher_kind(cfg.get("launcher")))
        exp = cls(
            cfg=cfg, topology=parts["topology"], aggregator=parts["aggregator"], preaggs=preaggs,
            attack=parts["attack"], dataset=parts["dataset"], model=parts["model"],
            device=parts["device"].resolve(), honest=int(cfg.nodes.honest), byzantine=int(cfg.nodes.byzantine),
            graph=graph, security=security, logger=logger, launcher=launcher,
        )
        exp.check(placed=placed)
        return exp

    # -- derived -----------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.honest + self.byzantine

    @functools.cached_property
    def hash(self) -> str:
        """The config's hash, computed once: the monitor compares it in 1,101 hellos at
        case C, and composing YAML for each took two thirds of the launcher's time."""
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

    def local_nodes(self) -> list[int]:
        """The nodes the launcher on this host starts: all of them, or with launcher=remote
        the ones `local_nodes` lists, else those the cluster file places on this host."""
        ids = [s.id for s in self.plan()]
        if self.launcher.name.engine:
            return []  # SLURM or Ray starts them, elsewhere
        if not self.remote:
            return ids
        chosen = self.cfg.get("local_nodes")
        if chosen is not None:
            unknown = sorted(set(chosen) - set(ids))
            if unknown:
                raise ConfigError(f"local_nodes {unknown} are not nodes of this run; ids are {ids}")
            return sorted(chosen)
        from byzctl.topology.cluster import is_local_host

        return [i for i in ids if is_local_host(self.place(i).host)]  # type: ignore[union-attr]

    @property
    def remote(self) -> bool:
        return LauncherKind(self.launcher.name) is LauncherKind.remote

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
    def check(self, *, placed: bool = True) -> None:
        self.check_values()
        if not placed:
            return
        if self.remote and not self.cfg.get("cluster"):
            raise ConfigError("launcher=remote needs cluster=<file> placing the nodes on hosts")
        if self.launcher.name.engine and self.cfg.get("cluster"):
            raise ConfigError(f"launcher={self.launcher.name.value} places the nodes itself; it takes no cluster file "
                              f"(cluster={self.cfg.get('cluster')})")
        _ = self.cluster  # parse the cluster file and check it against the plan now
        self.check_listeners()
        self.check_security()
        if self.decentralized:
            self.check_graph()
        else:
            self.check_rule(self.n)

    def check_values(self) -> None:
        """Each setting on its own: counts, rates, seeds, deadlines, the logger's library."""
        c = self.cfg
        rules: list[tuple[str, Any, int]] = [
            ("nodes.honest", self.honest, 1),
            ("nodes.byzantine", self.byzantine, 0),
            ("rounds", c.rounds, 1),
            ("batch_size", c.batch_size, 1),
            ("eval_every", c.eval_every, 1),
            ("checkpoint_every", c.checkpoint_every, 0),
            ("keep_checkpoints", c.keep_checkpoints, 1),
            ("device.threads", c.device.threads, 1),
        ]
        for key, value, low in rules:
            if value < low:
                raise ConfigError(f"{key} must be >= {low}. Got {key}={value}")
        if not 0 < c.lr < math.inf:
            raise ConfigError(f"lr must be > 0 and finite. Got lr={c.lr}")
        if not 0 <= c.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1). Got momentum={c.momentum}")
        if not 0 <= c.weight_decay < math.inf:
            raise ConfigError(f"weight_decay must be >= 0 and finite. Got weight_decay={c.weight_decay}")
        if not 0 <= c.seed < 2**63:  # torch generators take 64-bit seeds
            raise ConfigError(f"seed must be in [0, 2**63). Got seed={c.seed}")
        self.check_timeouts()
        packing.parse(c.get("processes", packing.AUTO))
        self.logger.check()  # a missing tensorboard/mlflow fails now, not after the nodes started

    def check_timeouts(self) -> None:
        """Deadlines a run can meet (Topology checks each is positive; these relate them)."""
        t = self.topology
        if t.peer_timeout < 2 * t.heartbeat_interval:
            raise ConfigError(
                f"topology.peer_timeout={t.peer_timeout} must be at least two heartbeat intervals "
                f"(topology.heartbeat_interval={t.heartbeat_interval}), or live nodes are declared lost between heartbeats")
        if t.round_timeout < MIN_ROUND_TIMEOUT_S:
            raise ConfigError(
                f"topology.round_timeout={t.round_timeout} is shorter than a round can take "
                f"(a message round trip plus a gradient step); use >= {MIN_ROUND_TIMEOUT_S}")

    def check_listeners(self) -> None:
        """No two listening sockets of a cluster file (the monitor, the server or relay,
        mesh peers) share a host:port."""
        if self.cluster is None:
            return
        listeners = [("the monitor", self.cluster.monitor)]
        listeners += [(f"node {s.id}", self.cluster.places[s.id]) for s in self.plan() if self.topology.binds(s)]
        seen: dict[tuple[str, int], str] = {}
        for who, place in listeners:
            first = seen.setdefault((place.host, place.port), who)
            if first != who:
                raise ConfigError(f"cluster file {str(self.cluster.path)!r}: {first} and {who} both listen on {place.host}:{place.port}")

    @functools.cached_property
    def keyring(self) -> Keyring | None:
        """security=curve: this host's keys (public allow-list plus its own secrets)."""
        if self.security.name != SecurityKind.curve:
            return None
        assert self.security.keys, "Security.__post_init__ requires keys with security=curve"
        return Keyring(self.security.keys)

    def check_security(self) -> None:
        """Plain TCP beyond loopback needs security=none said explicitly; CURVE needs keys
        for every node of the plan."""
        endpoints = [f"tcp://{self.topology.host}:0"] if self.topology.transport is Transport.tcp else []
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

    def hosts(self) -> list[list[int]]:
        """The host processes this launcher starts, as lists of node ids (`processes=`)."""
        local = set(self.local_nodes())
        return packing.pack([s for s in self.plan() if s.id in local], self.cfg.get("processes", packing.AUTO))
