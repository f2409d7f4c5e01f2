"""Accounts and tokens: argon2id password hashes, signed JWTs, agent enrolment tokens.

The JWT signing key is random, made on first use and kept in the database (table
`setting`), so tokens outlive a restart of `byzctl serve` and no key is ever in the code.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from byzctl.errors import ConfigError
from byzctl.service.db import EnrolToken, User, setting, user_by_name

ALGORITHM = "HS256"
USER_TOKEN_TTL_S = 12 * 3600
"""A user's sign-in lasts a working day."""
AGENT_TOKEN_TTL_S = 30 * 24 * 3600
"""An agent's token, renewed each time it registers."""

_hasher = PasswordHasher()  # argon2id with argon2-cffi's (RFC 9106 low-memory) parameters

Kind = Literal["user", "agent"]


class Unauthorized(Exception):
    """Missing, malformed, forged or expired credentials (HTTP 401)."""


@dataclass(frozen=True)
class Claims:
    kind: Kind
    subject: int


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(user: User | None, password: str) -> bool:
    """Whether `password` is `user`'s; a missing user costs the same time (no user probing)."""
    if user is None:
        _hasher.hash(password)
        return False
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def signing_key(engine: Engine) -> str:
    return setting(engine, "jwt_key", lambda: secrets.token_urlsafe(48))


def issue(key: str, kind: Kind, subject: int, ttl_s: float) -> str:
    now = int(time.time())
    return jwt.encode({"sub": str(subject), "kind": kind, "iat": now, "exp": now + int(ttl_s)}, key, algorithm=ALGORITHM)


def verify(key: str, token: str, kind: Kind) -> Claims:
    """The claims of a valid, unexpired token of `kind`, or Unauthorized saying why."""
    try:
        data = jwt.decode(token, key, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the token has expired; sign in again") from None
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {exc}") from None
    if data.get("kind") != kind or not str(data.get("sub", "")).isdigit():
        raise Unauthorized(f"not a {kind} token")
    return Claims(kind=kind, subject=int(data["sub"]))


def add_user(engine: Engine, name: str, password: str, *, admin: bool = False) -> User:
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"user name {name!r}: use letters, digits, '-', '_' and '.'")
    if len(password) < 8:
        raise ConfigError(f"the password for {name!r} is {len(password)} characters; use at least 8")
    with Session(engine) as db:
        if user_by_name(db, name) is not None:
            raise ConfigError(f"user {name!r} already exists")
        user = User(name=name, password_hash=hash_password(password), admin=admin)
        db.add(user)
        db.commit()
        db.refresh(user)
        return user


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_enrol_token(engine: Engine) -> str:
    """A new agent enrolment token; only its digest is stored."""
    token = secrets.token_urlsafe(32)
    with Session(engine) as db:
        db.add(EnrolToken(digest=_digest(token)))
        db.commit()
    return token


def enrol_token_id(engine: Engine, token: str) -> int:
    """The id of a valid (known, not revoked) enrolment token, else Unauthorized."""
    with Session(engine) as db:
        row = db.exec(select(EnrolToken).where(EnrolToken.digest == _digest(token.strip()))).first()
        if row is None or row.revoked:
            raise Unauthorized("unknown or revoked agent token (make one with `byzctl agents token`)")
        assert row.id is not None
        return row.id
