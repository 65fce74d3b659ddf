"""ACP (``/api/v2/sandboxes/{sandbox_id}/acp``): conversations with the agents of a sandbox's ACP gateway.

Writes go to the gateway; what the agents say is mirrored by the ACP sync workflow into the chat tables,
so the chat API (list, messages, live stream) serves ACP sessions like OpenCode ones. Everything is
owner-scoped through the sandbox: another user's sandbox, session or request is a 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Path, status

from agentpod.acp_agents import ACP_AGENTS, BY_ID
from agentpod.clients.acp import (
    AcpGatewayClient,
    AcpGatewayConflict,
    AcpGatewayError,
    AcpGatewayNotFound,
    AcpGatewayUnavailable,
)
from agentpod.security.sandbox_secrets import gateway_secrets
from agentpod.store import chat, providers, sandboxes
from agentpod.store.acp_sync import claim_session
from agentpod.store.base import utcnow
from agentpod.store.chat_sync import lock_sandbox_chats
from agentpod.store.tables import Sandbox
from api.audit import AuditEntry, audit
from api.deps import AcpClients, AcpGatewayFactory, Context, DbSession, OwnedAcpSession, OwnedSandbox
from api.errors import ERROR_RESPONSES, ApiError, Conflict, ErrorResponse, NotFound
from api.routes.chat import require_model_source
from api.schemas.acp import (
    AcpAgentList,
    AcpAgentOut,
    AcpPermissionAnswer,
    AcpPermissionAnswered,
    AcpPermissionList,
    AcpPermissionOut,
    AcpPrompt,
    AcpSessionCreate,
    AcpTurnAccepted,
)
from api.schemas.chat import ChatSessionOut

router = APIRouter(
    prefix="/api/v2/sandboxes/{sandbox_id}/acp",
    tags=["acp"],
    responses={**ERROR_RESPONSES, 502: {"model": ErrorResponse, "description": "The sandbox's gateway failed"}},
)

RequestId = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


@asynccontextmanager
async def _gateway(ctx: Context, clients: AcpGatewayFactory, sandbox: Sandbox) -> AsyncIterator[AcpGatewayClient]:
    """A client for the sandbox's gateway; its failures become 404 / 409 / 422 / 502 in the error shape."""
    if sandbox.status != "running":
        raise Conflict(
            f"the sandbox is {sandbox.status}; start it first",
            code="sandbox_not_running",
            details={"status": sandbox.status},
        )
    if not sandbox.acp_internal_url:
        raise Conflict("the sandbox runs no ACP gateway", code="acp_gateway_unavailable")
    client = clients(sandbox.acp_internal_url, gateway_secrets(ctx.keyring, sandbox.id))
    try:
        yield client
    except AcpGatewayNotFound:
        raise NotFound("the gateway does not know this agent, session or request", code="acp_not_found") from None
    except AcpGatewayConflict:
        raise Conflict("the agent is busy with another turn, or has none to cancel", code="acp_busy") from None
    except AcpGatewayUnavailable as error:
        if error.status == 502:  # the gateway answered: its agent could not start or do what was asked
            raise ApiError(f"the agent failed: {error}"[:500], status=502, code="acp_agent_failed") from None
        raise ApiError("the sandbox's ACP gateway is not reachable", status=502, code="acp_unavailable") from None
    except AcpGatewayError as error:
        if error.status == 422:
            raise ApiError(str(error), status=422, code="validation_error") from None
        raise ApiError(
            "the sandbox's ACP gateway refused the request",
            status=502,
            code="acp_error",
            details={"status": error.status},
        ) from None
    finally:
        await client.aclose()


@router.get("/agents")
async def list_agents(sandbox: OwnedSandbox, db: DbSession, ctx: Context, clients: AcpClients) -> AcpAgentList:
    """The sandbox's agents: available or not for you (and why), and, while it runs, their processes' state."""
    reasons = await providers.acp_agent_reasons(db, sandbox.user_id, ctx.settings.agent_base_config)
    running: dict[str, dict[str, Any]] = {}
    if sandbox.status == "running" and sandbox.acp_internal_url:
        async with _gateway(ctx, clients, sandbox) as gateway:
            running = {str(agent.get("id")): agent for agent in await gateway.agents()}
    return AcpAgentList(
        agents=[
            AcpAgentOut(
                id=agent.id,
                name=agent.name,
                available=reasons[agent.id] is None,
                unavailable_reason=reasons[agent.id],
                provider=agent.provider,
                state=str(running.get(agent.id, {}).get("state") or "stopped"),
                error=running.get(agent.id, {}).get("error"),
                load_session=running.get(agent.id, {}).get("load_session"),
            )
            for agent in ACP_AGENTS
        ]
    )


async def _require_available(db: DbSession, ctx: Context, sandbox: Sandbox, agent_id: str) -> None:
    """409 for an agent the image has but this user cannot run (no key for its provider); 404 for no such agent."""
    if agent_id not in BY_ID:
        raise NotFound(f"the sandbox has no agent {agent_id!r}", code="acp_not_found")
    reason = (await providers.acp_agent_reasons(db, sandbox.user_id, ctx.settings.agent_base_config))[agent_id]
    if reason is not None:
        raise Conflict(reason, code="acp_agent_unavailable", details={"agent_id": agent_id})


