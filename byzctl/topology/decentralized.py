"""Decentralized topologies: every honest node trains, exchanges and aggregates itself.

- hub: every message passes through one relay process (it routes, learns nothing).
- mesh: every node binds its own inbox and dials its out-neighbours (TCP across
  machines; on one machine ipc://, as every topology).
- local: like mesh, every node a process on this machine, over ipc://.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from byzctl.topology.base import NodeSpec, Role, Topology, Transport


class Exchange(str, Enum):
    model = "model"
    """Send the half-stepped model; aggregate models."""
    gradient = "gradient"
    """Send the momentum gradient; aggregate, then step."""


@dataclass(kw_only=True)
class Decentralized(Topology):
    """Base config of the decentralized topologies."""

    _target_: str = "byzctl.topology.decentralized.Decentralized"
    exchange: Exchange = Exchange.model
    """What travels between neighbours: model (default) or gradient."""
    round_timeout: float = 30.0

    def plan(self, honest: int, byzantine: int) -> list[NodeSpec]:
        nodes = [NodeSpec(i, Role.peer, shard=i) for i in range(honest)]
        nodes += [NodeSpec(honest + j, Role.peer, byzantine=True, byz_index=j) for j in range(byzantine)]
        return nodes

    def binds(self, spec: NodeSpec) -> bool:
        return spec.role is Role.peer  # each peer's inbox (node/links.py MeshLinks)


@dataclass(kw_only=True)
class Mesh(Decentralized):
    """Config of `topology=mesh`."""

    _target_: str = "byzctl.topology.decentralized.Mesh"
    name: str = "mesh"


@dataclass(kw_only=True)
class Local(Decentralized):
    """Config of `topology=local`: one machine, ipc:// sockets in a private temp dir."""

    _target_: str = "byzctl.topology.decentralized.Local"
    name: str = "local"
    transport: Transport = Transport.ipc


@dataclass(kw_only=True)
class Hub(Decentralized):
    """Config of `topology=hub`: node n (after the peers) is the relay."""

    _target_: str = "byzctl.topology.decentralized.Hub"
    name: str = "hub"

    def plan(self, honest: int, byzantine: int) -> list[NodeSpec]:
        return super().plan(honest, byzantine) + [NodeSpec(honest + byzantine, Role.relay)]

    def binds(self, spec: NodeSpec) -> bool:
        return spec.role is Role.relay  # the peers only dial the relay
