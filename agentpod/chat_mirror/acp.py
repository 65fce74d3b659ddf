"""``AcpMirror``: keeps one sandbox's ACP gateway sessions in our database.

* **Live path** — :meth:`feed` each gateway event; the conversation is folded in memory
  (:mod:`agentpod.chat_mirror.acp_transcript`) and :meth:`flush` writes the touched messages in one transaction
  *together with the id of the last event applied*, so resuming with ``Last-Event-ID`` after any crash
  neither repeats nor skips an event (chunk appends are not idempotent on their own).
* **Reconcile** — after a ``reset`` frame (gateway restarted, replay impossible): every session the
  gateway lists is rebuilt from its history (:meth:`rebuild`); a session whose turn is running is
  rebuilt right after that turn ends (history is complete only between turns). Sessions the gateway no
  longer lists are flagged ``missing_upstream_at`` and kept, never deleted.

Writes take the sandbox's chat lock, like the OpenCode mirror's. :class:`AcpStream` plugs the mirror into
the segment loop (:mod:`agentpod.chat_mirror.segment`): the gateway's ``/events`` stream, resumed with
``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.chat_mirror.acp_transcript import (
    FINAL_STATUSES,
    SOURCE,
    Conversation,
    Draft,
    agent_key,
    columns,
    fold_history,
    turn_of,
    user_key,
)
from agentpod.chat_mirror.mirror import Mirror, serialized, write_message
from agentpod.clients.acp import AcpGatewayClient, AcpGatewayConflict, AcpGatewayError, GatewayEvent
from agentpod.domain.activity import ActivityEvent
from agentpod.domain.chat import ReconcileReport, SyncStatus, SyncTarget
from agentpod.security.keyring import Keyring
from agentpod.security.sandbox_secrets import gateway_secrets
from agentpod.store.acp_sync import (
    acp_sessions,
    claim_session,
    latest_key,
    load_cursor,
    save_cursor,
    unfinished_sessions,
)
from agentpod.store.activity import record_activity
from agentpod.store.base import utcnow
from agentpod.store.chat_sync import (
    MessageRow,
    MessageValues,
    flag_sessions_missing,
    load_messages,
    mark_interrupted,
    recompute_session_stats,
    remove_message,
)
from agentpod.store.sync_state import commit_sync_status
from agentpod.store.tables import AcpSyncState

log = logging.getLogger(__name__)

JSON = dict[str, Any]
FLUSH_INTERVAL = 0.1
HISTORY_ATTEMPTS = 8
HISTORY_RETRY_SECONDS = 0.5
_TICK = timedelta(microseconds=1)


@dataclass
class _Session:
    row_id: str
    agent_id: str | None
    conversation: Conversation
    rebuild_after_turn: bool = False


@dataclass
class _Pending:
    """What the next flush writes besides messages: audit events (with idempotent ids)."""

    activity: list[tuple[ActivityEvent, str]] = field(default_factory=list)


def message_values(
    draft: Draft, *, agent_id: str | None, created_at: datetime, completed_at: datetime | None
) -> MessageValues:
    """The row for a draft."""
    cols = columns(draft)
    status = draft.status
    return MessageValues(
        external_message_id=draft.key,
        source=SOURCE,
        role=draft.role,
        content=draft.content,
        text=cols.text,
        thinking=cols.thinking,
        tool_calls=cols.tool_calls,
        tool_results=cols.tool_results,
        model_provider=None,
        model_id=None,
        agent_id=agent_id,
        input_tokens=cols.input_tokens,
        output_tokens=cols.output_tokens,
        reasoning_tokens=cols.reasoning_tokens,
        cache_read_tokens=cols.cache_read_tokens,
        cache_write_tokens=cols.cache_write_tokens,
        cost=cols.cost,
        status=status,
        error_message=cols.error_message,
        upstream_created_at=created_at,
        upstream_completed_at=completed_at if status in FINAL_STATUSES else None,
    )


def _resumed(latest: list[Draft], turn: int) -> Conversation:
    """A conversation positioned after turn ``turn``, whose messages (``latest``) later chunks append to."""
    keys = {draft.key for draft in latest}
    last_kind = "agent" if agent_key(turn) in keys else ("user" if keys else None)
    return Conversation(turn=turn, last_kind=last_kind, drafts={draft.key: draft for draft in latest})


def _draft_of(row: MessageRow) -> Draft:
    return Draft(row.values.external_message_id, row.values.role, copy.deepcopy(row.values.content))


# The gateway's status when the agent (not the gateway) failed a request, e.g. a session/load.
AGENT_FAILED = 502


class AcpMirror(Mirror):
    """Mirror of one sandbox's ACP sessions. Calls on one instance are serialized by the mirror itself."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        sandbox_id: str,
        user_id: str,
        now: Callable[[], datetime] = utcnow,
        clock: Callable[[], float] = time.monotonic,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        super().__init__(sessions, sandbox_id=sandbox_id, user_id=user_id, now=now)
        self._clock = clock
        self._interval = flush_interval
        self._sessions: dict[str, _Session] = {}
        self._pending = _Pending()
        self._dirty_since: float | None = None
        self.applied_event_id: str | None = None
        self.committed_event_id: str | None = None

    async def resume(self) -> None:
        """Continue after the last event committed (what a new stream asks to follow)."""
        async with self._db() as db:
            self.applied_event_id = self.committed_event_id = await load_cursor(db, self.sandbox_id)

    # ------------------------------------------------------------------ sessions

    async def _session(self, acp_session_id: str, agent_id: str | None = None) -> _Session:
        found = self._sessions.get(acp_session_id)
        if found is not None:
            return found
        async with self._writing() as db:
            row = await claim_session(
                db,
                sandbox_id=self.sandbox_id,
                user_id=self.user_id,
                acp_session_id=acp_session_id,
                agent_id=agent_id,
                now=self._now(),
            )
            key = await latest_key(db, row.id)
            turn = (turn_of(key) or 0) if key else 0
            stored = await load_messages(db, row.id, [user_key(turn), agent_key(turn)]) if key else {}
        session = _Session(row.id, agent_id, _resumed([_draft_of(r) for r in stored.values()], turn))
        self._sessions[acp_session_id] = session
        return session

    # ------------------------------------------------------------------ live path

    @serialized
    async def follow(self, gateway: AcpGatewayClient, event: GatewayEvent) -> None:
        """Apply one live event; a turn's end is written at once, then a rebuild that waited for it runs."""
        session = await self.feed(event)
        if event.event == "session_end_turn":
            await self.flush()
            if session is not None and session.rebuild_after_turn:
                await self.rebuild(gateway, str(event.data["session_id"]), ReconcileReport())

    @serialized
    async def feed(self, event: GatewayEvent) -> _Session | None:
        """Apply one gateway event in memory; returns the session it touched (None for other events)."""
        data = event.data
        session_id = data.get("session_id")
        touched: _Session | None = None
        if isinstance(session_id, str) and session_id:
            if event.event == "session_created":
                touched = await self._session(session_id, str(data.get("agent_id") or "") or None)
            elif event.event == "turn_start":
                touched = await self._session(session_id)
                prompt = data.get("prompt")
                touched.conversation.start_turn(prompt if isinstance(prompt, list) else [])
            elif event.event == "session_update" and isinstance(data.get("update"), dict):
                touched = await self._session(session_id)
                touched.conversation.apply(data["update"])
            elif event.event == "session_end_turn":
                touched = await self._session(session_id)
                touched.conversation.end_turn(data)
            elif event.event == "permission_request":
                touched = await self._session(session_id)
                self._permission_requested(touched, data)
        if event.event == "error":
            log.warning("ACP gateway of %s reports: %s", self.sandbox_id, str(data.get("message"))[:300])
        if event.id:
            self.applied_event_id = event.id
        if self._dirty_since is None:
            self._dirty_since = self._clock()
        return touched

    def _permission_requested(self, session: _Session, data: JSON) -> None:
        tool = data.get("tool_call") if isinstance(data.get("tool_call"), dict) else {}
        assert isinstance(tool, dict)
        options = data.get("options") if isinstance(data.get("options"), list) else []
        assert isinstance(options, list)
        request_id = str(data.get("request_id"))
        event = ActivityEvent(
            user_id=self.user_id,
            action="acp.permission_request",
            entity_type="chat_session",
            entity_id=session.row_id,
            metadata={
                "sandbox_id": self.sandbox_id,
                "request_id": request_id,
                "agent_id": data.get("agent_id"),
                "tool": str(tool.get("title") or "")[:200],
                "kind": tool.get("kind"),
                "options": [o.get("optionId") for o in options if isinstance(o, dict)],
            },
        )
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"acp.permission_request:{self.sandbox_id}:{request_id}"))
        self._pending.activity.append((event, event_id))

    @serialized
    async def flush_due(self) -> int:
        """Flush if something waited longer than the flush interval."""
        return await self.flush() if self.due() else 0

    def due_in(self) -> float | None:
        """Seconds until :meth:`flush_due` will write (0: now); None while nothing waits."""
        if self._dirty_since is None:
            return None
        return max(0.0, self._dirty_since + self._interval - self._clock())

    def due(self) -> bool:
        """Something waits to be written for longer than the flush interval."""
        return self._dirty_since is not None and self._clock() - self._dirty_since >= self._interval

    @serialized
    async def flush(self) -> int:
        """Write every touched message, the audit events and the resume point in one transaction."""
        work = [(s, s.conversation.take_touched()) for s in self._sessions.values()]
        work = [(s, drafts) for s, drafts in work if drafts]
        pending, self._pending = self._pending, _Pending()
        event_id = self.applied_event_id
        if not work and not pending.activity and event_id == self.committed_event_id:
            self._dirty_since = None
            return 0
        try:
            written = await self._write(work, pending, event_id)
        except BaseException:
            # Nothing is lost: the same drafts (and events) are written by the next flush.
            for session, drafts in work:
                session.conversation.touched[:0] = [d.key for d in drafts]
            self._pending.activity[:0] = pending.activity
            raise
        self.committed_event_id = event_id
        self._dirty_since = None
        for session, _ in work:
            self._forget_old_turns(session)
        return written

    async def _write(self, work: list[tuple[_Session, list[Draft]]], pending: _Pending, event_id: str | None) -> int:
        written = 0
        async with self._writing() as db:
            now = self._now()
            for session, drafts in work:
                stored = await load_messages(db, session.row_id, [d.key for d in drafts])
                changed = False
                for draft in drafts:
                    row = stored.get(draft.key)
                    created = row.values.upstream_created_at if row and row.values.upstream_created_at else now
                    completed = row.values.upstream_completed_at if row and row.values.upstream_completed_at else now
                    values = message_values(
                        draft, agent_id=session.agent_id, created_at=created, completed_at=completed
                    )
                    if await write_message(
                        db, user_id=self.user_id, session_row_id=session.row_id, values=values, stored=row, now=now
                    ):
                        changed = True
                        written += 1
                if changed:
                    await recompute_session_stats(db, session.row_id, now=now)
            for event, activity_id in pending.activity:
                await record_activity(db, event, event_id=activity_id)
            await save_cursor(db, self.sandbox_id, event_id)
        return written

    @staticmethod
    def _forget_old_turns(session: _Session) -> None:
        # Only the current turn can still change: keep memory flat however long the conversation.
        turn = session.conversation.turn
        keep = {user_key(turn), agent_key(turn)}
        for key in [k for k in session.conversation.drafts if k not in keep]:
            del session.conversation.drafts[key]

    @serialized
    async def flush_or_discard(self) -> None:
        """After a lost connection: write what was applied, or forget it when the database refuses.

        Chunks append, so what was applied but not committed must not survive the reconnect, which
        resumes from the committed event.
        """
        try:
            await self.flush()
        except SQLAlchemyError:
            self._sessions.clear()
            self._pending = _Pending()
            self._dirty_since = None
            self.applied_event_id = self.committed_event_id

    # ------------------------------------------------------------------ reconcile

    @serialized
    async def restart(self, gateway: AcpGatewayClient, event_id: str | None) -> ReconcileReport:
        """After a ``reset`` frame: reconcile, then resume after that frame (replay is no longer needed)."""
        report = await self.reconcile(gateway)
        self.applied_event_id = event_id
        await self.flush()
        return report

    @serialized
    async def reconcile(self, gateway: AcpGatewayClient) -> ReconcileReport:
        """Rebuild every listed session from its history (running ones after their turn); flag vanished ones."""
        await self.flush()
        report = ReconcileReport()
        listed = [s for s in await gateway.sessions() if isinstance(s, dict) and s.get("session_id")]
        report.upstream_empty = not listed
        for info in listed:
            session = await self._session(str(info["session_id"]), str(info.get("agent_id") or "") or None)
            if info.get("running"):
                session.rebuild_after_turn = True
                report.notes.append(f"{info['session_id']}: turn running, rebuilt when it ends")
                continue
            try:
                await self.rebuild(gateway, str(info["session_id"]), report)
            except AcpGatewayError as error:
                if error.status != AGENT_FAILED:
                    raise  # the gateway itself is not answering: the whole reconcile is retried
                # The agent cannot load this one (e.g. Claude Code keeps no transcript of a session never
                # prompted): our rows stay, and the other sessions are mirrored all the same.
                report.notes.append(f"{info['session_id']}: the agent could not load it, kept ours ({error})"[:300])
        listed_ids = {str(s["session_id"]) for s in listed}
        async with self._db() as db:
            ours = await acp_sessions(db, self.sandbox_id)
        vanished = [row.id for key, row in ours.items() if key not in listed_ids and row.missing_upstream_at is None]
        if vanished:
            async with self._writing() as db:
                now = self._now()
                report.sessions_missing_upstream += await flag_sessions_missing(db, vanished, now=now)
                report.messages_interrupted += await mark_interrupted(db, vanished, now=now)
            report.notes.append(f"kept {len(vanished)} sessions the gateway no longer lists")
        return report

    @serialized
    async def rebuild(self, gateway: AcpGatewayClient, acp_session_id: str, report: ReconcileReport) -> None:
        """Make a session's rows exactly its history (stored statuses, usage and times are kept)."""
        session = await self._session(acp_session_id)
        history = await self._history(gateway, acp_session_id)
        if history is None:
            session.rebuild_after_turn = True  # a turn started meanwhile: rebuilt when it ends
            return
        # Anything buffered for this session is superseded by the history.
        session.conversation.take_touched()
        drafts = fold_history(history)
        started = self._now()
        async with self._writing() as db:
            kept = await self._replace_rows(db, session, drafts, started, report)
        session.rebuild_after_turn = False
        if kept:
            report.notes.append(f"{acp_session_id}: empty history, kept our {kept} messages")
            return
        report.sessions_upserted += 1
        last_turn = max((turn_of(d.key) or 0 for d in drafts), default=0)
        session.conversation = _resumed([d for d in drafts if turn_of(d.key) == last_turn], last_turn)

    async def _replace_rows(
        self, db: AsyncSession, session: _Session, drafts: list[Draft], started: datetime, report: ReconcileReport
    ) -> int:
        """Make a session's rows its history's ``drafts``; an empty history proves nothing, so then our
        messages are kept and their number returned (0 otherwise)."""
        stored = await load_messages(db, session.row_id)
        if not drafts and stored:
            return len(stored)
        changed = False
        previous: datetime | None = None
        for draft in drafts:
            row = stored.get(draft.key)
            _keep_final_state(draft, row)
            created = row.values.upstream_created_at if row and row.values.upstream_created_at else None
            if created is None or (previous is not None and created <= previous):
                created = (previous + _TICK) if previous is not None else started
            previous = created
            completed = row.values.upstream_completed_at if row and row.values.upstream_completed_at else started
            values = message_values(draft, agent_id=session.agent_id, created_at=created, completed_at=completed)
            changed |= await write_message(
                db,
                user_id=self.user_id,
                session_row_id=session.row_id,
                values=values,
                stored=row,
                now=started,
                report=report,
            )
        keys = {d.key for d in drafts}
        for key, row in stored.items():
            if key in keys or _is_turn_marker(row):
                continue
            await remove_message(db, session_id=session.row_id, external_message_id=key)
            report.messages_removed += 1
            changed = True
        if changed:
            await recompute_session_stats(db, session.row_id, now=started)
        return 0

    async def _history(self, gateway: AcpGatewayClient, acp_session_id: str) -> list[JSON] | None:
        """The session's history; None while a turn runs. Another history load (409 too) is waited out."""
        for attempt in range(HISTORY_ATTEMPTS):
            try:
                return await gateway.history(acp_session_id)
            except AcpGatewayConflict:
                listed = [s for s in await gateway.sessions() if s.get("session_id") == acp_session_id]
                if listed and listed[0].get("running"):
                    return None
                await asyncio.sleep(HISTORY_RETRY_SECONDS * (attempt + 1))
        return None

    def pending_rebuilds(self) -> list[str]:
        """Sessions whose rebuild waits (for a turn's end, or for the gateway to answer)."""
        return [key for key, session in self._sessions.items() if session.rebuild_after_turn]

    @serialized
    async def repair_unfinished(self, gateway: AcpGatewayClient) -> ReconcileReport:
        """Rebuild the sessions we hold an unfinished reply of while their agent runs no turn.

        Run when a stream (re)connects, and on the gateway's heartbeat while a rebuild is pending: a
        rebuild that had to wait lives only in memory, and must not be forgotten.
        """
        report = ReconcileReport()
        async with self._db() as db:
            unfinished = await unfinished_sessions(db, self.sandbox_id)
        unfinished |= set(self.pending_rebuilds())
        if not unfinished:
            return report
        idle = {str(s.get("session_id")) for s in await gateway.sessions() if not s.get("running")}
        for acp_session_id in sorted(unfinished & idle):
            await self.rebuild(gateway, acp_session_id, report)
        return report


