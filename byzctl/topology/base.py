"""What every topology config shares, and the node plan it produces (pure data)."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from enum import Enum


class Transport(str, Enum):
    """How node sockets are addressed on one machine."""

    auto = "auto"
    """ipc when `host` is a loopback address (the default: this machine only), else tcp."""
    tcp = "tcp"
    ipc = "ipc"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name, an interface or `*`
        return False


class Role(str, Enum):
    server = "server"
    worker = "worker"
    peer = "peer"
    relay = "relay"

    @property
    def central(self) -> bool:
        """The run cannot go on without this node (the ps server, the hub relay)."""
        return self in (Role.server, Role.relay)

    @property
    def evaluates(self) -> bool:
        """This node evaluates models and finishes the run (server, peers)."""
        return self in (Role.server, Role.peer)

    @property
    def trains(self) -> bool:
        """This node trains on a data shard (workers, peers)."""
        return self in (Role.worker, Role.peer)


@dataclass(frozen=True)
class NodeSpec:
    """One process of a run: its id, role and whether it is Byzantine."""

    id: int
    role: Role
    byzantine: bool = False
    byz_index: int = -1
    """Index among the Byzantine nodes (row of the attack's (f, d) output), -1 if honest."""
    shard: int = -1
    """Index of the honest data shard this node trains on, -1 if none."""

    @property
    def label(self) -> str:
        kind = "byz" if self.byzantine else ("honest" if self.shard >= 0 else self.role.value)
        return f"{self.role.value}/{kind}" if self.role is not Role.server else "server"


@dataclass(kw_only=True)
class Topology:
    """Base config of a topology."""

    _target_: str = "byzctl.topology.base.Topology"
    name: str = ""
    """The topology's name, as in `topology=<name>`."""
    transport: Transport = Transport.auto
    """How nodes listen when no cluster file places them (every node on this machine):
    ipc (unix sockets in a private 0700 directory, which other local users cannot
    reach) or tcp on `host`; auto (default) is ipc unless `host` was set to an address
    off loopback. A cluster file's places are always TCP."""
    host: str = "127.0.0.1"
    """Address nodes bind and connect to when no cluster file places them."""
    round_timeout: float = 60.0
    """Seconds a node waits for a round's messages before giving up on the missing ones."""
    quorum_deadline: float = 2.0
    """Once n - f inputs arrived, seconds to wait for the rest before aggregating."""
    join_timeout: float = 60.0
    """Seconds the launcher waits for every node to say hello."""
    heartbeat_interval: float = 0.5
    """Seconds between application heartbeats to the monitor."""
    peer_timeout: float = 15.0
    """Seconds without a heartbeat after which the monitor declares a node lost (hung or dead)."""
    sndhwm: int = 4
    """ZeroMQ send high-water mark (messages) on data sockets."""
    max_message_mb: float = 1024.0
    """Largest tensor payload (MiB) a node accepts in one message."""
    extra: dict[str, str] = field(default_factory=dict)
    """Reserved for plugins."""

    def __post_init__(self) -> None:
        from byzctl.errors import ConfigError

        # Finite: a node turns these into deadlines, poll timeouts and byte counts.
        for key in ("round_timeout", "join_timeout", "heartbeat_interval", "peer_timeout", "max_message_mb"):
            value = getattr(self, key)
            if not 0 < value < math.inf:
                raise ConfigError(f"topology.{key} must be > 0 and finite. Got {key}={value}")
        if not 0 <= self.quorum_deadline < math.inf:
            raise ConfigError(f"topology.quorum_deadline must be >= 0 and finite. Got quorum_deadline={self.quorum_deadline}")
        if self.sndhwm < 1:
            raise ConfigError(f"topology.sndhwm must be >= 1. Got sndhwm={self.sndhwm}")
        if self.transport is Transport.auto:
            self.transport = Transport.ipc if _is_loopback(self.host) else Transport.tcp

    def binds(self, spec: NodeSpec) -> bool:
        """Whether node `spec` listens on a socket the others dial (its cluster-file port)."""
        return spec.role in (Role.server, Role.relay)

    def plan(self, honest: int, byzantine: int) -> list[NodeSpec]:
        """Every process of the run, in id order."""
        raise NotImplementedError
