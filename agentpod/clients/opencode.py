"""Async HTTP client for one OpenCode server (``opencode serve`` in a sandbox).

Covers what the mirror reads (sessions, messages, status, the ``/event`` stream, the durable
``/sync/history`` log) and what the chat API writes (create, prompt, abort, delete). Payloads are
OpenCode's own JSON, passed through untouched.

Errors::

    OpenCodeError               anything OpenCode refused or that made no sense (4xx, non-JSON body)
    ├── OpenCodeUnavailable     cannot connect, connection cut, timeout, 5xx: worth retrying later
    └── OpenCodeNotFound        404: the session / message does not exist (any more)

Quirks of OpenCode 1.18 this client relies on or works around:

* An unknown route answers ``200 text/html`` (the web UI), so a non-JSON body is an error here.
* A malformed id (not ``ses_…`` / ``msg_…``) answers 500 ``UnknownError``, i.e. ``OpenCodeUnavailable``.
* ``POST /session/{id}/abort`` answers ``true`` even for a session that does not exist.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, aconnect_sse

JSON = dict[str, Any]

DEFAULT_USERNAME = "opencode"
# Pages of 200 keep one response around a few hundred KB even for tool-heavy turns.
MESSAGE_PAGE_SIZE = 200
SESSION_PAGE_SIZE = 200


class OpenCodeError(Exception):
    """OpenCode answered with an error, or with something this client cannot read."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class OpenCodeUnavailable(OpenCodeError):
    """The server cannot be reached, cut the connection, timed out or failed (5xx)."""


class OpenCodeNotFound(OpenCodeError):
    """404: the addressed session or message does not exist."""


