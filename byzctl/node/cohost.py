"""What the logical nodes of one host process share (node/host.py): one ZeroMQ context,
one gradient batcher, and one adversary for its Byzantine ps workers.

A ps run's omniscient Byzantine workers are one adversary: the attack turns the round's
honest vectors (h, d) into all f Byzantine vectors (f, d) at once, and worker k sends row
k. One process per node, every Byzantine worker receives the server's oracle view and
computes the same (f, d) (its randomness is the adversary's, not the node's: see
`ADVERSARY`). Packed, the Byzantine workers of a host compute it once: the server sends
the view to one of them (the leader, the lowest id, which says so in its hello), the
leader posts the (f, d) result here, and its siblings take their rows. With 100 honest
and 25 Byzantine workers of a 79,510-parameter MLP that is one 32 MB oracle message and
one attack a round instead of 25 of each; with 1,000 and 100, one 318 MB message
instead of 100.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import zmq
from torch import Tensor

from byzctl.learning.batched import GradientBatcher

ADVERSARY = "adversary"
"""Who draws a ps attack's randomness (learning/seeds.py `generator(seed, ADVERSARY, round,
purpose)`): the adversary, the same for every Byzantine worker, so a worker's row of the
(f, d) attack is the same whether it computed the attack itself or its host's leader did."""

KEEP_ROUNDS = 2
"""Rounds of results the adversary keeps: a sibling still finishing round r - 1 finds it."""


class Adversary:
    """The Byzantine ps workers of one host: the leader posts each round's (f, d) attack,
    the siblings take their rows."""

    def __init__(self, members: list[int]):
        self.members = sorted(members)
        self.leader = self.members[0] if self.members else None
        self._lock = threading.Lock()
        self._results: dict[int, Tensor] = {}  # round -> (f, d)
        self._wake: dict[int, int] = {}  # sibling id -> its wake pipe

    def shares(self, node: int) -> bool:
        """Whether `node` takes its vectors from this adversary (it has siblings)."""
        return node in self.members and len(self.members) > 1

    def watch(self, node: int, wake_fd: int) -> None:
        """Write a byte to `wake_fd` whenever a round's result is posted."""
        with self._lock:
            self._wake[node] = wake_fd

    def leave(self, node: int) -> None:
        with self._lock:
            self._wake.pop(node, None)

    def post(self, round: int, out: Tensor) -> None:
        """The leader's (f, d) attack of `round`."""
        with self._lock:
            self._results[round] = out
            for old in [r for r in self._results if r <= round - KEEP_ROUNDS]:
                del self._results[old]
            fds = list(self._wake.values())
        for fd in fds:
            try:
                os.write(fd, b"\0")
            except (BlockingIOError, OSError):  # a full pipe already wakes its reader; a closed one left
                pass

    def take(self, round: int) -> Tensor | None:
        """The (f, d) attack of `round`, once the leader posted it."""
        with self._lock:
            return self._results.get(round)


@dataclass
class Cohost:
    """What one host process gives each of its logical nodes."""

    ctx: zmq.Context
    batcher: GradientBatcher = field(default_factory=GradientBatcher)
    adversary: Adversary = field(default_factory=lambda: Adversary([]))
