"""The gateway's HTTP API (Starlette): JSON routes plus one SSE stream. See ``gateway/README.md``."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentpod_gateway import __version__
from agentpod_gateway.core import Gateway
from agentpod_gateway.errors import GatewayError
from agentpod_gateway.events import DEFAULT_HEARTBEAT_SECONDS

MAX_BODY = 1024 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]
Body = TypeVar("Body", bound=BaseModel)


class SecretSource:
    """The bearer secret: given directly (tests) or read from a file (the sandbox's tmpfs).

    The file is re-read when it changes, so the control plane can write it after the gateway
    started (or rotate it); until it exists every protected route answers 503.
    """

    def __init__(self, secret: str | None = None, path: Path | None = None) -> None:
        if secret is None and path is None:
            raise ValueError("a secret or a secret file is required")
        self._fixed = secret.encode() if secret is not None else None
        self._path = path
        self._cached: bytes | None = None
        self._stamp: tuple[int, int] | None = None

    def get(self) -> bytes | None:
        if self._fixed is not None:
            return self._fixed
        assert self._path is not None
        try:
            stat = os.stat(self._path)
        except OSError:
            return self._cached
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            with contextlib.suppress(OSError):
                value = self._path.read_bytes().strip()
                self._cached, self._stamp = (value or None), stamp
        return self._cached


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: str
    cwd: str | None = None


class Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    option_id: str


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def _body(request: Request, model: type[Body]) -> Body:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise _HttpError(413, "request body too large")
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise _HttpError(400, f"invalid JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise _HttpError(422, problems) from exc


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(gateway: Gateway, secret: SecretSource, *, heartbeat: float = DEFAULT_HEARTBEAT_SECONDS) -> Starlette:
    """The ASGI app; its lifespan shutdown stops the gateway (turns, streams, agents)."""

    def protected(endpoint: Endpoint) -> Endpoint:
        async def check(request: Request) -> Response:
            expected = secret.get()
            if expected is None:
                return _error(503, "the gateway secret is not configured yet")
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            # compare_digest: the time taken must not tell how much of a guess was right.
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                return _error(401, "missing or wrong bearer secret", **{"WWW-Authenticate": "Bearer"})
            try:
                return await endpoint(request)
            except GatewayError as exc:
                return _error(exc.status, str(exc))
            except _HttpError as exc:
                return _error(exc.status, str(exc))

        return check

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def list_agents(_request: Request) -> Response:
        return JSONResponse({"agents": gateway.agents()})

    async def list_sessions(_request: Request) -> Response:
        return JSONResponse({"sessions": gateway.sessions()})

    async def create_session(request: Request) -> Response:
        body = await _body(request, CreateSession)
        record = await gateway.create_session(body.agent_id, body.cwd)
        return JSONResponse(
            {"session_id": record.session_id, "agent_id": record.agent_id, "cwd": record.cwd}, status_code=201
        )

    async def get_session(request: Request) -> Response:
        return JSONResponse(gateway.session(request.path_params["session_id"]))

    async def prompt(request: Request) -> Response:
        body = await _body(request, Prompt)
        session_id = request.path_params["session_id"]
        turn = gateway.prompt(session_id, body.text)
        return JSONResponse({"session_id": session_id, "turn_id": turn.turn_id}, status_code=202)

    async def cancel(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        turn = await gateway.cancel(session_id)
        return JSONResponse({"session_id": session_id, "turn_id": turn.turn_id}, status_code=202)

    async def history(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        updates = await gateway.history(session_id)
        return JSONResponse({"session_id": session_id, "updates": updates})

    async def list_permissions(_request: Request) -> Response:
        return JSONResponse({"permissions": gateway.permissions()})

    async def answer_permission(request: Request) -> Response:
        body = await _body(request, Answer)
        pending = gateway.answer_permission(request.path_params["request_id"], body.option_id)
        return JSONResponse(
            {"request_id": pending.request_id, "session_id": pending.session_id, "option_id": body.option_id}
        )

    async def events(request: Request) -> Response:
        last_event_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        stream = gateway.events.subscribe(last_event_id, heartbeat)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await gateway.close()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/agents", protected(list_agents), methods=["GET"]),
        Route("/sessions", protected(list_sessions), methods=["GET"]),
        Route("/sessions", protected(create_session), methods=["POST"]),
        Route("/sessions/{session_id}", protected(get_session), methods=["GET"]),
        Route("/sessions/{session_id}/prompt", protected(prompt), methods=["POST"]),
        Route("/sessions/{session_id}/cancel", protected(cancel), methods=["POST"]),
        Route("/sessions/{session_id}/history", protected(history), methods=["GET"]),
        Route("/permissions", protected(list_permissions), methods=["GET"]),
        Route("/permissions/{request_id}", protected(answer_permission), methods=["POST"]),
        Route("/events", protected(events), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
