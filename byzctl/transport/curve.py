"""CURVE security: key rings, the ZAP allow-list, and who really sent a message.

A secured run gives every node (and the monitor) a CURVE key pair made by
`byzctl keys gen DIR --nodes N`. Sockets that bind are CURVE servers, sockets
that connect are CURVE clients pinned to the server's public key. A ZAP handler
thread admits exactly the public keys in DIR/public and stamps each connection
with the key owner's node id as its ZAP User-Id, so a ROUTER learns who sent a
message from the handshake (`authenticated_id(frame)`), never from a routing id
the peer chose.

Order matters: libzmq accepts every CURVE client when no ZAP handler is bound,
so `start_authenticator(ctx, keyring)` must run before `secure_server` (which
checks it) and before peers connect. `stop()` it, or just destroy the context.

Layout of DIR (zmq's certificate format, readable by `zmq.auth.load_certificate`):
  DIR/public/node-<id>.key, DIR/public/monitor.key          public keys (the allow-list)
  DIR/private/node-<id>.key_secret, DIR/private/monitor.key_secret   mode 600
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

from byzctl.errors import ConfigError, PeerError, WireError
from byzctl.transport import sockets
from byzctl.transport.wire import Message, decode

log = logging.getLogger("byzctl.transport")

MONITOR = "monitor"
MONITOR_ID = -1
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "byzctl"
SECURITY_CHOICES = ("auto", "curve", "none")
"""`auto`: plaintext allowed on loopback, ipc and inproc only; `curve`: CURVE on
every socket; `none`: plaintext everywhere, an explicit opt-out."""

_NAME = re.compile(r"^(?:node-(0|[1-9][0-9]{0,8})|monitor)$")
_Z85_KEY_LEN = 40  # a 32-byte key in Z85


def key_name(node: int | str) -> str:
    """The key file name of a node id (`node-7`) or of the monitor (-1 -> `monitor`)."""
    if isinstance(node, str):
        if not _NAME.match(node):
            raise ConfigError(f"bad key name {node!r}; expected 'node-<id>' or '{MONITOR}'")
        return node
    if node == MONITOR_ID:
        return MONITOR
    if node < 0:
        raise ConfigError(f"bad node id {node}; expected >= 0 (or {MONITOR_ID} for the monitor)")
    return f"node-{node}"


def node_id_of_name(name: str) -> int:
    """Inverse of `key_name`: `node-7` -> 7, `monitor` -> -1."""
    m = _NAME.match(name)
    if not m:
        raise ConfigError(f"bad key name {name!r}; expected 'node-<id>' or '{MONITOR}'")
    return MONITOR_ID if m.group(1) is None else int(m.group(1))


# -- key files --------------------------------------------------------------------------
def write_certificate(path: Path, public: bytes, secret: bytes | None = None) -> None:
    """Write one key file in zmq's certificate format; secret files are created mode 600."""
    kind = "Secret" if secret else "Public"
    lines = [
        f"#   ZeroMQ CURVE {kind} Certificate, written by byzctl keys gen",
        "#   Keep secret files private (mode 600); share only the public ones." if secret else "#   Public: share it with every node of the cluster.",
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode("ascii")}"',
    ]
    if secret:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    tmp = path.with_name(path.name + ".tmp")
    # Created with its final mode, so a secret never sits on disk world-readable.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    try:
        os.fchmod(fd, 0o600 if secret else 0o644)
        os.write(fd, ("\n".join(lines) + "\n").encode("ascii"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) Z85 keys from a certificate file; ConfigError naming the file."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"missing key file {path} (create keys with: byzctl keys gen DIR --nodes N)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read key file {path}: {exc}") from None
    keys: dict[str, bytes] = {}
    for line in text.splitlines():
        line = line.strip()
        for field in ("public-key", "secret-key"):
            if line.startswith(field) and "=" in line:
                keys[field] = line.split("=", 1)[1].strip().strip("'\"").encode("ascii")
    public, secret = keys.get("public-key"), keys.get("secret-key")
    if public is None:
        raise ConfigError(f"key file {path} holds no public-key")
    for what, key in (("public", public), ("secret", secret)):
        if key is not None and not _valid_z85(key):
            raise ConfigError(f"key file {path}: the {what} key is not a 40-character Z85 CURVE key")
    return public, secret


def _valid_z85(key: bytes) -> bool:
    if len(key) != _Z85_KEY_LEN:
        return False
    try:
        return len(z85.decode(key)) == 32
    except Exception:  # z85 raises several types on bad input
        return False


class Keyring:
    """The CURVE keys of a cluster, loaded from a `byzctl keys gen` directory.

    Every public key in DIR/public is allow-listed and maps to its node id
    (`monitor` to -1); secret keys are read on demand from DIR/private, so a
    node's copy of DIR only needs its own secret file.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        pub = self.directory / "public"
        if not pub.is_dir():
            raise ConfigError(f"no public keys: {pub} is not a directory (create keys with: byzctl keys gen {self.directory} --nodes N)")
        self._public: dict[str, bytes] = {}
        self._owner: dict[bytes, int] = {}  # Z85 public key -> node id
        for path in sorted(pub.glob("*.key")):
            name = path.name[: -len(".key")]
            if not _NAME.match(name):
                raise ConfigError(f"unexpected public key file {path}; names are node-<id>.key or {MONITOR}.key")
            key, _ = read_certificate(path)
            if key in self._owner:
                other = key_name(self._owner[key])
                raise ConfigError(f"{path} repeats the public key of {other}: one key, one identity")
            self._public[name] = key
            self._owner[key] = node_id_of_name(name)
        if not self._public:
            raise ConfigError(f"no public keys (*.key) in {pub}")

    @property
    def names(self) -> list[str]:
        """Key names, monitor first, then nodes by id."""
        return sorted(self._public, key=node_id_of_name)

    def public(self, name: int | str) -> bytes:
        """Z85 public key of a node id or key name."""
        name = key_name(name)
        try:
            return self._public[name]
        except KeyError:
            raise ConfigError(f"no public key for {name}: missing {self.directory / 'public' / (name + '.key')}") from None

    def secret(self, name: int | str) -> bytes:
        """Z85 secret key of a node id or key name, checked against its public key."""
        name = key_name(name)
        path = self.directory / "private" / f"{name}.key_secret"
        public, secret = read_certificate(path)
        if secret is None:
            raise ConfigError(f"key file {path} holds no secret-key")
        if public != self.public(name):
            raise ConfigError(f"{path} does not match {self.directory / 'public' / (name + '.key')}; regenerate with byzctl keys gen --force")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("secret key %s is readable by others (mode %o); chmod 600 it", path, mode)
        return secret

    def node_of(self, public_key: bytes | str) -> int | None:
        """Node id owning a public key (Z85 text or 32 raw bytes); None if not allow-listed."""
        if isinstance(public_key, str):
            public_key = public_key.encode("ascii", "replace")
        if len(public_key) == 32:
            public_key = z85.encode(public_key)
        return self._owner.get(public_key)


# -- ZAP ---------------------------------------------------------------------------------
class Authenticator:
    """A ZAP handler thread (RFC 27) admitting exactly the keyring's public keys.

    Each admitted CURVE connection gets the key owner's node id as its User-Id,
    which every message it delivers carries as a frame property.
    """

    def __init__(self, ctx: zmq.Context, keyring: Keyring):
        self.ctx, self.keyring = ctx, keyring
        self.denied = 0
        self._warned: set[tuple[bytes, bytes, bytes]] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="byzctl-zap", daemon=True)

    def start(self) -> Authenticator:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise PeerError(f"cannot start the CURVE authenticator on {ZAP_ENDPOINT}: {self._error} (one per context)")
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and _RUNNING.get(id(self.ctx)) is self

    def stop(self) -> None:
        """Stop the thread and close its socket (destroying the context does it too)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> Authenticator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        # Not through ctx.socket(): ctx.destroy() would close it from another thread.
        # Untracked, it sees ETERM on destroy/term and closes itself, so either order is safe.
        try:
            sock = zmq.Socket(self.ctx, zmq.REP)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        try:
            sock.linger = 0
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            sock.close(linger=0)  # else the context could never terminate
            self._error = exc
            self._ready.set()
            return
        _RUNNING[id(self.ctx)] = self  # holds ctx, so its id cannot be reused meanwhile
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(50):
                    sock.send_multipart(self._reply(sock.recv_multipart()))
        except zmq.ZMQError as exc:  # the context was terminated under us
            if exc.errno not in (zmq.ETERM, zmq.ENOTSOCK):
                log.error("CURVE authenticator stopped: %s", exc)
        finally:
            _RUNNING.pop(id(self.ctx), None)
            sock.close(linger=0)

    def _reply(self, req: list[bytes]) -> list[bytes]:
        """[version, request id, status, status text, user id, metadata] for one request."""
        if len(req) < 6 or req[0] != b"1.0":
            return [b"1.0", req[1] if len(req) > 1 else b"", b"500", b"bad ZAP request", b"", b""]
        request_id, mechanism, credentials = req[1], req[5], req[6:]
        node = None
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            node = self.keyring.node_of(credentials[0])
        if node is None:
            self.denied += 1
            who = (mechanism, req[3], credentials[0] if len(credentials) == 1 else b"")
            if who not in self._warned and len(self._warned) < 1000:  # a refused peer retries every 100 ms
                self._warned.add(who)
                key = z85.encode(who[2]).decode() if len(who[2]) == 32 else "none"
                log.warning("refused a %s connection from %s: key %s is not allow-listed",
                            mechanism.decode("ascii", "replace"), req[3].decode("ascii", "replace"), key)
            return [b"1.0", request_id, b"400", b"key not allow-listed", b"", b""]
        return [b"1.0", request_id, b"200", b"OK", str(node).encode("ascii"), b""]


_RUNNING: dict[int, Authenticator] = {}  # id(ctx) -> its running ZAP handler


def start_authenticator(ctx: zmq.Context, keyring: Keyring) -> Authenticator:
    """Start the ZAP handler of `ctx`; it must run before any CURVE server accepts peers."""
    return Authenticator(ctx, keyring).start()


# -- sockets -----------------------------------------------------------------------------
def secure_server(sock: zmq.Socket, keyring: Keyring, name: int | str) -> None:
    """Make `sock` a CURVE server with `name`'s key pair; call before bind."""
    auth = _RUNNING.get(id(sock.context))
    if auth is None or auth.ctx is not sock.context or not auth.alive:
        raise PeerError("start_authenticator(ctx, keyring) must run before a CURVE server socket is set up; without it libzmq admits any key")
    sock.curve_secretkey = keyring.secret(name)
    sock.curve_publickey = keyring.public(name)
    sock.zap_domain = ZAP_DOMAIN.encode()
    sock.curve_server = True


def secure_client(sock: zmq.Socket, keyring: Keyring, name: int | str, server_name: int | str) -> None:
    """Make `sock` a CURVE client with `name`'s key pair, pinned to `server_name`'s key; call before connect."""
    sock.curve_serverkey = keyring.public(server_name)
    sock.curve_secretkey = keyring.secret(name)
    sock.curve_publickey = keyring.public(name)


def authenticated_id(frame: Any) -> int | None:
    """The node id CURVE authenticated for a frame received with copy=False; None if none."""
    try:
        user = frame.get("User-Id")
    except (zmq.ZMQError, AttributeError, TypeError):
        return None
    try:
        return int(user)
    except (TypeError, ValueError):
        return None


def recv_authenticated(sock: zmq.Socket, *, max_bytes: int) -> tuple[bytes, int, Message]:
    """Receive one message on a CURVE ROUTER: (routing id, authenticated node id, message).

    Raises Rejected (a WireError; the message is consumed) when the connection carries
    no authenticated id or the header's sender differs from it.
    """
    ident, body = sockets.recv_frames(sock, routed=True)
    node, msg = authenticate(ident or b"", body, max_bytes=max_bytes)
    return ident or b"", node, msg


def authenticate(ident: bytes, body: list[Any], *, max_bytes: int) -> tuple[int, Message]:
    """(authenticated node id, message) of frames received on a CURVE ROUTER; Rejected
    naming the routing id when they carry no User-Id or claim another sender."""
    node = authenticated_id(body[0]) if body else None
    if node is None:
        raise sockets.Rejected(ident, f"message from routing id {ident!r} carries no CURVE User-Id")
    try:
        msg = decode(body, max_bytes=max_bytes)
    except WireError as exc:
        raise sockets.Rejected(ident, str(exc)) from None
    if msg.sender != node:
        raise sockets.Rejected(ident, f"message claims sender {msg.sender} but the connection is authenticated as {node}")
    return node, msg


# -- plaintext guard ---------------------------------------------------------------------
def check_plaintext(endpoints: Iterable[str], security: str) -> None:
    """Refuse plaintext TCP off loopback unless `security` is `none` (an explicit opt-out).

    Loopback is 127.0.0.0/8, ::1 and localhost; ipc:// and inproc:// never leave
    the machine. Raises ConfigError naming the first offending endpoint.
    """
    if security not in SECURITY_CHOICES:
        raise ConfigError(f"security={security!r}; choose one of {list(SECURITY_CHOICES)}")
    if security != "auto":
        return
    for endpoint in endpoints:
        if not _is_local(endpoint):
            raise ConfigError(
                f"endpoint {endpoint} is plaintext TCP off loopback: use security=curve "
                "(byzctl keys gen DIR --nodes N) or opt out explicitly with security=none"
            )


def _is_local(endpoint: str) -> bool:
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise ConfigError(f"bad endpoint {endpoint!r}; expected tcp://host:port, ipc://path or inproc://name")
    if scheme in ("ipc", "inproc"):
        return True
    # tcp://[source;]host:port: every address named must be loopback.
    return all(_is_loopback_host(_host(part)) for part in rest.split(";"))


def _host(address: str) -> str:
    if address.startswith("["):  # [::1]:5555
        return address[1 : address.find("]")] if "]" in address else address
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface name, a DNS name, or the wildcard `*`
        return False
