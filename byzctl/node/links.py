"""A decentralized peer's connections to its neighbours.

mesh/local: the peer binds a ROUTER inbox and dials one DEALER per out-neighbour;
the inbox learns a sender's id from its hello (its routing id, or its CURVE key).
hub: the peer holds one DEALER to the relay; it addresses a message by prefixing
the recipient's routing id, and the relay stamps the true sender on delivery.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from byzctl.node.runtime import NodeRuntime, identity
from byzctl.transport import sockets
from byzctl.transport.drops import Reason
from byzctl.transport.wire import Message, encode

log = logging.getLogger("byzctl.node")


class Links:
    def __init__(self, node: NodeRuntime, out: set[int], ins: set[int]):
        self.node, self.out, self.ins = node, out, ins

    def endpoints(self) -> dict[str, str]:
        return {}

    def connect(self, peers: dict[int, dict[str, Any]]) -> None:
        raise NotImplementedError

    def send(self, to: int, msg: Message) -> bool:
        raise NotImplementedError

    def reconnect(self, to: int, endpoints: dict[str, str]) -> None:
        """A restarted out-neighbour may listen elsewhere now."""

    def source(self, ident: bytes | None, msg: Message, sock: zmq.Socket) -> int | None:
        """The authenticated sender of a received message, or None to drop it."""
        raise NotImplementedError

    def close(self, linger_ms: int) -> None:
        pass


class MeshLinks(Links):
    def __init__(self, node: NodeRuntime, out: set[int], ins: set[int]):
        super().__init__(node, out, ins)
        topo = node.topo
        self.inbox = node.router(sndhwm=topo.sndhwm)
        self.bound = node.bind_here(self.inbox)
        log.info("inbox endpoint %s", self.bound)
        node.add_socket(self.inbox, routed=True)
        self.dealers: dict[int, zmq.Socket] = {}
        self.known: dict[bytes, int] = {}

    def endpoints(self) -> dict[str, str]:
        return {"inbox": self.bound}

    def connect(self, peers: dict[int, dict[str, Any]]) -> None:
        for j in sorted(self.out):
            self._dial(j, peers[j]["endpoints"]["inbox"])

    def _dial(self, j: int, endpoint: str) -> None:
        node = self.node
        sock = node.dealer_to(j)
        sock.connect(endpoint)
        sockets.send(sock, node.msg("hello", meta={"hash": node.exp.hash}), block=False)
        self.dealers[j] = sock

    def reconnect(self, to: int, endpoints: dict[str, str]) -> None:
        if "inbox" in endpoints:
            old = self.dealers.pop(to, None)
            if old is not None:
                old.close(linger=0)
            self._dial(to, endpoints["inbox"])

    def send(self, to: int, msg: Message) -> bool:
        return sockets.send(self.dealers[to], msg, block=False)

    def source(self, ident: bytes | None, msg: Message, sock: zmq.Socket) -> int | None:
        if msg.kind == "hello":
            if ident is not None and self.node.is_from(ident, msg) and msg.sender in self.ins and msg.meta.get("hash") == self.node.exp.hash:
                self.known[ident] = msg.sender
            else:
                self.node.drop(ident, Reason.refused_hello, f"claiming node {msg.sender}, hash {msg.meta['hash'][:64]}")
            return None
        return self.known.get(ident or b"")

    def close(self, linger_ms: int) -> None:
        for sock in self.dealers.values():
            sock.close(linger=linger_ms)


class HubLinks(Links):
    def __init__(self, node: NodeRuntime, out: set[int], ins: set[int]):
        super().__init__(node, out, ins)

    def connect(self, peers: dict[int, dict[str, Any]]) -> None:
        rid, relay = next((i, p) for i, p in peers.items() if p["role"] == "relay")
        # one queue for every out-neighbour's vectors: room for two rounds of them
        self.sock = self.node.dealer_to(rid, sndhwm=max(self.node.topo.sndhwm, 2 * (len(self.out) + 1)))
        self.node.add_socket(self.sock, routed=True)
        self.sock.connect(relay["endpoints"]["relay"])
        sockets.send(self.sock, self.node.msg("hello", meta={"hash": self.node.exp.hash}), to=b"", block=False)

    def send(self, to: int, msg: Message) -> bool:
        try:
            self.sock.send_multipart([identity(to), *encode(msg)], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def source(self, ident: bytes | None, msg: Message, sock: zmq.Socket) -> int | None:
        # The relay puts the sender's authenticated routing id in front of every message.
        if ident is None or not ident.startswith(b"n"):
            return None
        try:
            src = int(ident[1:])
        except ValueError:
            return None
        return src if src in self.ins else None

    def close(self, linger_ms: int) -> None:
        self.sock.close(linger=linger_ms)
