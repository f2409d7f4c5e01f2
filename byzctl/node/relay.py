"""The hub relay: forwards peers' messages along the graph's edges, opaquely.

It checks each peer's hello (config hash), then for every message checks that the
sender may talk to the recipient and stamps the sender's routing id in front; it
never decodes a payload, computes nothing and keeps nothing.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import zmq

from byzctl.errors import WireError
from byzctl.node.peer import WINDOW
from byzctl.node.runtime import DRAIN_BUDGET_S, NodeRuntime, identity
from byzctl.node.shards import Shard
from byzctl.transport import curve, sockets
from byzctl.transport.drops import Reason, shown
from byzctl.transport.wire import decode

log = logging.getLogger("byzctl.node")


RETRY_S = 0.01
"""How often a relay with messages waiting for a full queue tries them again."""


class HubRelay(NodeRuntime):
    def setup(self, shard: Shard | None) -> None:
        self.graph = self.exp.neighbours()
        # Every in-neighbour may be up to WINDOW rounds ahead of a slow recipient: the
        # queue to one peer holds that many rounds of its in-neighbours' vectors.
        k = max((len(v) for v in self.graph.values()), default=1)
        self.sock = self.router(sndhwm=max(self.topo.sndhwm, (k + 1) * (WINDOW + 1)))
        self.bound = self.bind_here(self.sock)
        log.info("relay endpoint %s", self.bound)
        self.poller.register(self.sock, zmq.POLLIN)
        self.names: dict[bytes, int] = {}  # routing id -> node id, from authenticated hellos
        self.routes: dict[int, bytes] = {}  # node id -> routing id
        self.waiting: dict[int, deque[tuple[float, list[Any]]]] = {}
        """Messages to a peer whose hello has not arrived yet or whose queue is full, in
        order, each with its deadline (round_timeout): delivered later, never dropped silently."""
        self.limit = (k + 1) * (WINDOW + 1) * 4
        self.forwarded = 0

    def endpoints(self) -> dict[str, str]:
        return {"relay": self.bound}

    def start(self) -> None:
        pass

    def on_tick(self, now: float) -> None:
        until = now + DRAIN_BUDGET_S
        while sockets.readable(self.sock):
            frames = self.sock.recv_multipart(copy=False)
            src = frames[0].bytes
            if len(frames) < 3:
                self.drop(src, Reason.malformed, f"{len(frames) - 1} frame(s); expected a destination and a message")
                continue
            dest = frames[1].bytes
            if dest == b"":
                self._hello(src, frames[1], frames[2:])
                continue
            sender, to = self.names.get(src), _node_of(dest)
            if sender is None:
                self.drop(src, Reason.unknown_sender, f"to {shown(dest)}")
            elif to is None or sender not in self.graph.get(to, set()):
                self.drop(src, Reason.no_edge, f"node {sender} -> {shown(dest)}")
            else:
                # stamp the true sender; the recipient trusts the relay for it
                self._forward(to, [identity(sender), *frames[2:]])
            if time.monotonic() > until:
                break  # the loop comes back at once; meanwhile it heartbeats and reads the monitor
        self._flush(now)
        self.drops.flush()

    def _forward(self, to: int, frames: list[Any]) -> None:
        box = self.waiting.get(to)
        if box:  # keep each recipient's messages in order behind those already waiting
            self._wait(to, frames)
            return
        if to not in self.routes or not self._send(to, frames):
            self._wait(to, frames)

    def _send(self, to: int, frames: list[Any]) -> bool:
        try:
            self.sock.send_multipart([self.routes[to], *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False  # gone for now: a restarted peer says hello again
        self.forwarded += 1
        return True

    def _wait(self, to: int, frames: list[Any]) -> None:
        box = self.waiting.setdefault(to, deque())
        if len(box) >= self.limit:
            self.drop(f"node {to}", Reason.queue_full, f"over {self.limit} messages wait for it")
            box.popleft()
        box.append((time.monotonic() + self.topo.round_timeout, frames))

    def _flush(self, now: float) -> None:
        for to, box in list(self.waiting.items()):
            while box and box[0][0] < now:
                box.popleft()
                self.drop(f"node {to}", Reason.queue_full, f"took none of its messages for round_timeout={self.topo.round_timeout}s")
            while box and to in self.routes and self._send(to, box[0][1]):
                box.popleft()
            if not box:
                del self.waiting[to]

    def _hello(self, src: bytes, first: zmq.Frame, frames: list[zmq.Frame]) -> None:
        try:
            msg = decode(frames, max_bytes=0)
        except WireError as exc:
            self.drop(src, Reason.malformed, f"hello: {exc}")
            return
        genuine = curve.authenticated_id(first) == msg.sender if self.ring is not None else src == identity(msg.sender)
        if msg.kind == "hello" and genuine and msg.meta.get("hash") == self.exp.hash and msg.sender in self.graph:
            self.names = {k: v for k, v in self.names.items() if v != msg.sender}
            self.names[src] = msg.sender
            self.routes[msg.sender] = src
            self._flush(time.monotonic())  # what its in-neighbours sent before this hello
        else:
            self.drop(src, Reason.refused_hello, f"{msg.kind} claiming node {msg.sender}, hash {shown(msg.meta.get('hash'))}")

    def next_deadline(self) -> float | None:
        return time.monotonic() + RETRY_S if self.waiting else None

    def on_peer_event(self, node: int, back: bool, endpoints: dict[str, str]) -> None:
        super().on_peer_event(node, back, endpoints)
        if not back:  # a lost peer takes nothing more: forget what waited for it
            self.waiting.pop(node, None)


def _node_of(ident: bytes) -> int | None:
    """The node id in a peer-chosen address b"n<id>" (only used to pick a recipient)."""
    try:
        return int(ident[1:]) if ident.startswith(b"n") else None
    except ValueError:
        return None
