"""Who talks to whom in decentralized topologies: seeded communication graphs.

A graph is built over node ids 0..n-1 (honest first, then Byzantine) and returned
as in-neighbour sets: `graph[i]` is the set of nodes whose vectors node i receives.
Undirected kinds give symmetric sets; an explicit edge list may be directed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum

from byzctl.errors import ConfigError


class GraphKind(str, Enum):
    complete = "complete"
    ring = "ring"
    random_regular = "random_regular"
    erdos_renyi = "erdos_renyi"
    edges = "edges"


@dataclass(kw_only=True)
class Graph:
    """Config of `graph=<kind>`."""

    _target_: str = "byzctl.topology.graph.Graph"
    name: GraphKind = GraphKind.complete
    """complete, ring, random_regular, erdos_renyi or edges (explicit)."""
    k: int = 1
    """ring: neighbours on each side; random_regular: the degree."""
    p: float = 0.5
    """erdos_renyi: probability of each edge."""
    edges: list[list[int]] = field(default_factory=list)
    """edges: [[u, v], ...]: v receives from u (and u from v unless directed)."""
    directed: bool = False
    """edges: whether [u, v] is one-way."""
    seed: int | None = None
    """Seed of random graphs; null takes the run's seed."""

    def build(self, n: int, seed: int) -> dict[int, set[int]]:
        """In-neighbours of every node, {i: {j, ...}}, no self-loops."""
        seed = seed if self.seed is None else self.seed
        kind = GraphKind(self.name)
        if n < 2:
            raise ConfigError(f"a decentralized graph needs at least 2 nodes. Got n={n}")
        if kind is GraphKind.complete:
            return {i: set(range(n)) - {i} for i in range(n)}
        if kind is GraphKind.ring:
            if not 1 <= self.k < n / 2 + 0.5:
                raise ConfigError(f"graph=ring needs 1 <= k <= n/2. Got k={self.k}, n={n}")
            return {i: {(i + d) % n for d in range(-self.k, self.k + 1) if d} for i in range(n)}
        if kind is GraphKind.random_regular:
            return _random_regular(n, self.k, seed)
        if kind is GraphKind.erdos_renyi:
            if not 0 < self.p <= 1:
                raise ConfigError(f"graph=erdos_renyi needs 0 < p <= 1. Got p={self.p}")
            rng = random.Random(seed)
            g: dict[int, set[int]] = {i: set() for i in range(n)}
            for i in range(n):
                for j in range(i + 1, n):
                    if rng.random() < self.p:
                        g[i].add(j)
                        g[j].add(i)
            return g
        g = {i: set() for i in range(n)}
        for edge in self.edges:
            if len(edge) != 2 or not all(0 <= v < n for v in edge) or edge[0] == edge[1]:
                raise ConfigError(f"graph edge {list(edge)} must join two different nodes among 0..{n - 1}")
            u, v = edge
            g[v].add(u)
            if not self.directed:
                g[u].add(v)
        return g


def _random_regular(n: int, k: int, seed: int) -> dict[int, set[int]]:
    """A uniformly shuffled k-regular simple graph (pairing model with retries)."""
    if not 1 <= k < n or (n * k) % 2:
        raise ConfigError(f"graph=random_regular needs 1 <= k < n and n*k even. Got k={k}, n={n}")
    rng = random.Random(seed)
    for _ in range(1000):
        stubs = [i for i in range(n) for _ in range(k)]
        rng.shuffle(stubs)
        g: dict[int, set[int]] = {i: set() for i in range(n)}
        ok = True
        for a, b in zip(stubs[::2], stubs[1::2]):
            if a == b or b in g[a]:
                ok = False
                break
            g[a].add(b)
            g[b].add(a)
        if ok:
            return g
    raise ConfigError(f"could not draw a simple {k}-regular graph on {n} nodes; try another seed or k")


def honest_components(graph: dict[int, set[int]], honest: int) -> list[set[int]]:
    """Connected components of the honest subgraph (edges in either direction)."""
    adj: dict[int, set[int]] = {i: set() for i in range(honest)}
    for v, ins in graph.items():
        for u in ins:
            if u < honest and v < honest:
                adj[u].add(v)
                adj[v].add(u)
    seen: set[int] = set()
    comps = []
    for s in range(honest):
        if s in seen:
            continue
        comp, todo = set(), [s]
        while todo:
            x = todo.pop()
            if x not in comp:
                comp.add(x)
                todo.extend(adj[x] - comp)
        seen |= comp
        comps.append(comp)
    return comps
