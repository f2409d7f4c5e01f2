"""Cluster files: where each node of a run lives when it spans machines.

The formats of the seeds, YAML or JSON:

    monitor: {host: 10.0.0.1, port: 29400}                 # optional; defaults below
    nodes:   [{id: 0, host: 10.0.0.2, port: 9000, type: honest, bind_host: 0.0.0.0, data_shard: 0}, ...]

and for `topology=ps` (or the relay of `topology=hub`):

    server:  {host: 10.0.0.1, port: 9000, bind_host: 0.0.0.0}
    workers: [{id: 1, host: 10.0.0.2, port: 9000, type: honest, data_shard: 0}, ...]

Ids are byzctl's node ids: in ps the server is node 0 and workers are 1..n; in
decentralized runs peers are 0..n-1 and the hub relay is node n. A ps file that numbers
its workers from 0, as the seeds' files do, is read as workers 1..n in the same order
(byzctl's id = the file's id + 1). Honest nodes come first, so `type` must agree with
`nodes.honest` / `nodes.byzantine`.

The seeds' files also carry training settings, which `byzctl run` applies as overrides
(`settings()`; an override typed on the command line wins):

    training:    {rounds, batch_size, learning_rate, momentum}
    aggregation: {method: coordinate_wise_median | multi_krum | <any byzctl aggregator>, krum_f, krum_q}
    workers/nodes: [{..., attack_scale: -1.0}]   # a Byzantine node's sign-flip scale

Any other key is an error naming it and the known ones.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from byzctl.errors import ConfigError
from byzctl.topology.base import NodeSpec, Role

DEFAULT_MONITOR_PORT = 29400

TOP_KEYS = ("monitor", "server", "workers", "nodes", "training", "aggregation")
NODE_KEYS = ("id", "host", "port", "type", "bind_host", "data_shard", "attack_scale")
PLACE_KEYS = ("host", "port", "bind_host")
TRAINING = {"rounds": "rounds", "batch_size": "batch_size", "learning_rate": "lr", "momentum": "momentum"}
"""The seeds' training keys -> byzctl's config keys."""
AGGREGATION = {"coordinate_wise_median": "cw_median", "multi_krum": "multi_krum", "krum": "krum",
               "coordinate_wise_trimmed_mean": "cw_trimmed_mean", "geometric_median": "geometric_median"}
"""The seeds' aggregation methods -> byzctl aggregators (byzctl's own names are accepted too)."""


@dataclass(frozen=True)
class Place:
    """Where one process binds and how others reach it."""

    host: str
    port: int
    bind_host: str

    @property
    def advertised(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def bind(self) -> str:
        return f"tcp://{self.bind_host}:{self.port}"


@dataclass
class Cluster:
    path: Path
    monitor: Place
    places: dict[int, Place]
    shards: dict[int, int]

    def missing_message(self, ids: list[int]) -> str:
        where = ", ".join(f"{i} ({self.places[i].host}:{self.places[i].port})" for i in ids if i in self.places)
        return f"not enough peers: nodes {ids} did not join: {where}"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"cluster file {str(path)!r} not found")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cluster file {str(path)!r} cannot be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"cluster file {str(path)!r} must hold a mapping with 'nodes' or 'server'/'workers'")
    _known(data, TOP_KEYS, "the file", path)
    for section in ("training", "aggregation"):
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"cluster file {str(path)!r}: '{section}' must be a mapping, got {data[section]!r}")
    _known(data.get("training") or {}, tuple(TRAINING), "training", path)
    _known(data.get("aggregation") or {}, ("method", "krum_f", "krum_q"), "aggregation", path)
    return data


def _known(entry: dict[str, Any], known: tuple[str, ...], what: str, path: Path) -> None:
    """A key byzctl does not know (a typo such as `tpye`) is an error, never dropped."""
    unknown = sorted(str(k) for k in entry if k not in known)
    if unknown:
        raise ConfigError(f"cluster file {str(path)!r}: unknown key {unknown[0]!r} in {what}; known keys: {', '.join(known)}")


def _place(entry: Any, what: str, path: Path) -> Place:
    if not isinstance(entry, dict) or "host" not in entry or "port" not in entry:
        raise ConfigError(f"cluster file {str(path)!r}: {what} needs host and port, got {entry!r}")
    _known(entry, NODE_KEYS if what.startswith("node") else PLACE_KEYS, what, path)
    port = entry["port"]
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"cluster file {str(path)!r}: {what} has bad port {port!r}")
    host = str(entry["host"])
    return Place(host=host, port=port, bind_host=str(entry.get("bind_host", host)))


def load_cluster(path: str | Path, plan: list[NodeSpec]) -> Cluster:
    """Parse and check a cluster file against the run's plan."""
    path = Path(path).expanduser()
    data = _read(path)
    by_id = {s.id: s for s in plan}
    places: dict[int, Place] = {}
    shards: dict[int, int] = {}
    central = [s for s in plan if s.role in (Role.server, Role.relay)]
    if central:
        if "server" not in data:
            raise ConfigError(f"cluster file {str(path)!r} needs a 'server' entry for the {central[0].role.value} (node {central[0].id})")
        places[central[0].id] = _place(data["server"], "server", path)
    entries = _entries(data, path)
    shift = 1 if zero_based(data) and any(s.role is Role.server for s in plan) else 0
    for entry in entries:
        node_id = entry["id"] + shift
        if node_id in places:
            raise ConfigError(f"cluster file {str(path)!r}: duplicate node id {node_id}")
        spec = by_id.get(node_id)
        if spec is None or spec.role in (Role.server, Role.relay):
            ids = sorted(i for i, s in by_id.items() if s.role not in (Role.server, Role.relay))
            raise ConfigError(f"cluster file {str(path)!r}: node id {node_id} is not a {'worker' if central else 'peer'} of this run; expected ids {ids}")
        kind = entry.get("type", "honest")
        if kind not in ("honest", "byzantine") or (kind == "byzantine") != spec.byzantine:
            raise ConfigError(f"cluster file {str(path)!r}: node {node_id} has type {kind!r}, the run plans it {'byzantine' if spec.byzantine else 'honest'} (honest ids come first)")
        places[node_id] = _place(entry, f"node {node_id}", path)
        if "data_shard" in entry:
            shards[node_id] = int(entry["data_shard"])
    missing = sorted(set(by_id) - set(places))
    if missing:
        raise ConfigError(f"cluster file {str(path)!r} does not place nodes {missing}")
    mon = data.get("monitor") or {"host": places[min(places)].host, "port": DEFAULT_MONITOR_PORT}
    return Cluster(path=path, monitor=_place(mon, "monitor", path), places=places, shards=shards)


