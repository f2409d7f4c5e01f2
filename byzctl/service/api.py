"""The HTTP API of `byzctl serve` (FastAPI; OpenAPI at /docs) and the dashboard's files.

Users sign in for a bearer token (`POST /auth/token`); agents register with an enrolment
token and then heartbeat with their own. Every route but /health, the sign-in and the
dashboard's static files needs a valid token; a user sees only their own sessions (an
admin sees all), and another user's session answers 404, as a missing one does.

No `from __future__ import annotations` here: FastAPI reads the routes' annotations at
run time, and they name dependencies local to `create_app`.
"""

import asyncio
import json
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from byzctl.errors import ByzctlError
from byzctl.service import auth
from byzctl.service.db import Agent, TrainingSession, User, user_by_name
from byzctl.service.sessions import NotEnoughAgents, Sessions, parse_overrides, progress
from byzctl.states import AgentState, RunState

oauth2 = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


class Registration(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    host: str | None = Field(default=None, max_length=255)
    """Where other nodes reach this agent; default: the address it connects from."""
    port: int = Field(gt=0, lt=65536)
    public_key: str | None = Field(default=None, max_length=64)


class Beat(BaseModel):
    busy: bool = False
    finished: list[tuple[str, int, int]] = Field(default_factory=list, max_length=64)
    """(session, attempt, exit code) of the nodes that ended since the last heartbeat."""


class TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over `limit` bytes (413), by Content-Length or as they stream."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def limited() -> Any:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise TooLarge
            return msg

        async def tracked(msg: Any) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited, tracked)
        except TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body over the upload limit of {self.limit} bytes (byzctl serve --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def create_app(engine: Engine, sessions: Sessions, *, max_upload_bytes: int = 100 * 2**20, heartbeat_s: float = 2.0) -> FastAPI:
    key = auth.signing_key(engine)
    app = FastAPI(title="byzctl serve", description="Byzantine-robust training sessions on long-lived agents.")
    static = Path(str(resources.files("byzctl.service") / "static"))

    def unauthorized(why: str) -> HTTPException:
        return HTTPException(status_code=401, detail=why, headers={"WWW-Authenticate": "Bearer"})

    def current_user(token: Annotated[str | None, Depends(oauth2)]) -> User:
        if not token:
            raise unauthorized("not signed in: send Authorization: Bearer <token> (POST /auth/token)")
        try:
            claims = auth.verify(key, token, "user")
        except auth.Unauthorized as exc:
            raise unauthorized(str(exc)) from None
        with Session(engine) as db:
            user = db.get(User, claims.subject)
        if user is None:
            raise unauthorized("the token's user no longer exists")
        return user

    def current_agent(authorization: Annotated[str | None, Header()] = None) -> int:
        token = (authorization or "").removeprefix("Bearer ").strip()
        try:
            return auth.verify(key, token, "agent").subject
        except auth.Unauthorized as exc:
            raise unauthorized(str(exc)) from None

    UserDep = Annotated[User, Depends(current_user)]

    def owned(db: Session, sid: str, user: User) -> TrainingSession:
        row = db.get(TrainingSession, sid)
        if row is None or (row.owner_id != user.id and not user.admin):
            raise HTTPException(status_code=404, detail=f"no session {sid!r}")
        return row

    @app.exception_handler(ByzctlError)
    async def bad_input(_request: Request, exc: ByzctlError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(NotEnoughAgents)
    async def too_few(_request: Request, exc: NotEnoughAgents) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc), "needed": exc.needed, "idle": exc.idle, "online": exc.online})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True}

    @app.post("/auth/token")
    def sign_in(form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> dict[str, Any]:
        with Session(engine) as db:
            user = user_by_name(db, form.username)
        if not auth.check_password(user, form.password):
            raise unauthorized("wrong user name or password")
        assert user is not None and user.id is not None
        return {"access_token": auth.issue(key, "user", user.id, auth.USER_TOKEN_TTL_S), "token_type": "bearer",
                "expires_in": auth.USER_TOKEN_TTL_S, "user": user.name, "admin": user.admin}

    @app.get("/me")
    def me(user: UserDep) -> dict[str, Any]:
        return {"name": user.name, "admin": user.admin}

    # -- sessions ---------------------------------------------------------------------
    def view(db: Session, row: TrainingSession, *, full: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": row.id, "state": row.state, "reason": row.reason, "rounds_done": row.rounds_done, "rounds": row.rounds,
            "test_accuracy": row.test_accuracy, "test_loss": row.test_loss, "overrides": json.loads(row.overrides),
            "dataset": row.dataset_name, "created": row.created, "ended": row.ended, "nodes_needed": row.nodes_needed,
            "run_dir": row.run_dir,
        }
        if row.owner_id is not None:
            owner = db.get(User, row.owner_id)
            out["owner"] = owner.name if owner else None
        if full:
            seen = progress(Path(row.run_dir))
            if row.state is RunState.RUNNING:
                out["rounds_done"] = seen["rounds_done"]
                last = seen["curve"][-1][1] if seen["curve"] else None
                out["test_accuracy"] = last
            out.update(nodes=seen["nodes"], curve=seen["curve"], events=seen["events"])
            held = db.exec(select(Agent).where(Agent.session_id == row.id)).all()
            out["agents"] = [{"id": a.id, "name": a.name, "state": a.state, "nodes": a.nodes} for a in held]
        return out

    @app.post("/sessions", status_code=201)
    def create_session(user: UserDep, overrides: Annotated[str, Form()] = "[]",
                       dataset: Annotated[UploadFile | None, File()] = None) -> dict[str, Any]:
        ovs = parse_overrides(overrides)
        data = dataset.file.read(max_upload_bytes + 1) if dataset is not None else None
        if data is not None and len(data) > max_upload_bytes:
            raise HTTPException(status_code=413, detail=f"dataset over the upload limit of {max_upload_bytes} bytes")
        assert user.id is not None
        row = sessions.start(user.id, ovs, data, dataset.filename if dataset is not None else None)
        with Session(engine) as db:
            return view(db, row, full=True)

    @app.get("/sessions")
    def list_sessions(user: UserDep) -> list[dict[str, Any]]:
        with Session(engine) as db:
            q = select(TrainingSession).order_by(TrainingSession.created.desc())  # type: ignore[attr-defined]
            if not user.admin:
                q = q.where(TrainingSession.owner_id == user.id)
            return [view(db, row, full=False) for row in db.exec(q).all()]

    @app.get("/sessions/{sid}")
    def get_session(sid: str, user: UserDep) -> dict[str, Any]:
        with Session(engine) as db:
            return view(db, owned(db, sid, user), full=True)

    @app.get("/sessions/{sid}/metrics")
    async def metrics(sid: str, user: UserDep, follow: bool = False) -> StreamingResponse:
        """metrics.jsonl as it is (NDJSON); `?follow=true` streams rows until the session ends."""
        with Session(engine) as db:
            path = Path(owned(db, sid, user).run_dir) / "metrics.jsonl"

        def running() -> bool:
            with Session(engine) as db:
                row = db.get(TrainingSession, sid)
                return row is not None and row.state is RunState.RUNNING

        async def rows() -> Any:
            pos = 0
            while True:
                if path.exists():
                    with open(path, "rb") as fh:
                        fh.seek(pos)
                        chunk = fh.read()
                    whole = chunk[: chunk.rfind(b"\n") + 1]  # only complete rows
                    pos += len(whole)
                    if whole:
                        yield whole
                if not follow or not running():
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(rows(), media_type="application/x-ndjson")

    @app.post("/sessions/{sid}/stop", status_code=202)
    def stop_session(sid: str, user: UserDep) -> dict[str, Any]:
        with Session(engine) as db:
            row = owned(db, sid, user)
        sessions.stop(row)
        return {"id": sid, "state": row.state, "stopping": True}

    @app.post("/sessions/{sid}/resume", status_code=202)
    def resume_session(sid: str, user: UserDep) -> dict[str, Any]:
        with Session(engine) as db:
            row = owned(db, sid, user)
        row = sessions.resume(row)
        with Session(engine) as db:
            return view(db, row, full=True)

    # -- agents -----------------------------------------------------------------------
    @app.get("/agents")
    def list_agents(_user: UserDep) -> list[dict[str, Any]]:
        now = time.time()
        with Session(engine) as db:
            return [{"id": a.id, "name": a.name, "host": a.host, "port": a.port, "state": a.state, "online": a.state.online,
                     "session": a.session_id, "nodes": a.nodes, "last_heartbeat": a.last_seen,
                     "seconds_since_heartbeat": round(now - a.last_seen, 1), "public_key": a.public_key}
                    for a in db.exec(select(Agent).order_by(Agent.name)).all()]

    @app.post("/agents/register")
    def register(reg: Registration, request: Request, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        try:
            token_id = auth.enrol_token_id(engine, (authorization or "").removeprefix("Bearer "))
        except auth.Unauthorized as exc:
            raise unauthorized(str(exc)) from None
        host = reg.host or (request.client.host if request.client else "127.0.0.1")
        with Session(engine) as db:
            agent = db.exec(select(Agent).where(Agent.name == reg.name)).first()
            if agent is None:
                agent = Agent(name=reg.name, host=host, port=reg.port, public_key=reg.public_key, token_id=token_id)
            elif agent.public_key and agent.public_key != reg.public_key:
                raise unauthorized(f"agent {reg.name!r} is bound to another CURVE public key")
            else:
                agent.host, agent.port, agent.token_id = host, reg.port, token_id
                agent.public_key = agent.public_key or reg.public_key
                if agent.state is AgentState.LOST:
                    agent.state = AgentState.TRAINING if agent.session_id else AgentState.IDLE
            agent.last_seen = time.time()
            db.add(agent)
            db.commit()
            db.refresh(agent)
            assert agent.id is not None
            return {"agent_id": agent.id, "token": auth.issue(key, "agent", agent.id, auth.AGENT_TOKEN_TTL_S),
                    "heartbeat_s": heartbeat_s}

    @app.post("/agents/heartbeat")
    def heartbeat(beat: Beat, agent_id: Annotated[int, Depends(current_agent)]) -> dict[str, Any]:
        with Session(engine) as db:
            agent = db.get(Agent, agent_id)
            if agent is None:
                raise unauthorized(f"no agent {agent_id}: register again")
            agent.last_seen = time.time()
            if agent.state is AgentState.LOST:
                agent.state = AgentState.TRAINING if agent.session_id else AgentState.IDLE
            assignment = None
            if agent.state is AgentState.TRAINING and agent.session_id:
                row = db.get(TrainingSession, agent.session_id)
                if row is not None and row.state is RunState.RUNNING and row.pid:
                    cluster = Path(row.run_dir) / "cluster.yaml"
                    assignment = {"session": row.id, "attempt": row.pid, "nodes": agent.nodes, "cluster": cluster.read_text()}
            db.add(agent)
            db.commit()
            return {"assignment": assignment, "heartbeat_s": heartbeat_s}

    # -- dashboard --------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(static / "index.html")

    app.mount("/static", StaticFiles(directory=static), name="static")
    return app
