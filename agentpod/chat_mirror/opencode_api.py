"""The slice of OpenCode's API the mirror needs, as a Protocol (the real client and test fakes both fit).

Payloads are OpenCode's own JSON, untouched: a Session object; a message as ``{"info": Message,
"parts": [Part, ...]}``; an event as ``{"type": str, "properties": {...}}``. See the event catalogue
in the project's reference notes for every shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

JSON = dict[str, Any]


class OpenCodeApi(Protocol):
    """Read side of OpenCode used by reconcile and the live stream."""

    async def list_sessions(self) -> list[JSON]:
        """Every session (all pages), children included."""
        ...

    async def list_messages(self, session_id: str) -> list[JSON]:
        """Every message of a session with its parts, oldest first (all pages)."""
        ...

    async def session_status(self) -> dict[str, JSON]:
        """Busy / retrying sessions by id; sessions not listed are idle."""
        ...

    def events(self) -> AsyncIterator[JSON]:
        """The ``/event`` stream, parsed. Ends on a clean EOF; raises on a transport error."""
        ...