_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every client of the process, built the way httpx builds its default.

    httpx builds a new context per ``AsyncClient`` (and per proxy mount) unless given one, and each
    loads the CA bundle: ~850 KB per client. The sync holds one client per sandbox, almost always
    over plain HTTP, so sharing the context is what keeps an idle stream cheap. Reading it is
    thread-safe; it is built once, on first use (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` as httpx reads them).
    """
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context()
        return _ssl_context


def _seg(value: str) -> str:
    """One URL path segment; ids come from outside, so never let them add path levels."""
    return quote(value, safe="")


def _updated(session: JSON) -> int:
    return int(session["time"]["updated"])


def _error_for(response: httpx.Response, what: str) -> OpenCodeError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:500]
    detail = body
    if isinstance(body, dict):
        data = body.get("data")
        # OpenCode's error shape: {"name": "NotFoundError", "data": {"message": "..."}}
        if isinstance(data, dict) and data.get("message"):
            detail = f"{body.get('name', 'error')}: {data['message']}"
    message = f"{what}: HTTP {response.status_code}: {detail}"
    if response.status_code == 404:
        return OpenCodeNotFound(message, status=404, body=body)
    if response.status_code >= 500:
        return OpenCodeUnavailable(message, status=response.status_code, body=body)
    return OpenCodeError(message, status=response.status_code, body=body)


class RotatingBasicAuth(httpx.Auth):
    """HTTP Basic with a list of candidate passwords: on a 401 the request is sent again with the next.

    A sandbox holds the password made with the keyring's primary key at its last start; after a key
    rotation it still holds the old one until it restarts, so the client tries the current password
    first and older ones after. The one that worked moves to the front, so later requests (and the
    event stream's reconnects) pay no extra round trip. No body is read: works for streams too.
    """

    def __init__(self, username: str, passwords: Sequence[str]) -> None:
        if not passwords:
            raise ValueError("at least one password is required")
        self._username = username
        self._passwords = list(passwords)

    def _header(self, password: str) -> str:
        token = base64.b64encode(f"{self._username}:{password}".encode()).decode()
        return f"Basic {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Try the passwords in turn until one is not refused."""
        candidates = list(self._passwords)
        for password in candidates:
            request.headers["Authorization"] = self._header(password)
            response = yield request
            if response.status_code != 401:
                if password != self._passwords[0]:
                    self._passwords.remove(password)
                    self._passwords.insert(0, password)
                return


class OpenCodeClient:
    """One OpenCode server. Use as ``async with OpenCodeClient(url, passwords) as oc:`` (or call :meth:`aclose`).

    ``passwords`` are the sandbox's server passwords, current first
    (:func:`agentpod.security.sandbox_secrets.opencode_passwords`); None for a server without one.
    All calls share one ``httpx.AsyncClient`` (and every client of the process one TLS context, see
    :func:`shared_ssl_context`); ``timeout`` applies to every call except the event
    stream, which has no read timeout (OpenCode sends a heartbeat every 10 s; the caller judges liveness).
    """

    def __init__(
        self,
        base_url: str,
        passwords: Sequence[str] | None = None,
        *,
        username: str = DEFAULT_USERNAME,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            auth=RotatingBasicAuth(username, passwords) if passwords else None,
            # No proxy from the environment between us and a sandbox.
            trust_env=False,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"accept": "application/json"},
            verify=shared_ssl_context(),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- plumbing -------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        what = f"{method} {path}"
        try:
            response = await self._http.request(method, path, params=params, json=body)
        except httpx.TransportError as exc:  # connect/read errors, timeouts, cut connections
            raise OpenCodeUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        if response.is_error:
            raise _error_for(response, what)
        return response

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
    ) -> Any:
        response = await self._request(method, path, params=params, body=body)
        return self._decode(response, f"{method} {path}")

    @staticmethod
    def _decode(response: httpx.Response, what: str) -> Any:
        # Unknown routes fall through to the web UI (200 text/html): treat as "no such API".
        if "json" not in response.headers.get("content-type", ""):
            raise OpenCodeError(
                f"{what}: expected JSON, got {response.headers.get('content-type')!r} "
                "(route missing in this OpenCode version?)",
                status=response.status_code,
                body=response.text[:500],
            )
        try:
            return response.json()
        except ValueError as exc:
            raise OpenCodeError(f"{what}: invalid JSON", status=response.status_code) from exc

    async def _json_list(self, method: str, path: str, **kwargs: Any) -> list[JSON]:
        data = await self._json(method, path, **kwargs)
        if not isinstance(data, list):
            raise OpenCodeError(f"{method} {path}: expected a JSON array, got {type(data).__name__}")
        return data

    async def _json_object(self, method: str, path: str, **kwargs: Any) -> JSON:
        data = await self._json(method, path, **kwargs)
        if not isinstance(data, dict):
            raise OpenCodeError(f"{method} {path}: expected a JSON object, got {type(data).__name__}")
        return data

    # --- read side (the OpenCodeApi protocol and friends) -------------------------------------

    async def health(self) -> bool:
        """True when the server answers healthy; False when unreachable, failing or unhealthy.

        Other errors (a 401 from a wrong password, say) raise: they are configuration bugs, not health.
        """
        try:
            data = await self._json("GET", "/global/health")
        except OpenCodeUnavailable:
            return False
        return isinstance(data, dict) and data.get("healthy") is True

    async def version(self) -> str | None:
        """The server's OpenCode version (``/global/health`` says it), or None when it does not."""
        data = await self._json("GET", "/global/health")
        version = data.get("version") if isinstance(data, dict) else None
        return version if isinstance(version, str) and version else None

    async def paths(self) -> JSON:
        """``GET /path``: the server's ``directory`` (where it runs) and the project's ``worktree``, among others."""
        data = await self._json("GET", "/path")
        return data if isinstance(data, dict) else {}

    async def current_project(self) -> JSON:
        """``GET /project/current``: the project the server's directory belongs to (``id``, ``worktree``)."""
        data = await self._json("GET", "/project/current")
        return data if isinstance(data, dict) else {}

    async def list_sessions(self, *, page_size: int = SESSION_PAGE_SIZE) -> list[JSON]:
        """Every session the server has, children and archived ones included, newest-updated first.

        ``GET /session`` would be simpler but stops at 100 sessions without a cursor and only covers
        the server's own directory; ``/experimental/session`` covers every project and pages by
        ``time.updated``. It leaves archived sessions out unless ``archived=true``, which in turn
        returns *only* archived ones, hence two walks. Each item is a Session plus ``project``.
        """
        found: dict[str, JSON] = {}
        for archived in ("false", "true"):
            for session in await self._walk_sessions(archived, page_size):
                found.setdefault(session["id"], session)
        return sorted(found.values(), key=_updated, reverse=True)

    async def _walk_sessions(self, archived: str, page_size: int) -> list[JSON]:
        path = "/experimental/session"
        seen: dict[str, JSON] = {}
        cursor: int | None = None
        limit = page_size
        while True:
            params: dict[str, str | int] = {"limit": limit, "archived": archived}
            if cursor is not None:
                params["cursor"] = cursor
            response = await self._request("GET", path, params=params)
            page = self._decode(response, f"GET {path}")
            if not isinstance(page, list):
                raise OpenCodeError(f"GET {path}: expected a JSON array")
            for session in page:
                seen.setdefault(session["id"], session)
            # X-Next-Cursor comes only with a full page; it is the page's oldest ``time.updated`` and
            # the next page holds sessions strictly older. Sessions sharing that millisecond beyond the
            # limit would be skipped, so ask from one ms later (inclusive) instead, with the limit
            # raised by the number already seen in that millisecond: each call then brings a page of
            # new sessions or finishes the tie, however large.
            if not response.headers.get("x-next-cursor") or not page:
                return list(seen.values())
            oldest = min(_updated(s) for s in page)
            cursor = oldest + 1
            limit = page_size + sum(1 for s in seen.values() if _updated(s) == oldest)

    async def get_session(self, session_id: str) -> JSON:
        return await self._json_object("GET", f"/session/{_seg(session_id)}")

    async def list_messages(self, session_id: str, *, page_size: int = MESSAGE_PAGE_SIZE) -> list[JSON]:
        """Every message of a session with its parts, oldest first.

        ``?limit=N`` returns the newest N (oldest first within the page) and, when older ones exist,
        an opaque ``X-Next-Cursor`` to pass as ``before``; so pages are fetched newest to oldest and
        stitched together in reverse. Messages are de-duplicated by id in case one is written while
        paging.
        """
        path = f"/session/{_seg(session_id)}/message"
        pages: list[list[JSON]] = []
        before: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": page_size}
            if before is not None:
                params["before"] = before
            response = await self._request("GET", path, params=params)
            page = self._decode(response, f"GET {path}")
            if not isinstance(page, list):
                raise OpenCodeError(f"GET {path}: expected a JSON array")
            pages.append(page)
            next_cursor = response.headers.get("x-next-cursor")
            if not next_cursor or not page or next_cursor == before:
                break
            before = next_cursor
        messages: list[JSON] = []
        seen: set[str] = set()
        for page in reversed(pages):
            for message in page:
                message_id = message["info"]["id"]
                if message_id not in seen:
                    seen.add(message_id)
                    messages.append(message)
        return messages

    async def get_message(self, session_id: str, message_id: str) -> JSON:
        """One message as ``{"info": Message, "parts": [...]}``."""
        return await self._json_object("GET", f"/session/{_seg(session_id)}/message/{_seg(message_id)}")

    async def session_status(self) -> dict[str, JSON]:
        """Busy / retrying sessions by id (``{"type": "busy"}``, ``{"type": "retry", ...}``); absent = idle."""
        return await self._json_object("GET", "/session/status")

    async def reload(self) -> None:
        """``POST /global/dispose``: drop every instance, so the next request reads the config files
        (``OPENCODE_CONFIG``, ``OPENCODE_CONFIG_DIR``) again. A turn in progress would be cut: callers
        check :meth:`session_status` first."""
        await self._request("POST", "/global/dispose")

    async def sync_history(self, last_seq: Mapping[str, int]) -> list[JSON]:
        """Durable events with ``seq`` above ``last_seq[session_id]``.

        Sessions not named get their whole history, so ``{}`` returns every event of every live
        session. Deleted sessions' history is gone; deltas and status are never in it.
        """
        return await self._json_list("POST", "/sync/history", body=dict(last_seq))

    async def events(self) -> AsyncIterator[JSON]:
        """The server's ``/event`` stream as parsed JSON objects (``{"id", "type", "properties"}``).

        Starts with ``server.connected``; there is no replay on reconnect (use :meth:`sync_history`).
        Ends normally on a clean EOF (OpenCode closes it when the directory instance is disposed);
        raises :class:`OpenCodeUnavailable` when the connection fails or is cut (server killed).
        """
        # No read timeout: silence is for the caller to judge (heartbeats come every 10 s).
        timeout = httpx.Timeout(self._timeout, read=None)
        try:
            async with aconnect_sse(self._http, "GET", "/event", timeout=timeout) as source:
                response = source.response
                if response.is_error:
                    await response.aread()
                    raise _error_for(response, "GET /event")
                async for sse in source.aiter_sse():
                    if not sse.data:
                        continue
                    try:
                        event = json.loads(sse.data)
                    except ValueError:
                        continue  # not ours to interpret; OpenCode only sends JSON data lines
                    if isinstance(event, dict):
                        yield event
        except SSEError as exc:  # a TransportError subclass, but means "not an event stream"
            raise OpenCodeError(f"GET /event: {exc} (route missing in this OpenCode version?)") from exc
        except httpx.TransportError as exc:
            raise OpenCodeUnavailable(f"GET /event: {type(exc).__name__}: {exc}") from exc

    # --- write side (chat API) ---------------------------------------------------------------

    async def create_session(self, title: str | None = None, parent_id: str | None = None) -> JSON:
        """A new session in the server's directory. Without a title OpenCode generates one after the
        first prompt (a request to the small model)."""
        body: JSON = {}
        if title is not None:
            body["title"] = title
        if parent_id is not None:
            body["parentID"] = parent_id
        return await self._json_object("POST", "/session", body=body)

    async def prompt_async(
        self,
        session_id: str,
        text: str,
        *,
        model: tuple[str, str] | None = None,
        agent: str | None = None,
        message_id: str | None = None,
        no_reply: bool = False,
    ) -> None:
        """Queue a user message; returns once accepted (204), the reply arrives as events.

        ``model`` is ``(provider_id, model_id)``; ``message_id`` a caller-chosen ``msg…`` id (makes
        a retried call recognisable); ``no_reply`` stores the message without running the agent.
        """
        body: JSON = {"parts": [{"type": "text", "text": text}]}
        if model is not None:
            body["model"] = {"providerID": model[0], "modelID": model[1]}
        if agent is not None:
            body["agent"] = agent
        if message_id is not None:
            body["messageID"] = message_id
        if no_reply:
            body["noReply"] = True
        await self._request("POST", f"/session/{_seg(session_id)}/prompt_async", body=body)

    async def abort(self, session_id: str) -> bool:
        """Stop the running turn. OpenCode answers true even when nothing was running."""
        return bool(await self._json("POST", f"/session/{_seg(session_id)}/abort"))

    async def delete_session(self, session_id: str) -> bool:
        """Delete a session with its messages (and its durable history). 404 if it does not exist."""
        return bool(await self._json("DELETE", f"/session/{_seg(session_id)}"))
