"""The hub relay: forwards peers' messages along the graph's edges, opaquely.

It checks each peer's hello (config hash), then for every message checks that the
sender may talk to the recipient and stamps the sender's routing id in front; it
never decodes a payload, computes nothing and keeps nothing.
"""

from __future__ import annotations

import logging
import time

import zmq

from byzctl.errors import WireError
from byzctl.node.runtime import DRAIN_BUDGET_S, NodeRuntime, identity
from byzctl.node.shards import Shard
from byzctl.transport import curve, sockets
from byzctl.transport.drops import Reason, shown
from byzctl.transport.wire import decode

log = logging.getLogger("byzctl.node")


class HubRelay(NodeRuntime):
    def setup(self, shard: Shard | None) -> None:
        self.sock = sockets.router(self.ctx, sndhwm=max(self.topo.sndhwm * 4, 16), max_bytes=self.max_bytes)
        self.bound = self.bind_here(self.sock)
        log.info("relay endpoint %s", self.bound)
        self.poller.register(self.sock, zmq.POLLIN)
        self.graph = self.exp.neighbours()
        self.names: dict[bytes, int] = {}  # routing id -> node id, from authenticated hellos
        self.routes: dict[int, bytes] = {}  # node id -> routing id
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
            elif to not in self.routes or sender not in self.graph.get(to, set()):
                self.drop(src, Reason.no_edge, f"node {sender} -> {shown(dest)}")
            else:
                try:
                    # stamp the true sender; the recipient trusts the relay for it
                    self.sock.send_multipart([self.routes[to], identity(sender), *frames[2:]], flags=zmq.NOBLOCK, copy=False)
                    self.forwarded += 1
                except (zmq.Again, zmq.ZMQError):
                    self.drop(src, Reason.queue_full, f"node {sender} -> node {to}")
            if time.monotonic() > until:
                break  # the loop comes back at once; meanwhile it heartbeats and reads the monitor
        self.drops.flush()

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
        else:
            self.drop(src, Reason.refused_hello, f"{msg.kind} claiming node {msg.sender}, hash {shown(msg.meta.get('hash'))}")

    def next_deadline(self) -> float | None:
        return None


def _node_of(ident: bytes) -> int | None:
    """The node id in a peer-chosen address b"n<id>" (only used to pick a recipient)."""
    try:
        return int(ident[1:]) if ident.startswith(b"n") else None
    except ValueError:
        return None