def _entries(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    entries = data.get("workers") if "workers" in data else data.get("nodes")
    if not isinstance(entries, list):
        raise ConfigError(f"cluster file {str(path)!r} needs a list of 'nodes' (or 'workers' for ps)")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or isinstance(entry.get("id"), bool):
            raise ConfigError(f"cluster file {str(path)!r}: every node needs an integer id, got {entry!r}")
    return entries


def zero_based(data: dict[str, Any]) -> bool:
    """A ps file in the seeds' numbering: a `server` entry apart and `workers` from id 0."""
    workers = data.get("workers")
    return "server" in data and isinstance(workers, list) and any(isinstance(w, dict) and w.get("id") == 0 for w in workers)


def node_id_of_worker(path: str | Path, worker: int) -> int:
    """byzctl's node id of ps worker `worker` as the cluster file numbers it (`--worker-id`)."""
    path = Path(path).expanduser()
    return worker + 1 if zero_based(_read(path)) else worker


def node_ids(path: str | Path) -> list[int]:
    """The node ids a cluster file places, read before the run's config is known (`byzctl
    node` checks its --id so): its entries, and the server or relay its `server` entry
    places (node 0 when the entries start at 1 as ps workers do, else the hub's last id)."""
    path = Path(path).expanduser()
    data = _read(path)
    shift = 1 if zero_based(data) else 0
    ids: list[int] = []
    for entry in _entries(data, path):
        node_id = entry["id"] + shift
        if node_id in ids:
            raise ConfigError(f"cluster file {str(path)!r}: duplicate node id {node_id}")
        ids.append(node_id)
    if "server" in data and ids:
        ids.append(0 if min(ids) >= 1 else max(ids) + 1)
    return sorted(ids)


def monitor_endpoint(path: str | Path) -> str:
    """Where a node of this cluster file reaches the monitor, read before the run's config
    is known (the same default as `load_cluster`: the lowest id's host, port 29400)."""
    path = Path(path).expanduser()
    data = _read(path)
    if "monitor" in data:
        return _place(data["monitor"], "monitor", path).advertised
    first = data["server"] if "server" in data else min(_entries(data, path), key=lambda e: e["id"], default=None)
    if first is None:
        raise ConfigError(f"cluster file {str(path)!r} places no node")
    return _place({"host": first.get("host"), "port": DEFAULT_MONITOR_PORT} if isinstance(first, dict) else first, "monitor", path).advertised


def settings(path: str | Path) -> list[tuple[str, Any, str]]:
    """The run settings a seeds' cluster file carries, as (byzctl key, value, where in
    the file) overrides; `byzctl run` applies them unless the command line sets the key."""
    path = Path(path).expanduser()
    data = _read(path)
    out: list[tuple[str, Any, str]] = []
    for key, value in (data.get("training") or {}).items():
        out.append((TRAINING[key], value, f"training.{key}"))
    agg = data.get("aggregation") or {}
    if "method" in agg:
        method = str(agg["method"])
        out.append(("aggregator", AGGREGATION.get(method, method), "aggregation.method"))
    if "krum_f" in agg:
        out.append(("aggregator.f", agg["krum_f"], "aggregation.krum_f"))
    if "krum_q" in agg:
        out.append(("aggregator.m", agg["krum_q"], "aggregation.krum_q"))
    scales = {e["attack_scale"] for e in _entries(data, path) if "attack_scale" in e}
    if len(scales) > 1:
        raise ConfigError(f"cluster file {str(path)!r}: attack_scale differs between nodes ({sorted(scales)}); byzctl runs one attack config per run")
    if scales:
        out += [("attack", "sign_flip", "attack_scale"), ("attack.scale", scales.pop(), "attack_scale")]
    return out


def is_local_host(host: str) -> bool:
    """Whether `host` names this machine (so the launcher starts that node here)."""
    if host in ("localhost", "0.0.0.0", "::1") or host.startswith("127."):
        return True
    names = {socket.gethostname(), socket.getfqdn()}
    if host in names:
        return True
    try:
        mine = {a[4][0] for n in names for a in socket.getaddrinfo(n, None)}
        theirs = {a[4][0] for a in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(mine & theirs)
