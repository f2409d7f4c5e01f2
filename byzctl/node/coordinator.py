"""A `byzctl node` takes the run's config from the coordinator (the monitor).

The monitor holds the run's resolved config. A node started on another host with
only its host settings (`cluster=`, `security=curve security.keys=`) asks for it
over the same authenticated channel it later says hello on; any other override it
was given is sent along and must agree with the run's, or the monitor refuses this
node alone, naming the keys, and the run goes on waiting for a correct one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq
from omegaconf import DictConfig, ListConfig, OmegaConf

from byzctl.config.build import build
from byzctl.config.experiment import HOST_LOCAL_KEYS
from byzctl.config.schema import SecurityKind
from byzctl.errors import ConfigError, HandshakeError, PeerError, WireError
from byzctl.transport import curve, sockets
from byzctl.transport.wire import Message

log = logging.getLogger("byzctl.node")

MAX_CONFIG_BYTES = 16 * 2**20


def config_identity(node_id: int) -> bytes:
    """The routing id a node asks for the run's config under (without CURVE)."""
    return b"c%d" % node_id


def given_overrides(overrides: list[str], cfg: DictConfig) -> dict[str, Any]:
    """{dotted key: its value in `cfg`} for every key set on the command line, host
    settings (HOST_LOCAL_KEYS, security.keys, hydra.*) left out."""
    out: dict[str, Any] = {}
    for ov in overrides:
        key, sep, _ = ov.partition("=")
        key = key.lstrip("+~")
        if not sep or key.startswith("hydra.") or key.split(".")[0] in HOST_LOCAL_KEYS or key == "security.keys":
            continue
        value = OmegaConf.select(cfg, key)
        out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    return out


def fetch_config(own: DictConfig, overrides: dict[str, Any], node_id: int, control: str) -> DictConfig:
    """The run's resolved config from the monitor at `control`, with this host's own
    settings (cluster file, keys, logger, ...) put back. Waits topology.join_timeout."""
    security = build(own.security, "security")
    ring = curve.Keyring(security.keys) if security.name == SecurityKind.curve else None
    ctx = zmq.Context()
    # Not the node's own routing id: the monitor may still hold this connection when the
    # node's control socket connects, and a ROUTER without handover would then refuse that
    # one's id for good (its next frame read as the id), losing every report of the node.
    sock = sockets.dealer(ctx, None if ring else config_identity(node_id), sndhwm=4, max_bytes=MAX_CONFIG_BYTES)
    try:
        if ring is not None:
            curve.secure_client(sock, ring, node_id, "monitor")
        sock.connect(control)
        sockets.send(sock, Message(kind="config", sender=node_id, meta={"overrides": overrides}))
        log.info("node %d: asking the monitor at %s for the run's config", node_id, control)
        timeout = float(own.topology.join_timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not sock.poll(100):
                continue
            try:
                _, reply = sockets.recv(sock, routed=False, max_bytes=MAX_CONFIG_BYTES)
            except WireError as exc:
                log.warning("dropped a malformed reply from the monitor: %s", exc)
                continue
            if reply.kind == "refuse":
                raise HandshakeError(str(reply.meta.get("reason")))
            if reply.kind == "stop":
                raise PeerError(f"the monitor stopped the run: {reply.meta.get('reason', '')}")
            if reply.kind == "config" and len(reply.tensors) == 1:
                return _with_host_settings(bytes(reply.tensors[0].numpy()).decode(), own)
        raise PeerError(f"node {node_id}: no config from the monitor at {control} within join_timeout={timeout}s "
                        "(is `byzctl run launcher=remote` running there?)")
    finally:
        sock.close(linger=0)
        ctx.term()


def _with_host_settings(text: str, own: DictConfig) -> DictConfig:
    try:
        cfg = OmegaConf.create(text)
    except Exception as exc:  # noqa: BLE001 - whatever YAML the monitor sent
        raise ConfigError(f"the monitor sent a config that does not parse: {exc}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError("the monitor sent a config that is not a mapping")
    for key in HOST_LOCAL_KEYS:
        if key in own:
            cfg[key] = own[key]
        elif key in cfg:
            del cfg[key]
    if "security" in cfg and "security" in own:
        cfg.security.keys = own.security.get("keys")
    return cfg