def _keep_final_state(draft: Draft, row: MessageRow | None) -> None:
    """History carries no status or usage: keep what the live path recorded, else judge it."""
    if draft.role != "assistant":
        return
    stored = row.values.content if row else {}
    for name in ("usage", "stop_reason", "error"):
        if name in stored and name not in draft.content:
            draft.content[name] = stored[name]
    status = row.values.status if row else None
    # Not running (or we would not rebuild): an unfinished reply will not be finished any more.
    draft.content["status"] = status if status in FINAL_STATUSES else ("interrupted" if row else "complete")


def _is_turn_marker(row: MessageRow) -> bool:
    """A reply that ended before the agent said anything (error, cancel): history has no trace of it."""
    content = row.values.content
    return row.values.role == "assistant" and not content.get("blocks") and row.values.status in FINAL_STATUSES


class AcpStream:
    """The gateway's ``/events`` stream as a segment source (:class:`agentpod.chat_mirror.segment.StreamSource`).

    The stream has ids and replay: a connection resumes after the last event committed, and only a
    ``reset`` frame (gateway restarted, buffer expired, first connection) reconciles.
    """

    name = "the gateway"
    errors: tuple[type[Exception], ...] = (AcpGatewayError,)
    # The gateway heartbeats every 15 s (its first frame comes at once); three missed ones mean it is dead.
    first_frame_limit = silence_limit = 45.0

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], target: SyncTarget, keys: Callable[[], Keyring]
    ) -> None:
        self.mirror = AcpMirror(sessions, sandbox_id=target.sandbox_id, user_id=target.user_id)
        self.label = f"ACP sync {target.sandbox_id}"
        self._sessions = sessions
        self._url = target.acp_url
        self._keys = keys

    @classmethod
    async def resumed(
        cls, sessions: async_sessionmaker[AsyncSession], target: SyncTarget, keys: Callable[[], Keyring]
    ) -> AcpStream:
        """A source whose first connection asks for what follows the last event committed."""
        stream = cls(sessions, target, keys)
        await stream.mirror.resume()
        return stream

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[tuple[AcpGatewayClient, AsyncIterator[GatewayEvent]]]:
        """A gateway client and its event stream, from the last event committed."""
        if not self._url:
            raise AcpGatewayError("the sandbox has no ACP gateway address")
        secrets = gateway_secrets(self._keys(), self.mirror.sandbox_id)
        async with (
            AcpGatewayClient(self._url, secrets) as gateway,
            contextlib.aclosing(gateway.events(self.mirror.committed_event_id)) as events,
        ):
            yield gateway, events

    def opens(self, frame: GatewayEvent) -> bool:
        """Any frame: the gateway sends one at once (a ``reset``, a replayed event or a heartbeat)."""
        return True

    async def dispatch(self, gateway: AcpGatewayClient, frame: GatewayEvent, *, first: bool) -> ReconcileReport | bool:
        """Reconcile on ``reset``, retry waiting rebuilds on heartbeats, follow everything else."""
        if first and frame.event != "reset":  # a reset reconciles everything anyway
            await self.mirror.repair_unfinished(gateway)
        if frame.event == "heartbeat":
            if self.mirror.pending_rebuilds():
                await self.mirror.repair_unfinished(gateway)
            return False
        if frame.event == "reset":
            return await self.mirror.restart(gateway, frame.id)
        await self.mirror.follow(gateway, frame)
        return True

    async def disconnected(self) -> None:
        """Write what the lost connection delivered, or forget it (see :meth:`AcpMirror.flush_or_discard`)."""
        await self.mirror.flush_or_discard()

    async def save_status(self, status: SyncStatus) -> None:
        """Persist the status the chat API shows (``acp_sync_state``)."""
        await commit_sync_status(self._sessions, AcpSyncState, self.mirror.sandbox_id, status)


__all__ = ["AcpMirror", "AcpStream", "message_values"]
