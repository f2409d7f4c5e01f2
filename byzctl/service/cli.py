"""`byzctl serve`, `byzctl users`, `byzctl agents` and `byzctl agent`.

The web, auth and storage libraries come with the `serve` extra; without it each
command exits 2 with the pip line.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import socket
import sys
from pathlib import Path

from byzctl.errors import ConfigError

INSTALL = "pip install 'byzctl[serve]'"
NEEDS = {"serve": ("fastapi", "uvicorn", "sqlmodel", "jwt", "argon2", "multipart"),
         "users": ("sqlmodel", "jwt", "argon2"), "agents": ("sqlmodel", "jwt", "argon2"), "agent": ("httpx",)}


def _missing(cmd: str) -> str | None:
    import importlib.util

    absent = [m for m in NEEDS[cmd] if importlib.util.find_spec(m) is None]
    return ", ".join(absent) if absent else None


def _guard(cmd: str) -> int | None:
    absent = _missing(cmd)
    if absent:
        print(f"byzctl {cmd}: needs {absent}, which the serve extra installs: {INSTALL}", file=sys.stderr)
        return 2
    return None


DEFAULT_DB = "sqlite:///byzctl.db"


def serve(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byzctl serve", description="The coordinator: REST API (OpenAPI at /docs), "
                                "accounts, sessions database and dashboard.")
    p.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy database URL (default {DEFAULT_DB}; PostgreSQL: postgresql+psycopg://user:pw@host/db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; behind a TLS proxy)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--outputs", default="outputs", help="where sessions' run directories go: OUTPUTS/sessions/<id> (default outputs)")
    p.add_argument("--advertise", help="the address agents' nodes reach this host's monitor and server at (default: --host, or this host's name when --host is 0.0.0.0)")
    p.add_argument("--agent-timeout", type=float, default=15.0, help="seconds without a heartbeat before an agent is LOST (default 15)")
    p.add_argument("--heartbeat", type=float, default=2.0, help="seconds between agents' heartbeats (default 2)")
    p.add_argument("--max-upload-mb", type=float, default=100.0, help="largest request body, dataset included (default 100)")
    p.add_argument("--ports", default="29400-29999", help="port range of the sessions' monitors and servers (default 29400-29999, below the ephemeral range)")
    p.add_argument("--ssl-keyfile", help="TLS private key (uvicorn's own TLS; or terminate TLS in a reverse proxy)")
    p.add_argument("--ssl-certfile", help="TLS certificate chain")
    args = p.parse_args(argv)
    if (code := _guard("serve")) is not None:
        return code
    if args.agent_timeout < 2 * args.heartbeat:
        raise ConfigError(f"--agent-timeout {args.agent_timeout} must be at least two heartbeats (--heartbeat {args.heartbeat})")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be > 0. Got {args.max_upload_mb}")
    ports = _port_range(args.ports)
    import uvicorn

    from byzctl.service.api import BodyLimit, create_app
    from byzctl.service.db import engine_for
    from byzctl.service.sessions import Sessions

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = engine_for(args.db)
    advertise = args.advertise or (socket.gethostname() if args.host in ("0.0.0.0", "::") else args.host)
    sessions = Sessions(engine, Path(args.outputs), bind_host=args.host, advertise=advertise, agent_timeout=args.agent_timeout,
                        ports=ports)
    limit = int(args.max_upload_mb * 2**20)
    app = create_app(engine, sessions, max_upload_bytes=limit, heartbeat_s=args.heartbeat)
    sessions.recover()
    sessions.follow()
    try:
        uvicorn.run(BodyLimit(app, limit), host=args.host, port=args.port, log_level="info",
                    ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile)
    finally:
        sessions.close()
    return 0


def _port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not (sep and lo.isdigit() and hi.isdigit() and 0 < int(lo) <= int(hi) < 65536):
        raise ConfigError(f"--ports {text!r}: give a range LOW-HIGH such as 29400-29999")
    return int(lo), int(hi)


def _password(name: str) -> str:
    """From a terminal: asked twice, hidden. Otherwise: the first two lines of stdin, equal."""
    if sys.stdin.isatty():
        first, second = getpass.getpass(f"password for {name}: "), getpass.getpass("again: ")
    else:
        lines = sys.stdin.read().splitlines()
        first = lines[0] if lines else ""
        second = lines[1] if len(lines) > 1 else first
    if first != second:
        raise ConfigError("the two passwords differ")
    return first


def users(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byzctl users", description="Accounts of byzctl serve.")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a user; the password comes from stdin (two lines) or a prompt")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="sees and stops every user's sessions")
    add.add_argument("--db", default=DEFAULT_DB)
    ls = sub.add_parser("list", help="list users")
    ls.add_argument("--db", default=DEFAULT_DB)
    args = p.parse_args(argv)
    if (code := _guard("users")) is not None:
        return code
    from sqlmodel import Session, select

    from byzctl.service.auth import add_user
    from byzctl.service.db import User, engine_for

    engine = engine_for(args.db)
    if args.action == "add":
        user = add_user(engine, args.name, _password(args.name), admin=args.admin)
        print(f"user {user.name} added{' (admin)' if user.admin else ''}", file=sys.stderr)
        return 0
    with Session(engine) as db:
        for u in db.exec(select(User).order_by(User.name)).all():
            print(f"{u.name}{'  admin' if u.admin else ''}")
    return 0


def agents(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byzctl agents", description="Agents of byzctl serve.")
    sub = p.add_subparsers(dest="action", required=True)
    tok = sub.add_parser("token", help="print a new enrolment token for `byzctl agent --token-file`")
    tok.add_argument("--db", default=DEFAULT_DB)
    args = p.parse_args(argv)
    if (code := _guard("agents")) is not None:
        return code
    from byzctl.service.auth import new_enrol_token
    from byzctl.service.db import engine_for

    print(new_enrol_token(engine_for(args.db)))
    return 0


def agent(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byzctl agent", description="A long-lived peer: registers with byzctl serve, "
                                "heartbeats, and runs the session nodes it is assigned (`byzctl node`).")
    p.add_argument("--server", required=True, help="the coordinator's URL, e.g. http://coordinator:8080")
    p.add_argument("--token-file", required=True, help="file holding the enrolment token (`byzctl agents token`); - for stdin")
    p.add_argument("--name", help="this agent's unique name (default: the host name)")
    p.add_argument("--keys", help="CURVE keys directory (byzctl keys gen): its public key NAME.key binds this agent's name")
    p.add_argument("--host", help="the address other nodes reach this agent at (default: as the coordinator sees it)")
    p.add_argument("--port", type=int, help="the port its nodes listen on when the topology needs it (default: a free one)")
    p.add_argument("--interval", type=float, help="seconds between heartbeats (default: the coordinator's)")
    p.add_argument("--work-dir", help="where session files and node logs go (default ./byzctl-agent-NAME)")
    args = p.parse_args(argv)
    if (code := _guard("agent")) is not None:
        return code
    if args.interval is not None and args.interval <= 0:
        raise ConfigError(f"--interval must be > 0. Got {args.interval}")
    from byzctl.service.agent import main_loop

    os.environ.setdefault("COLUMNS", "160")
    return main_loop(args)
