"""What the logical nodes of one host process share (node/host.py): one ZeroMQ context,
one gradient batcher, one adversary for its Byzantine ps workers, and one heartbeat.

A host's nodes do not each heartbeat the monitor: each node's event loop records its
beat here (`HostBeats.record`: its round, state and loss, a dict write), and one thread
sends the beats recorded in the last interval as one `heartbeats` message, under the
routing id of the host's leader (its lowest node id; `host_identity`). A node whose loop
stops turning records nothing and is declared lost as before; 1,100 nodes in four hosts
send 8 messages a second instead of 2,200. The monitor answers each host's beat with
one `heartbeat` back on that connection, which tells all its nodes the coordinator lives.

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

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import zmq
from torch import Tensor

from byzctl.errors import WireError
from byzctl.learning.batched import GradientBatcher
from byzctl.transport import curve, sockets
from byzctl.transport.curve import Keyring
from byzctl.transport.wire import Message

if TYPE_CHECKING:
    from byzctl.node.hostloop import HostLoop

log = logging.getLogger("byzctl.node")

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


def host_identity(leader: int) -> bytes:
    """The routing id of a host's heartbeat connection (without CURVE): its leader's id."""
    return b"h%d" % leader


class HostBeats:
    """The one heartbeat of a host process's nodes (module docstring)."""

    def __init__(self, ctx: zmq.Context, leader: int, control: str, run_id: str, *, interval: float,
                 ring: Keyring | None = None):
        self.ctx, self.leader, self.control, self.run_id, self.interval, self.ring = ctx, leader, control, run_id, interval, ring
        self._lock = threading.Lock()
        self._beats: dict[int, list] = {}  # node -> [node, round, state, loss], since the last send
        self.monitor_seen = time.monotonic()
        """When the monitor last answered a host beat: the coordinator lives for every node here."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.interval + 1)

    def record(self, node: int, round: int, state: str, loss: float) -> None:
        """Node `node`'s loop is turning: its figures go out with the next host beat."""
        with self._lock:
            self._beats[node] = [node, round, state, loss]

    def _run(self) -> None:
        sock = sockets.dealer(self.ctx, None if self.ring else host_identity(self.leader), sndhwm=8, max_bytes=1 << 16)
        if self.ring is not None:  # the leader's key: the monitor accepts this host's beats from its leader only
            curve.secure_client(sock, self.ring, self.leader, "monitor")
        sock.connect(self.control)
        try:
            while not self._stop.wait(self.interval):
                with self._lock:
                    beats, self._beats = list(self._beats.values()), {}
                if beats:
                    msg = Message(kind="heartbeats", run=self.run_id, sender=self.leader, meta={"nodes": beats})
                    sockets.send(sock, msg, block=False)  # a full queue: the monitor is busy, the next beat goes
                while sockets.readable(sock):
                    try:
                        _, reply = sockets.recv(sock, routed=False, max_bytes=1 << 16)
                    except WireError as exc:
                        log.warning("dropped malformed message on the host's heartbeat connection: %s", exc)
                        continue
                    if reply.kind == "heartbeat":
                        self.monitor_seen = time.monotonic()
        finally:
            sock.close(linger=0)


@dataclass
class Cohost:
    """What one host process gives each of its logical nodes."""

    ctx: zmq.Context
    batcher: GradientBatcher = field(default_factory=GradientBatcher)
    adversary: Adversary = field(default_factory=lambda: Adversary([]))
    beats: HostBeats | None = None
    """The host's one heartbeat; None: each node heartbeats on its own."""
    loop: HostLoop | None = None
    """The host's one event loop (node/hostloop.py); None: each node runs its own."""
