"""The ACP mirror's reconcile against a gateway whose agent cannot load every session."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.chat_mirror.acp import AcpMirror
from agentpod.clients.acp import AcpGatewayUnavailable
from agentpod.store.tables import ChatMessage, ChatSession
from tests.helpers import make_owner

JSON = dict[str, Any]


class Gateway:
    """The slice of the gateway a reconcile reads: two sessions, the agent unable to load ``lost``."""

    def __init__(self, *, down: bool = False) -> None:
        self.down = down

    async def sessions(self) -> list[JSON]:
        return [
            {"session_id": "lost", "agent_id": "claude-code", "running": False},
            {"session_id": "kept", "agent_id": "claude-code", "running": False},
        ]

    async def history(self, session_id: str) -> list[JSON]:
        if self.down:
            raise AcpGatewayUnavailable("GET /sessions: connection refused")
        if session_id == "lost":  # e.g. Claude Code keeps no transcript of a session never prompted
            raise AcpGatewayUnavailable("session/load failed: Session not found", status=502)
        return [
            {"sessionUpdate": "user_message_chunk", "content": {"type": "text", "text": "Say hello"}},
            {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "Hello."}},
        ]


async def test_a_session_the_agent_cannot_load_does_not_stop_the_others(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    owner = await make_owner(sessions)
    mirror = AcpMirror(sessions, sandbox_id=owner.sandbox_id, user_id=owner.user_id)

    report = await mirror.reconcile(Gateway())  # type: ignore[arg-type]

    assert any(note.startswith("lost: the agent could not load it") for note in report.notes), report.notes
    async with sessions() as db:
        rows = {row.acp_session_id: row.id for row in await db.scalars(select(ChatSession))}
        texts = list(await db.scalars(select(ChatMessage.text).where(ChatMessage.session_id == rows["kept"])))
    assert set(rows) == {"lost", "kept"} and texts == ["Say hello", "Hello."]


async def test_a_gateway_that_does_not_answer_fails_the_reconcile(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    owner = await make_owner(sessions)
    mirror = AcpMirror(sessions, sandbox_id=owner.sandbox_id, user_id=owner.user_id)
    # Not an agent that cannot load: the stream's loop retries the whole reconcile, with back-off.
    with pytest.raises(AcpGatewayUnavailable):
        await mirror.reconcile(Gateway(down=True))  # type: ignore[arg-type]
