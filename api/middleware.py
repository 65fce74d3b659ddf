"""Pure-ASGI middleware: request ids, a request-body size limit, and no NUL characters in URLs.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses such as Server-Sent Events and
exports pass through untouched.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
# A client-supplied id is kept only if it is short and plain, so it can't inject into logs.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Give every request an id (``X-Request-ID``), echoed on the response and in error bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((REQUEST_ID_HEADER.encode(), request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimitMiddleware:
    """Answer 413 for bodies over ``max_bytes``, declared or streamed, before any handler runs.

    The body is read up front (it is at most ``max_bytes``) and replayed to the app: raising from
    inside ``receive`` would surface in the app as an unhandled error, i.e. a 500.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            received += len(body)
            if received > self.max_bytes:
                await self._reject(scope, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        message = f"request body exceeds {self.max_bytes} bytes"
        await send_error(scope, send, 413, "payload_too_large", message, {"max_bytes": self.max_bytes})


class RejectNulMiddleware:
    """Answer 400 for a NUL character anywhere in the path or query string, before any handler runs.

    PostgreSQL text cannot hold NUL, so an id like ``%00`` reaching a query was a 500 there (and a plain
    404 on SQLite); bodies are refused by the request schemas already.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope.get("path", "") or b"\x00" in unquote_to_bytes(scope.get("query_string", b""))
        ):
            await send_error(scope, send, 400, "nul_character", "the URL must not contain NUL characters")
            return
        await self.app(scope, receive, send)


async def send_error(scope: Scope, send: Send, status: int, code: str, message: str, details: Any = None) -> None:
    """Answer in the one error shape from middleware (before FastAPI's handlers exist for the request)."""
    request_id = scope.get("state", {}).get("request_id")
    body = json.dumps(
        {"error": {"code": code, "message": message, "details": details, "request_id": request_id}}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
