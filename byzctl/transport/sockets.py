"""ZeroMQ sockets with byzctl's options, and endpoint helpers.

ROUTER/DEALER only (no REQ/REP, no PUB/SUB for rounds). LINGER 0 so shutdown
never hangs on an undelivered message; a small SNDHWM for big tensors;
ROUTER_MANDATORY turns silent drops into errors; ZMTP heartbeats catch dead TCP peers.

Two libzmq defaults are deliberately not what they seem to invite:
- no ROUTER_HANDOVER: with it, any process that dials a ROUTER under a routing id
  already in use (b"n1") takes that id over, and the real node's messages stop
  arriving while the impostor's are taken as its own. Without it the first
  connection keeps its id and a second one under the same id is refused; a
  restarted node gets its id back as soon as its old connection is gone (a dead
  process's socket is closed by the kernel, so at once on one machine).
- RCVHWM 0 (no receive limit): libzmq 4.3.5 (pyzmq 27.x) aborts the whole process
  with `Assertion failed: !_io_error (src/stream_engine_base.cpp:310)` when a
  connection whose input is stopped because the receive queue is full is reset by
  its peer and then writes anything: its own heartbeat timer (HEARTBEAT_IVL) or the
  PONG to a PING the peer had sent ahead (tests/test_fuzz_live.py replays both, and
  the unfixed upstream reports are zeromq/libzmq#4364 and #4841). Input is stopped
  only by a full queue, so a queue without a limit never gets there. What bounds
  memory instead: MAXMSGSIZE per frame, and nodes that read their sockets at once
  and drop what they do not expect (node/runtime.py `_drain`).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, cast

import zmq

from byzctl.errors import WireError
from byzctl.transport.wire import FRAME_BYTES, Message, decode, encode

HEARTBEAT_IVL_MS = 2000
HEARTBEAT_TIMEOUT_MS = 30000
"""Generous: a receiver busy for a few seconds behind queued big messages must not be
disconnected (that silently loses what was in flight). Hung peers are caught by the
application heartbeats and round deadlines instead."""


def _common(sock: zmq.Socket, sndhwm: int, max_bytes: int | None) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, 0)  # never a stopped input: see the module docstring
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    if max_bytes is not None:
        # libzmq drops (and disconnects) a peer sending a frame over this size;
        # tensors travel in frames of at most FRAME_BYTES.
        sock.setsockopt(zmq.MAXMSGSIZE, min(int(max_bytes), FRAME_BYTES) + (1 << 16))


def router(ctx: zmq.Context, *, sndhwm: int = 4, max_bytes: int | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    _common(sock, sndhwm, max_bytes)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 0)  # the default, said aloud: an id is never taken over
    return sock


def dealer(ctx: zmq.Context, identity: bytes | None, *, sndhwm: int = 4, max_bytes: int | None = None) -> zmq.Socket:
    """A DEALER; `identity` None lets the ROUTER pick a routing id (under CURVE, where the
    sender is known from its key, a chosen routing id could only be used to hijack another's)."""
    sock = ctx.socket(zmq.DEALER)
    _common(sock, sndhwm, max_bytes)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    return sock


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind and return the concrete endpoint (a `tcp://host:*` gets its port filled in)."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        from byzctl.errors import PeerError

        raise PeerError(f"cannot bind {endpoint}: {exc}") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def readable(sock: zmq.Socket) -> bool:
    """True while `sock` has a message to receive now (ZMQ_EVENTS has POLLIN)."""
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def probe_bind(host: str, port: int) -> str | None:
    """None if this machine can listen on host:port now (port 0: any port), else why not,
    in the OS's words. Only a probe (bind, then close at once): another process may still
    take the port before the real bind, which then fails naming the endpoint."""
    import socket

    host = "" if host == "*" else host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror}"
    family, kind, proto, _, addr = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq does: a port in TIME_WAIT is free
        try:
            sock.bind(addr)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def private_ipc_dir() -> str:
    """A short private directory for ipc:// socket paths (paths over 107 chars fail)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return tempfile.mkdtemp(prefix="byz-", dir=base)


def send(sock: zmq.Socket, msg: Message, *, to: bytes | None = None, block: bool = True) -> bool:
    """Send `msg` (to a ROUTER peer `to`); False when the peer is gone or the queue is full."""
    frames: list[Any] = encode(msg)
    if to is not None:
        frames = [to, *frames]
    flags = 0 if block else zmq.NOBLOCK
    try:
        sock.send_multipart(frames, flags=flags, copy=False)
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return False
        raise
    return True


class Rejected(WireError):
    """A received message that was malformed or forged (already consumed), with the
    routing id it came on, so the drop can be counted against that sender."""

    def __init__(self, ident: bytes | None, reason: str):
        super().__init__(reason)
        self.ident = ident


def recv_frames(sock: zmq.Socket, *, routed: bool) -> tuple[bytes | None, list[zmq.Frame]]:
    """Receive one message's frames (copy=False): (routing id or None, the message's frames)."""
    frames = sock.recv_multipart(copy=False)
    if routed:
        return frames[0].bytes, frames[1:]
    return None, frames


def recv(sock: zmq.Socket, *, routed: bool, max_bytes: int) -> tuple[bytes | None, Message]:
    """Receive one message; raises Rejected (a WireError) for a malformed one, already consumed."""
    ident, frames = recv_frames(sock, routed=routed)
    return ident, recv_body(ident, frames, max_bytes=max_bytes)


def recv_body(ident: bytes | None, frames: list[zmq.Frame], *, max_bytes: int) -> Message:
    """Decode frames received from `ident`; Rejected (a WireError) naming it if malformed."""
    try:
        return decode(frames, max_bytes=max_bytes)
    except WireError as exc:
        raise Rejected(ident, str(exc)) from None


def peer_process(frame: zmq.Frame) -> tuple[int, int] | None:
    """(uid, pid) of the process at the other end of an ipc:// connection, as the kernel
    reports it (SO_PEERCRED, which libzmq puts in the Peer-Address property as
    `...:uid:gid:pid`); None on tcp or when the property is missing."""
    try:
        address = frame.get("Peer-Address")
    except (zmq.ZMQError, AttributeError, TypeError):
        return None
    parts = str(address).rsplit(":", 3)
    if len(parts) != 4 or not (parts[1].isdigit() and parts[3].isdigit()):
        return None
    return int(parts[1]), int(parts[3])
