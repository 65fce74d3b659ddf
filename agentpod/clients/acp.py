"""Async HTTP client for one sandbox's ACP gateway (``gateway/`` in this repository, port 4097).

Errors::

    AcpGatewayError              the gateway refused the request (4xx) or answered nonsense
    ├── AcpGatewayUnavailable    cannot connect, connection cut, timeout, 5xx, secret not set yet
    ├── AcpGatewayNotFound       404: unknown agent, session or permission request
    └── AcpGatewayConflict       409: a turn is running / nothing to cancel

The gateway's bearer secret is derived from the keyring (:mod:`security.gateway_secret`); after a
key rotation a running sandbox still holds the older one, so a 401 makes the client try the next.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from agentpod.clients.opencode import shared_ssl_context

JSON = dict[str, Any]


class AcpGatewayError(Exception):
    """The gateway answered with an error, or with something this client cannot read."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AcpGatewayUnavailable(AcpGatewayError):
    """Not reachable, failed (5xx), or not ready (no secret yet): worth retrying later."""


class AcpGatewayNotFound(AcpGatewayError):
    """404: the agent, session or permission request is unknown to the gateway."""


class AcpGatewayConflict(AcpGatewayError):
    """409: a turn is already running, or there is none to cancel."""


@dataclass(frozen=True)
class GatewayEvent:
    """One SSE frame of ``GET /events``: ``id`` is ``<epoch>-<seq>``."""

    id: str | None
    event: str
    data: JSON


def _seg(value: str) -> str:
    return quote(value, safe="")


def _error_for(response: httpx.Response, what: str) -> AcpGatewayError:
    try:
        detail = response.json().get("error")
    except (ValueError, AttributeError):
        detail = None
    message = f"{what}: HTTP {response.status_code}" + (f": {detail}" if detail else "")
    status = response.status_code
    if status == 404:
        return AcpGatewayNotFound(message, status=status)
    if status == 409:
        return AcpGatewayConflict(message, status=status)
    if status >= 500:
        return AcpGatewayUnavailable(message, status=status)
    return AcpGatewayError(message, status=status)


class AcpGatewayClient:
    """One gateway. Use as ``async with AcpGatewayClient(url, secrets) as gateway:``."""

    def __init__(self, base_url: str, secrets: Sequence[str], *, timeout: float = 30.0) -> None:
        if not secrets:
            raise ValueError("at least one gateway secret is required")
        self._secrets = list(secrets)
        self._timeout = timeout
        # trust_env=False: no proxy from the environment between us and a sandbox.
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, trust_env=False, verify=shared_ssl_context()
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the connection pool."""
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._secrets[0]}"}

    def _rotate(self) -> bool:
        """After a 401: try the next secret (an older key's); False when none is left."""
        if len(self._secrets) == 1:
            return False
        self._secrets = self._secrets[1:] + self._secrets[:1]
        return True

    async def _request(self, method: str, path: str, body: JSON | None = None) -> Any:
        what = f"{method} {path}"
        for _ in range(len(self._secrets)):
            try:
                response = await self._http.request(method, path, json=body, headers=self._headers())
            except httpx.TransportError as exc:
                raise AcpGatewayUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
            if response.status_code == 401 and self._rotate():
                continue
            if response.status_code == 503:
                raise AcpGatewayUnavailable(f"{what}: the gateway is not ready", status=503)
            if response.is_error:
                raise _error_for(response, what)
            try:
                return response.json()
            except ValueError as exc:
                raise AcpGatewayError(f"{what}: the answer is not JSON") from exc
        raise AcpGatewayError(f"{what}: the gateway refused every secret", status=401)

    # --- reads ----------------------------------------------------------------------------------

    async def agents(self) -> list[JSON]:
        """``GET /agents``."""
        return list((await self._request("GET", "/agents")).get("agents") or [])

    async def sessions(self) -> list[JSON]:
        """``GET /sessions``: every session this gateway created, with ``running``."""
        return list((await self._request("GET", "/sessions")).get("sessions") or [])

    async def history(self, session_id: str) -> list[JSON]:
        """``GET /sessions/{id}/history``: the conversation's ACP updates (409 while a turn runs)."""
        return list((await self._request("GET", f"/sessions/{_seg(session_id)}/history")).get("updates") or [])

    async def permissions(self) -> list[JSON]:
        """``GET /permissions``: the requests still waiting for an answer."""
        return list((await self._request("GET", "/permissions")).get("permissions") or [])

    # --- writes ---------------------------------------------------------------------------------

    async def create_session(self, agent_id: str) -> JSON:
        """``POST /sessions``: ``{session_id, agent_id, cwd}``."""
        result: JSON = await self._request("POST", "/sessions", {"agent_id": agent_id})
        return result

    async def prompt(self, session_id: str, text: str) -> JSON:
        """``POST /sessions/{id}/prompt``: ``{session_id, turn_id}`` at once; the turn runs in the background."""
        result: JSON = await self._request("POST", f"/sessions/{_seg(session_id)}/prompt", {"text": text})
        return result

    async def cancel(self, session_id: str) -> JSON:
        """``POST /sessions/{id}/cancel``: ``{session_id, turn_id}``."""
        result: JSON = await self._request("POST", f"/sessions/{_seg(session_id)}/cancel")
        return result

    async def answer_permission(self, request_id: str, option_id: str) -> JSON:
        """``POST /permissions/{id}``."""
        result: JSON = await self._request("POST", f"/permissions/{_seg(request_id)}", {"option_id": option_id})
        return result

    # --- the event stream -----------------------------------------------------------------------

    async def events(self, last_event_id: str | None = None) -> AsyncGenerator[GatewayEvent, None]:
        """``GET /events`` from after ``last_event_id`` (the first frame may be ``reset``).

        Comment lines (the gateway's heartbeat) are yielded as ``GatewayEvent(None, "heartbeat", {})``
        so the caller can judge silence. Ends normally on a clean EOF; raises
        :class:`AcpGatewayUnavailable` when the connection fails or is cut.
        """
        timeout = httpx.Timeout(self._timeout, read=None)
        for _ in range(len(self._secrets)):
            headers = {**self._headers(), "Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            try:
                async with self._http.stream("GET", "/events", headers=headers, timeout=timeout) as response:
                    if response.status_code == 401 and self._rotate():
                        continue
                    if response.is_error:
                        await response.aread()
                        if response.status_code == 503:
                            raise AcpGatewayUnavailable("GET /events: the gateway is not ready", status=503)
                        raise _error_for(response, "GET /events")
                    async for event in _parse_sse(response.aiter_lines()):
                        yield event
                    return
            except httpx.TransportError as exc:
                raise AcpGatewayUnavailable(f"GET /events: {type(exc).__name__}: {exc}") from exc
        raise AcpGatewayError("GET /events: the gateway refused every secret", status=401)


async def _parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[GatewayEvent]:
    """SSE frames (``id`` / ``event`` / ``data``) and comment lines, as the gateway writes them."""
    fields: dict[str, str] = {}
    async for line in lines:
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if not name:
                yield GatewayEvent(None, "heartbeat", {})
            elif name == "data" and "data" in fields:
                fields["data"] += "\n" + value
            else:
                fields[name] = value
            continue
        if "event" in fields:
            try:
                data = json.loads(fields.get("data") or "{}")
            except ValueError:
                data = {}
            yield GatewayEvent(fields.get("id") or None, fields["event"], data if isinstance(data, dict) else {})
        fields = {}
