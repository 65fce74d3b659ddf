"""The gateway's behaviour, independent of HTTP: sessions, turns, permissions, events.

* A prompt starts a *turn* in the background and returns at once; the turn ends with exactly one
  ``session_end_turn`` event (``complete``, ``cancelled`` or ``error``).
* An agent's ``session/request_permission`` becomes a ``permission_request`` event and waits for an
  answer through :meth:`Gateway.answer_permission` (or a cancel); nothing is ever approved for the user.
* Sessions are remembered in a :class:`~gateway.store.SessionStore`; after a restart a session is
  re-attached with ``session/resume`` (or a ``session/load`` whose replay is kept out of the event
  stream, so a consumer never sees old updates twice).
* The agents can change while the gateway runs (:meth:`Gateway.update_agents`): an agent whose
  process must go (new command, args or env, or removed) is stopped once nothing uses it, so a
  running turn is never cut short; the next use starts it again with the new spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acp import RequestError, text_block
from acp.client.connection import ClientSideConnection
from acp.schema import (
    AllowedOutcome,
    DeniedOutcome,
    PermissionOption,
    RequestPermissionResponse,
    ToolCallUpdate,
)
from pydantic import BaseModel

from agentpod_gateway.agents import AgentProcess
from agentpod_gateway.config import DEFAULT_AGENTS, AgentSpec
from agentpod_gateway.errors import AgentUnavailable, Conflict, GatewayError, Invalid, NotFound, NotSupported
from agentpod_gateway.events import EventLog
from agentpod_gateway.store import SessionRecord, SessionStore, now

log = logging.getLogger(__name__)

# How long shutdown waits for cancelled turns to end before it stops the agents anyway.
SHUTDOWN_GRACE = 3.0
# The session/update kinds a replayed history is made of.
CONVERSATION_UPDATES = frozenset(
    {"user_message_chunk", "agent_message_chunk", "agent_thought_chunk", "tool_call", "tool_call_update", "plan"}
)


class ShuttingDown(GatewayError):
    status = 503


def dump(model: BaseModel) -> dict[str, Any]:
    """An ACP model as it appears on the wire (camelCase, no nulls)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, RequestError):
        return f"agent error {exc.code}: {exc}" + (f" ({exc.data})" if exc.data else "")
    if isinstance(exc, ConnectionError):
        return "the agent process went away"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class AgentChanges:
    """Which agent ids :meth:`Gateway.update_agents` added, changed (any field) and removed."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def __str__(self) -> str:
        parts = (("added", self.added), ("changed", self.changed), ("removed", self.removed))
        return "; ".join(f"{label} {', '.join(ids)}" for label, ids in parts if ids) or "no change"


@dataclass
class Turn:
    """One prompt being answered."""

    turn_id: str
    task: asyncio.Task[None] | None = None
    prompt_sent: bool = False
    cancel_requested: bool = False


@dataclass
class PendingPermission:
    """A ``session/request_permission`` waiting for the user's answer."""

    request_id: str
    session_id: str
    agent_id: str
    tool_call: dict[str, Any]
    options: list[dict[str, Any]]
    future: asyncio.Future[RequestPermissionResponse]

    def payload(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "session_id": self.session_id,
            "agent_id": self.agent_id,
            "tool_call": self.tool_call,
            "options": self.options,
        }


@dataclass
class SessionState:
    """Runtime state of one known session."""

    record: SessionRecord
    turn: Turn | None = None
    # Set while a session/load runs: the updates it replays are collected here, not published.
    capture: list[dict[str, Any]] | None = None
    # The last history replayed, kept until the conversation changes (an update, a turn) or the agent
    # process does: asking again costs nothing (each session/load of Claude Code starts a new Claude
    # Code process of ~230 MB that the adapter never ends).
    history: list[dict[str, Any]] | None = None
    history_pid: int | None = None

    @property
    def busy(self) -> bool:
        return self.turn is not None or self.capture is not None


