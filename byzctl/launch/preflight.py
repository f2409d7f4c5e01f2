"""What the launcher checks and prepares on its own host before it starts anything.

`Experiment.check()` runs on every node and checks the run's config; these probe the host
that launches it: the data it loads, the ports it listens on, the memory its host processes
need, and the compiled kernel its nodes load.
"""

from __future__ import annotations

import math

import torch

from byzctl.attacks.base import Knowledge
from byzctl.config.experiment import Experiment
from byzctl.data.base import Partition
from byzctl.data.partition import partition
from byzctl.errors import ByzctlError, ConfigError
from byzctl.topology.base import Role, Transport
from byzctl.transport.sockets import probe_bind

NODE_PROCESS_MB = 400
"""Memory of one host process (PSS): a 6-process ps run held ~2.42 GB, flat over 1,000
rounds (FACTS.md), when each process imported torch on its own; forked from the fork
server they share more (case A of `byzctl bench scale`: 14 processes, 2.0 GB)."""
PACKED_NODE_MB = 18
"""What one more logical node adds to a host process (its model, optimizer state,
sockets, thread, its share of the pages a forked host copies), measured for case B of
`byzctl bench scale` (126 nodes in 6 processes: 4.6 GB PSS)."""


def mem_available_mb() -> int | None:
    """This host's MemAvailable (/proc/meminfo) in MB, or None where there is none."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def warm(exp: Experiment) -> None:
    """Build the run's compiled CPU kernel, if its rule has one (`Aggregator.compiled`),
    by running the rule once on fp32 vectors wide enough to reach it: numba caches
    it on disk, so the nodes load it (about 1 s) instead of each compiling it (about
    2 s per process, all at once) inside their first round. Run by the launcher;
    nothing to build for a CUDA run, whose nodes use the Triton kernel."""
    if not type(exp.aggregator).compiled or exp.device != "cpu":
        return
    from byzctl.aggregators._numba_select import MIN_COLUMNS

    x = torch.randn(exp.n, MIN_COLUMNS, generator=torch.Generator().manual_seed(0))  # (n, MIN_COLUMNS) fp32
    exp.aggregate(x, generator=torch.Generator().manual_seed(0))



def check_host(exp: Experiment) -> None:
    """What the launcher checks on its own host before it starts anything: the data it
    loads (and the model's size) and the ports it listens on. Not part of `check()`,
    which every node runs too: a node would read the data twice, a remote node with
    dataset.ship has none, and a node would find the ports its siblings bound taken."""
    local = exp.local_nodes()
    specs = {s.id: s for s in exp.plan()}
    if exp.dataset.ship or any(specs[i].role is not Role.relay for i in local):
        check_data(exp)
    check_ports(exp, local)
    if exp.cfg.get("memory_check", True):
        check_memory(exp, len(exp.hosts()), len(local))

def check_memory(exp: Experiment, processes: int, nodes: int) -> None:
    """The host processes this launcher starts, and the nodes they carry, fit in this
    host's available memory."""
    need, have = processes * NODE_PROCESS_MB + nodes * PACKED_NODE_MB, mem_available_mb()
    if have is not None and need > have:
        raise ConfigError(
            f"nodes.honest={exp.honest}, nodes.byzantine={exp.byzantine}: {processes} host processes carrying {nodes} "
            f"nodes need about {need} MB ({NODE_PROCESS_MB} MB a process, {PACKED_NODE_MB} MB a node) but only {have} MB "
            f"is available (MemAvailable); run fewer nodes or processes (processes=auto packs them), "
            f"or set memory_check=false to launch anyway")

def check_data(exp: Experiment) -> None:
    """The dataset loads here (for a csv: every row parses), the model builds for its
    inputs, and the largest message of the run fits in topology.max_message_mb."""
    shape, classes = exp.dataset.peek(int(exp.cfg.seed))
    if Partition(exp.dataset.partition) is Partition.dirichlet:  # a small alpha may leave a node no data
        splits = exp.dataset.load(int(exp.cfg.seed))
        partition(splits.y_train, exp.honest, scheme=Partition.dirichlet, seed=int(exp.cfg.seed), alpha=exp.dataset.alpha)
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            params = list(exp.model.build(shape, classes).parameters())
    except ByzctlError:
        raise
    except Exception:  # noqa: BLE001 - a plugin's model may not build on meta: build it for real
        params = list(exp.model.build(shape, classes).parameters())
    d = sum(p.numel() for p in params)
    vectors, what = largest_message(exp)
    need = vectors * d * (params[0].element_size() if params else 4)
    limit = exp.topology.max_message_mb * 2**20
    if need > limit:
        raise ConfigError(
            f"topology.max_message_mb={exp.topology.max_message_mb} is too small for model={exp.model.name}: "
            f"{what} holds {vectors} x {d} parameters = {need / 2**20:.3f} MiB; "
            f"set topology.max_message_mb >= {math.ceil(need / 2**20)}")

def largest_message(exp: Experiment) -> tuple[int, str]:
    """(parameter vectors, what) of the largest message a node of this run sends."""
    if exp.decentralized:
        return 3, "a peer's checkpoint (parameters, momentum, last aggregate)"
    if exp.byzantine and exp.attack.knowledge == Knowledge.omniscient and exp.honest >= 2:
        return exp.honest, "the server's oracle message (every honest vector, to the Byzantine workers)"
    return 2, "the server's checkpoint (parameters, last aggregate)"

def check_ports(exp: Experiment, local: list[int]) -> None:
    """This host can listen where it must: the cluster file's monitor and the places of
    its local listeners (ps server, hub relay, mesh peers); without a cluster file, on
    topology.host. Only a probe (bind, then close): a port taken between this and the
    node's own bind still fails the run after launch, naming the endpoint."""
    if exp.cluster is None:
        why = probe_bind(exp.topology.host, 0) if exp.topology.transport is Transport.tcp else None
        if why:
            raise ConfigError(f"topology.host={exp.topology.host}: the nodes cannot listen there: {why}")
        return
    specs = {s.id: s for s in exp.plan()}
    listeners = [("the monitor", exp.cluster.monitor)]
    listeners += [(f"node {i} ({specs[i].label})", exp.cluster.places[i]) for i in local if exp.topology.binds(specs[i])]
    for who, place in listeners:
        why = probe_bind(place.bind_host, place.port)
        if why:
            raise ConfigError(f"cluster file {str(exp.cluster.path)!r}: {who} cannot listen on {place.bind_host}:{place.port}: {why}")