@router.post("/sessions", status_code=status.HTTP_201_CREATED)
async def create_session(
    body: AcpSessionCreate,
    sandbox: OwnedSandbox,
    db: DbSession,
    ctx: Context,
    clients: AcpClients,
    entry: Annotated[AuditEntry, audit("acp.session_create", entity="chat_session")],
) -> ChatSessionOut:
    """Start a conversation with ``agent_id``; it is listed by the chat API at once."""
    await _require_available(db, ctx, sandbox, body.agent_id)
    async with _gateway(ctx, clients, sandbox) as gateway:
        created = await gateway.create_session(body.agent_id)
    # Its own short transaction, with the chat lock the sync's writers take.
    async with ctx.sessions() as writer:
        await lock_sandbox_chats(writer, sandbox.id)
        row = await claim_session(
            writer,
            sandbox_id=sandbox.id,
            user_id=sandbox.user_id,
            acp_session_id=str(created["session_id"]),
            agent_id=body.agent_id,
            now=utcnow(),
        )
        await writer.commit()
    session = await chat.get_session(db, sandbox, row.id)
    assert session is not None
    await entry.record(db, entity_id=session.id, sandbox_id=sandbox.id, agent_id=body.agent_id)
    await db.commit()
    return ChatSessionOut.from_row(session)


@router.post("/sessions/{session_id}/prompt", status_code=status.HTTP_202_ACCEPTED)
async def prompt(
    body: AcpPrompt,
    sandbox: OwnedSandbox,
    session: OwnedAcpSession,
    db: DbSession,
    ctx: Context,
    clients: AcpClients,
    entry: Annotated[AuditEntry, audit("acp.prompt", entity="chat_session", id_param="session_id")],
) -> AcpTurnAccepted:
    """Send a prompt; answers at once (409 while a turn runs)."""
    assert session.acp_session_id is not None
    if session.acp_agent_id:
        await _require_available(db, ctx, sandbox, session.acp_agent_id)  # e.g. its provider key was removed
    async with _gateway(ctx, clients, sandbox) as gateway:
        await require_model_source(db, sandbox, ctx.settings)
        turn = await gateway.prompt(session.acp_session_id, body.text)
    await sandboxes.note_access(db, sandbox)
    # The prompt text stays in the chat tables; the audit trail records only its size.
    await entry.record(db, sandbox_id=sandbox.id, turn_id=turn.get("turn_id"), chars=len(body.text))
    await db.commit()
    return AcpTurnAccepted(session_id=session.id, turn_id=str(turn.get("turn_id")))


@router.post(
    "/sessions/{session_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[audit("acp.cancel", entity="chat_session", id_param="session_id")],
)
async def cancel(sandbox: OwnedSandbox, session: OwnedAcpSession, ctx: Context, clients: AcpClients) -> AcpTurnAccepted:
    """Stop the turn in progress (409 when none runs); the reply is mirrored as ``cancelled``."""
    assert session.acp_session_id is not None
    async with _gateway(ctx, clients, sandbox) as gateway:
        turn = await gateway.cancel(session.acp_session_id)
    return AcpTurnAccepted(session_id=session.id, turn_id=str(turn.get("turn_id")))


async def _our_ids(db: DbSession, sandbox: Sandbox, acp_ids: set[str]) -> dict[str, str]:
    rows = await chat.acp_session_rows(db, sandbox, acp_ids)
    return {row.acp_session_id: row.id for row in rows if row.acp_session_id}


@router.get("/permissions")
async def list_permissions(
    sandbox: OwnedSandbox, db: DbSession, ctx: Context, clients: AcpClients
) -> AcpPermissionList:
    """Tool calls waiting for the user's decision, oldest first."""
    async with _gateway(ctx, clients, sandbox) as gateway:
        pending = await gateway.permissions()
    ours = await _our_ids(db, sandbox, {str(p.get("session_id")) for p in pending})
    return AcpPermissionList(permissions=[_permission(p, ours) for p in pending])


def _permission(data: dict[str, Any], ours: dict[str, str]) -> AcpPermissionOut:
    acp_session_id = str(data.get("session_id"))
    return AcpPermissionOut(
        request_id=str(data.get("request_id")),
        session_id=ours.get(acp_session_id),
        acp_session_id=acp_session_id,
        agent_id=data.get("agent_id"),
        tool_call=data.get("tool_call") if isinstance(data.get("tool_call"), dict) else {},
        options=[o for o in data.get("options") or [] if isinstance(o, dict)],
    )


@router.post("/permissions/{request_id}")
async def answer_permission(
    request_id: RequestId,
    body: AcpPermissionAnswer,
    sandbox: OwnedSandbox,
    db: DbSession,
    ctx: Context,
    clients: AcpClients,
    entry: Annotated[AuditEntry, audit("acp.permission_answer", entity="sandbox", id_param="sandbox_id")],
) -> AcpPermissionAnswered:
    """Answer a permission request with one of its options (404 if unknown or already answered)."""
    async with _gateway(ctx, clients, sandbox) as gateway:
        await gateway.answer_permission(request_id, body.option_id)
    await entry.record(db, request_id=request_id, option_id=body.option_id)
    await db.commit()
    return AcpPermissionAnswered(request_id=request_id, option_id=body.option_id)
