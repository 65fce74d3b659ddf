"""An HTTP client that behaves like the app: it retries what a dying server causes, and counts everything.

Transient: connection errors (the API was killed), 502/503/504 (a dependency is down: Temporal, the
sandbox's agent). Those are retried with capped backoff until the call's budget is spent. A 500 is
retried too (a user would tap again) but counted as a server error: the API is being killed, it is not
supposed to answer 500. Every other status goes back to the caller, which decides what it means.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

TRANSIENT_STATUSES = {502, 503, 504}
DEFAULT_BUDGET_S = 120.0
REQUEST_TIMEOUT_S = 120.0


class GaveUp(Exception):
    """The call kept failing transiently for its whole budget."""


@dataclass
class Stats:
    """What the clients saw over the run (shared by every client)."""

    requests: int = 0
    retries: Counter[str] = field(default_factory=Counter)  # why: "connect", "read", "503 temporal_unavailable", ...
    server_errors: list[str] = field(default_factory=list)  # 500s: method path request-id
    ambiguous: Counter[str] = field(default_factory=Counter)  # non-idempotent calls whose answer was lost

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": dict(self.retries.most_common()),
            "server_errors": self.server_errors,
            "ambiguous_writes": dict(self.ambiguous),
        }


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code", "")) if isinstance(error, dict) else ""


class ApiClient:
    """Talks to one or more API processes (round robin, so a dead one is skipped on retry)."""

    def __init__(self, base_urls: list[str], stats: Stats) -> None:
        self._http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S)
        self._urls = itertools.cycle(base_urls)
        self.stats = stats
        self.token: str | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        budget: float = DEFAULT_BUDGET_S,
        auth: bool = True,
        retry_statuses: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """One request, retried on transient failures; returns the first non-transient response.

        ``retry_statuses`` adds statuses the caller also treats as transient (e.g. 409 while starting).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        delay = 0.25
        sent_once = False
        last = "nothing"
        while True:
            url = next(self._urls) + path
            all_headers = {**(self.headers if auth else {}), **(headers or {})}
            self.stats.requests += 1
            try:
                response = await self._http.request(method, url, json=json, params=params, headers=all_headers)
            except httpx.TransportError as error:
                kind = type(error).__name__
                # A request that may have reached the server before the connection died is ambiguous.
                if method != "GET" and not isinstance(error, httpx.ConnectError):
                    sent_once = True
                    self.stats.ambiguous[f"{method} {_route(path)}"] += 1
                self.stats.retries[kind] += 1
                last = kind
            else:
                status = response.status_code
                if status == 500:
                    rid = response.headers.get("x-request-id", "-")
                    self.stats.server_errors.append(f"{method} {_route(path)} request {rid}: {response.text[:200]}")
                if status in TRANSIENT_STATUSES or status == 500 or status in retry_statuses:
                    code = _error_code(response)
                    self.stats.retries[f"{status} {code}".strip()] += 1
                    last = f"{status} {code}"
                else:
                    response.extensions["chaos_resent"] = sent_once
                    return response
            if loop.time() + delay > deadline:
                raise GaveUp(f"{method} {_route(path)}: still failing after {budget:.0f} s (last: {last})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)


def _route(path: str) -> str:
    """The path with ids replaced, so counters group by endpoint."""
    parts = []
    for part in path.split("?")[0].split("/"):
        looks_like_id = len(part) >= 16 and any(ch.isdigit() for ch in part) and part not in ("data-export",)
        parts.append("{id}" if looks_like_id else part)
    return "/".join(parts)
