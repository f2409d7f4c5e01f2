"""Packing: which logical nodes share a host process (`processes=`).

A host process carries one or many logical nodes; each keeps its own sockets,
heartbeats and state, while the process's imported torch and ZeroMQ context are
shared. `auto` gives small runs one process per node (what a deployment looks
like) and packs larger ones into two host processes per core (nodes of one host
take turns on its interpreter lock: case A, 13 workers on 2 cores, trained 300
rounds in 19.9 s in one worker host, 13.2 s in two, 11.6 s in four, 16.5 s in one
process per node), the central node (ps server, hub relay) in a process of its own.
"""

from __future__ import annotations

import os

from byzctl.errors import ConfigError
from byzctl.topology.base import NodeSpec

AUTO_PER_NODE_UP_TO = 8
"""`processes=auto` starts one process per node for runs of at most this many nodes."""

PER_NODE = "per_node"
AUTO = "auto"


def parse(value: object) -> str | int:
    """`processes=` as given: auto, per_node or a count of host processes (>= 1)."""
    text = str(value).strip()
    if text in (AUTO, PER_NODE):
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"processes must be auto, per_node or a number of host processes >= 1. Got processes={value}")
    return count


def pack(specs: list[NodeSpec], processes: object, cores: int | None = None) -> list[list[int]]:
    """The host processes for the nodes `specs` (those this launcher starts), as lists of
    node ids: a central node alone, the others in contiguous blocks (ring and id-order
    neighbours end up together), never an empty host."""
    how = parse(processes)
    ids = [s.id for s in specs]
    if how == PER_NODE or (how == AUTO and len(ids) <= AUTO_PER_NODE_UP_TO):
        return [[i] for i in ids]
    count = 1 + 2 * max(1, cores or os.cpu_count() or 1) if how == AUTO else int(how)
    central = [s.id for s in specs if s.role.central]
    rest = [s.id for s in specs if not s.role.central]
    if count == 1:
        return [central + rest]
    hosts = [[i] for i in central]
    blocks = max(1, min(len(rest), count - len(hosts)))
    size, extra = divmod(len(rest), blocks)
    start = 0
    for b in range(blocks):
        end = start + size + (1 if b < extra else 0)
        hosts.append(rest[start:end])
        start = end
    return [h for h in hosts if h]