class _AcpHandler:
    """The ACP client callbacks of one agent process, forwarded to the gateway."""

    def __init__(self, gateway: Gateway, agent_id: str) -> None:
        self._gateway = gateway
        self._agent_id = agent_id

    async def request_permission(
        self, session_id: str, tool_call: ToolCallUpdate, options: list[PermissionOption], **kwargs: Any
    ) -> RequestPermissionResponse:
        return await self._gateway._ask_permission(self._agent_id, session_id, tool_call, options)

    async def session_update(self, session_id: str, update: BaseModel, **kwargs: Any) -> None:
        self._gateway._on_update(session_id, update)


class Gateway:
    """Agents, sessions, turns and pending permissions of one gateway process."""

    def __init__(
        self,
        agents: dict[str, AgentSpec],
        *,
        workspace: Path,
        state_dir: Path | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.workspace = workspace
        self.events = events or EventLog()
        self._agents = {agent_id: self._new_agent(spec) for agent_id, spec in agents.items()}
        # Removed from the configuration while their process was in use: stopped once it is idle.
        self._retired: dict[str, AgentProcess] = {}
        # session/new requests in flight, per agent (the only use of an agent not tied to a session).
        self._creating: Counter[str] = Counter()
        self._recycling: set[asyncio.Task[None]] = set()
        self._store = SessionStore(state_dir)
        self._sessions: dict[str, SessionState] = {}
        self._permissions: dict[str, PendingPermission] = {}
        self._closing = False
        self._close_task: asyncio.Future[None] | None = None

    # --- queries -------------------------------------------------------------------------------

    def agents(self) -> list[dict[str, Any]]:
        return [agent.describe() for agent in self._agents.values()]

    def sessions(self) -> list[dict[str, Any]]:
        return [self._describe(self._state(record.session_id)) for record in self._store.all()]

    def session(self, session_id: str) -> dict[str, Any]:
        return self._describe(self._state(session_id))

    def permissions(self) -> list[dict[str, Any]]:
        return [pending.payload() for pending in self._permissions.values()]

    def _describe(self, state: SessionState) -> dict[str, Any]:
        record = state.record
        pending = [p.request_id for p in self._permissions.values() if p.session_id == record.session_id]
        return {
            "session_id": record.session_id,
            "agent_id": record.agent_id,
            "cwd": record.cwd,
            "created_at": record.created_at.isoformat(),
            "running": state.turn is not None,
            "turn_id": state.turn.turn_id if state.turn else None,
            "pending_permissions": pending,
        }

    def _state(self, session_id: str) -> SessionState:
        record = self._store.get(session_id)
        if record is None:
            raise NotFound(f"unknown session {session_id}")
        state = self._sessions.get(session_id)
        if state is None:
            state = self._sessions[session_id] = SessionState(record)
        return state

    def _agent(self, agent_id: str) -> AgentProcess:
        """A configured agent; a removed one is unknown even while its last turn still runs."""
        agent = self._agents.get(agent_id)
        if agent is None:
            raise NotFound(f"unknown agent {agent_id}")
        return agent

    def _process(self, agent_id: str) -> AgentProcess | None:
        """The agent's process holder, configured or retired (for what a running turn still needs)."""
        return self._agents.get(agent_id) or self._retired.get(agent_id)

    def _new_agent(self, spec: AgentSpec) -> AgentProcess:
        return AgentProcess(spec, self.workspace, _AcpHandler(self, spec.id), self._on_agent_exit)

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDown("the gateway is shutting down")

    # --- commands ------------------------------------------------------------------------------

    async def create_session(self, agent_id: str, cwd: str | None = None) -> SessionRecord:
        """``session/new`` on the agent (started if needed); the ACP session id is the gateway's id."""
        self._check_open()
        agent = self._agent(agent_id)
        directory = Path(cwd) if cwd else self.workspace
        if not directory.is_absolute():
            raise Invalid("cwd must be an absolute path")
        if not directory.is_dir():
            raise Invalid(f"cwd {directory} is not a directory")
        self._creating[agent_id] += 1
        try:
            conn = await agent.connection()
            try:
                response = await conn.new_session(cwd=str(directory), mcp_servers=[])
            except (RequestError, ConnectionError) as exc:
                raise AgentUnavailable(f"session/new failed: {describe_error(exc)}") from exc
        finally:
            self._creating[agent_id] -= 1
            self._settle(agent_id)
        record = SessionRecord(session_id=response.session_id, agent_id=agent_id, cwd=str(directory), created_at=now())
        try:
            self._store.add(record)
        except OSError as exc:
            # The agent has the session but a restarted gateway would not know it: report it.
            raise GatewayError(f"session {record.session_id} created but not recorded: {exc}") from exc
        agent.attached.add(record.session_id)
        agent.opened += 1
        self.events.publish(
            "session_created", {"session_id": record.session_id, "agent_id": agent_id, "cwd": record.cwd}
        )
        return record

    def prompt(self, session_id: str, text: str) -> Turn:
        """Start a turn in the background; its events follow on the stream."""
        self._check_open()
        state = self._state(session_id)
        self._agent(state.record.agent_id)  # a session of a removed agent: 404, not a failed turn
        if state.busy:
            raise Conflict(f"session {session_id} is busy (a turn or a history load is running)")
        turn = Turn(turn_id=f"turn_{uuid.uuid4().hex}")
        state.turn = turn
        state.history = None
        prompt = [text_block(text)]
        self.events.publish(
            "turn_start",
            {"session_id": session_id, "turn_id": turn.turn_id, "prompt": [dump(block) for block in prompt]},
        )
        turn.task = asyncio.create_task(self._run_turn(state, turn, prompt), name=f"turn-{turn.turn_id}")
        return turn

    async def _run_turn(self, state: SessionState, turn: Turn, prompt: list[Any]) -> None:
        session_id = state.record.session_id
        end: dict[str, Any] = {"session_id": session_id, "turn_id": turn.turn_id, "stop_reason": None}
        try:
            agent = self._agent(state.record.agent_id)
            conn = await agent.connection()
            await self._attach(agent, conn, state)
            if turn.cancel_requested:
                end.update(reason="cancelled", stop_reason="cancelled")
            else:
                turn.prompt_sent = True
                response = await conn.prompt(session_id=session_id, prompt=prompt)
                end.update(
                    reason="cancelled" if response.stop_reason == "cancelled" else "complete",
                    stop_reason=response.stop_reason,
                    usage=dump(response.usage) if response.usage else None,
                )
        except asyncio.CancelledError:
            end.update(reason="error", error="the gateway stopped before the turn ended")
            raise
        except Exception as exc:
            log.warning("turn %s of %s failed: %s", turn.turn_id, session_id, describe_error(exc))
            end.update(reason="error", error=describe_error(exc))
        finally:
            state.turn = None
            # An agent may leave a request unanswered when its turn ends; nobody can answer it now.
            self._cancel_permissions(session_id)
            self.events.publish("session_end_turn", end)
            self._settle(state.record.agent_id)

    async def _attach(self, agent: AgentProcess, conn: ClientSideConnection, state: SessionState) -> None:
        """Make a session created by an earlier agent process known to this one."""
        record = state.record
        if record.session_id in agent.attached:
            return
        if agent.can_resume:
            await conn.resume_session(session_id=record.session_id, cwd=record.cwd, mcp_servers=[])
        elif agent.can_load:
            # The replayed history is old news for the event stream: collect it and drop it.
            state.capture = []
            try:
                await conn.load_session(cwd=record.cwd, session_id=record.session_id, mcp_servers=[])
            finally:
                state.capture = None
        else:
            raise AgentUnavailable(f"agent {agent.spec.id} cannot reopen session {record.session_id}")
        agent.attached.add(record.session_id)
        agent.opened += 1

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        """The session's whole conversation as the agent replays it (``session/load``)."""
        self._check_open()
        state = self._state(session_id)
        if state.busy:
            raise Conflict(f"session {session_id} is busy; its history is complete once the turn ends")
        agent = self._agent(state.record.agent_id)
        if state.history is not None and state.history_pid is not None and state.history_pid == agent.pid:
            return state.history
        state.capture = []
        try:
            conn = await agent.connection()
            if not agent.can_load:
                raise NotSupported(f"agent {agent.spec.id} cannot replay a session (no loadSession)")
            try:
                await conn.load_session(cwd=state.record.cwd, session_id=session_id, mcp_servers=[])
            except (RequestError, ConnectionError) as exc:
                raise AgentUnavailable(f"session/load failed: {describe_error(exc)}") from exc
            agent.attached.add(session_id)
            agent.opened += 1
            state.history, state.history_pid = state.capture, agent.pid
            return state.capture
        finally:
            state.capture = None
            self._settle(agent.spec.id)

    async def cancel(self, session_id: str) -> Turn:
        """Ask the agent to stop the running turn; its ``session_end_turn`` says how it ended."""
        state = self._state(session_id)
        turn = state.turn
        if turn is None:
            raise Conflict(f"no turn is running in session {session_id}")
        turn.cancel_requested = True
        agent = self._process(state.record.agent_id)
        conn = agent.live_connection if agent is not None else None
        if turn.prompt_sent and conn is not None:
            # A notification: if the agent is already gone the turn ends with an error anyway.
            with contextlib.suppress(ConnectionError, OSError):
                await conn.cancel(session_id=session_id)
        # ACP: after session/cancel the client answers every pending permission request "cancelled".
        self._cancel_permissions(session_id)
        return turn

    def answer_permission(self, request_id: str, option_id: str) -> PendingPermission:
        """Answer a pending permission request with one of the options it offered."""
        pending = self._permissions.get(request_id)
        if pending is None:
            raise NotFound(f"no pending permission request {request_id}")
        offered = [option.get("optionId") for option in pending.options]
        if option_id not in offered:
            raise Invalid(f"option_id must be one of {offered}")
        self._resolve(pending, AllowedOutcome(outcome="selected", option_id=option_id))
        return pending

    # --- callbacks from the agents -------------------------------------------------------------

    def _on_update(self, session_id: str, update: BaseModel) -> None:
        payload = dump(update)
        state = self._sessions.get(session_id)
        if state is not None and state.capture is not None:
            state.capture.append(payload)
            return
        if state is not None and payload.get("sessionUpdate") in CONVERSATION_UPDATES:
            state.history = None  # the conversation moved on (a command list or mode change does not count)
        self.events.publish("session_update", {"session_id": session_id, "update": payload})

    async def _ask_permission(
        self, agent_id: str, session_id: str, tool_call: ToolCallUpdate, options: list[PermissionOption]
    ) -> RequestPermissionResponse:
        state = self._sessions.get(session_id)
        if state is not None and state.turn is not None and state.turn.cancel_requested:
            # The user already stopped this turn: declining is the only answer they could give.
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        pending = PendingPermission(
            request_id=f"perm_{uuid.uuid4().hex}",
            session_id=session_id,
            agent_id=agent_id,
            tool_call=dump(tool_call),
            options=[dump(option) for option in options],
            future=asyncio.get_running_loop().create_future(),
        )
        self._permissions[pending.request_id] = pending
        self.events.publish("permission_request", pending.payload())
        try:
            return await pending.future
        finally:
            if self._permissions.get(pending.request_id) is pending:
                # Nobody answered (the agent gave up or went away): tell the consumers it is over.
                self._resolve(pending, DeniedOutcome(outcome="cancelled"))

    def _resolve(self, pending: PendingPermission, outcome: AllowedOutcome | DeniedOutcome) -> None:
        self._permissions.pop(pending.request_id, None)
        if not pending.future.done():
            pending.future.set_result(RequestPermissionResponse(outcome=outcome))
        self.events.publish(
            "permission_resolved",
            {
                "request_id": pending.request_id,
                "session_id": pending.session_id,
                "outcome": outcome.outcome,
                "option_id": getattr(outcome, "option_id", None),
            },
        )
        self._settle(pending.agent_id)

    def _cancel_permissions(self, session_id: str | None = None, agent_id: str | None = None) -> None:
        for pending in list(self._permissions.values()):
            if (session_id is None or pending.session_id == session_id) and (
                agent_id is None or pending.agent_id == agent_id
            ):
                self._resolve(pending, DeniedOutcome(outcome="cancelled"))

    def _on_agent_exit(self, agent: AgentProcess, code: int | None) -> None:
        # Running turns fail by themselves (their requests get ConnectionError); this says why.
        self.events.publish("error", {"message": agent.error or f"agent exited with {code}", "agent_id": agent.spec.id})
        self._cancel_permissions(agent_id=agent.spec.id)
        self._settle(agent.spec.id)

    # --- configuration changes -----------------------------------------------------------------

    def update_agents(self, specs: dict[str, AgentSpec]) -> AgentChanges:
        """Make ``specs`` the configured agents (the built-in ones stay when ``specs`` lacks them).

        New ids are added at once. A changed command, args or env applies at the agent's next start:
        a running process is stopped as soon as nothing uses it (no turn or history load on any of its
        sessions, no pending permission request, no session/new), so a running turn ends untouched
        and the next use starts the process anew (sessions are re-attached as after any restart).
        A removed id is unknown at once (404) and its process is stopped the same way.
        """
        specs = {**DEFAULT_AGENTS, **specs}
        added: list[str] = []
        changed: list[str] = []
        removed = [agent_id for agent_id in self._agents if agent_id not in specs]
        for agent_id in removed:
            gone = self._agents.pop(agent_id)
            if gone.active:
                self._retired[agent_id] = gone
        for agent_id, spec in specs.items():
            agent = self._agents.get(agent_id)
            if agent is not None:
                if agent.spec != spec:
                    changed.append(agent_id)
                agent.spec = spec
                continue
            added.append(agent_id)
            # Re-added while its old process still finishes a turn: keep one process per id.
            agent = self._retired.pop(agent_id, None) or self._new_agent(spec)
            agent.spec = spec
            self._agents[agent_id] = agent
        for agent_id in [*changed, *removed, *added]:
            self._settle(agent_id)
        return AgentChanges(tuple(added), tuple(changed), tuple(removed))

    def _idle(self, agent_id: str) -> bool:
        if self._creating[agent_id] or any(p.agent_id == agent_id for p in self._permissions.values()):
            return False
        return not any(state.busy for state in self._sessions.values() if state.record.agent_id == agent_id)

    def _settle(self, agent_id: str) -> None:
        """Stop the agent's process if it must go (outdated spec, or removed) and nothing uses it now."""
        if self._closing:
            return
        retired = self._retired.get(agent_id)
        agent = retired or self._agents.get(agent_id)
        if agent is None:
            return
        if retired is not None and not retired.active:
            del self._retired[agent_id]
            return
        # An idle process holding more sessions than its spec allows goes: the next use starts a fresh one
        # that reopens only what it needs (a reconcile after a gateway restart reopens every session).
        limit = agent.spec.max_open_sessions
        overloaded = limit is not None and agent.opened > limit
        if not (retired is not None or agent.outdated or overloaded) or agent.stopping or not self._idle(agent_id):
            return
        # recycle() marks the process synchronously, in the same step as the idle check: no new
        # turn can pick it up in between.
        task = agent.recycle()
        self._recycling.add(task)
        task.add_done_callback(lambda done: self._recycled(agent_id, agent, done))

    def _recycled(self, agent_id: str, agent: AgentProcess, task: asyncio.Task[None]) -> None:
        self._recycling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping agent %s failed: %r", agent_id, task.exception())
        if self._retired.get(agent_id) is agent and not agent.active:
            del self._retired[agent_id]

    # --- shutdown ------------------------------------------------------------------------------

    async def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Cancel running turns (so their end is published), end the streams, stop the agents."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(grace))
        # shield: a second caller (the ASGI lifespan after a signal) must not cancel the first.
        await asyncio.shield(self._close_task)

    async def _close(self, grace: float) -> None:
        self._closing = True
        turns = [state.turn for state in self._sessions.values() if state.turn is not None]
        for state in list(self._sessions.values()):
            if state.turn is not None:
                with contextlib.suppress(GatewayError):
                    await self.cancel(state.record.session_id)
        tasks = [turn.task for turn in turns if turn.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self.events.close()
        agents = [*self._agents.values(), *self._retired.values()]
        await asyncio.gather(*self._recycling, *(agent.stop() for agent in agents), return_exceptions=True)
