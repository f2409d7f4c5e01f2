"""The service's database: users, agents, sessions, enrolment tokens and the signing key.

SQLModel tables over SQLAlchemy, so any URL SQLAlchemy knows works: SQLite by default
(`sqlite:///byzctl.db`), PostgreSQL with `postgresql+psycopg://user:pw@host/db` once its
driver is installed. A session's files live in its run directory; the row keeps what the
API lists and the final figures, so they survive the files' removal.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from byzctl.errors import ConfigError
from byzctl.states import AgentState, RunState


def _now() -> float:
    return time.time()


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    password_hash: str
    """argon2id, with its salt and parameters (argon2-cffi's encoded form)."""
    admin: bool = False
    created: float = Field(default_factory=_now)


class Agent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    host: str
    """Where the session's other nodes reach this agent's node."""
    port: int
    """The port its node binds when the topology makes it listen (mesh peers)."""
    public_key: str | None = None
    """Its CURVE public key (Z85), when it was started with --keys."""
    token_id: int | None = None
    """The enrolment token it registered with."""
    state: AgentState = AgentState.IDLE
    session_id: str | None = Field(default=None, index=True)
    node_ids: str = "[]"
    """JSON list of the node ids it runs for `session_id`."""
    last_seen: float = Field(default_factory=_now)
    registered: float = Field(default_factory=_now)

    @property
    def nodes(self) -> list[int]:
        return [int(i) for i in json.loads(self.node_ids)]


class TrainingSession(SQLModel, table=True):
    __tablename__ = "session"

    id: str = Field(primary_key=True)
    owner_id: int = Field(index=True, foreign_key="user.id")
    state: RunState = RunState.RUNNING
    reason: str = ""
    overrides: str = "[]"
    """JSON list of the user's overrides, as given."""
    dataset_name: str | None = None
    """The uploaded CSV's file name, if any."""
    run_dir: str
    rounds: int = 0
    rounds_done: int = 0
    test_accuracy: float | None = None
    test_loss: float | None = None
    nodes_needed: int = 0
    pid: int | None = None
    """The `byzctl run` process (launcher and monitor) of the current attempt."""
    created: float = Field(default_factory=_now)
    ended: float | None = None
    summary: str = "{}"
    """summary.json of the last attempt, once it ended."""


class EnrolToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    digest: str = Field(index=True, unique=True)
    """sha256 of the token (a random 256-bit string: a slow KDF adds nothing)."""
    created: float = Field(default_factory=_now)
    revoked: bool = False


class Setting(SQLModel, table=True):
    name: str = Field(primary_key=True)
    value: str


def engine_for(url: str) -> Engine:
    """An engine for `url`, its tables created. SQLite waits for locks rather than failing
    at once, and runs with foreign keys on."""
    if "://" not in url:
        raise ConfigError(f"--db {url!r} is not a database URL; e.g. sqlite:///byzctl.db or postgresql+psycopg://user@host/db")
    sqlite = url.startswith("sqlite")
    try:
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30} if sqlite else {})
        if sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        SQLModel.metadata.create_all(engine)
    except Exception as exc:
        raise ConfigError(f"--db {url}: cannot open the database: {type(exc).__name__}: {exc}") from None
    return engine


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (API polls while sessions update)
    cur.close()


def setting(engine: Engine, name: str, make: Any) -> str:
    """The stored value of `name`, created by `make()` the first time (e.g. the JWT key)."""
    with Session(engine) as db:
        row = db.get(Setting, name)
        if row is None:
            row = Setting(name=name, value=make())
            db.add(row)
            try:
                db.commit()
            except IntegrityError:  # another process created it first
                db.rollback()
                row = db.get(Setting, name)
                assert row is not None
        return row.value


def new_session_id() -> str:
    return secrets.token_hex(6)


def user_by_name(db: Session, name: str) -> User | None:
    return db.exec(select(User).where(User.name == name)).first()
