"""``OpenCodeMirror``: keeps one sandbox's OpenCode chats in our database.

Two paths write, both through ``store.chat_sync`` (idempotent upserts keyed by upstream ids):

* the **live path** — ``feed`` every SSE event, ``flush_due`` on a timer, ``flush`` before stopping.
  A coalescer folds streaming deltas so a burst of thousands of chunks becomes a few writes;
* **reconcile** — list every session and message through the API and make our copy match, which
  is what makes the mirror gap-free (OpenCode's stream has no replay).

Ordering rule, so the two can run concurrently for one sandbox: every write transaction first takes
the sandbox's chat lock (``lock_sandbox_chats``), reads the stored row, and keeps whichever state is
newer *upstream* — a session's ``time.updated``, a message's ``time.completed``, a part's progress
(see ``opencode_mapping.part_progress``), part order by part id — never whichever was written last.
Removals are only concluded from a listing for rows we stored before the reconcile began (rows
written meanwhile by the live path may be newer than the listing).

Upstream-loss guard (``judge_upstream``): an empty or replaced OpenCode store (e.g. a recreated
container) must never erase history. Missing sessions are tombstoned only when upstream is evidently
the same store; otherwise they are flagged ``missing_upstream_at`` and kept, and the flag clears when
they reappear whole: one back upstream but lacking messages or parts of ours (an ``opencode import`` of the
session restore under way, :mod:`agentpod.chat_mirror.restore`) stays flagged and keeps our copy. A reconcile
that leaves sessions missing asks :class:`OpenCodeStream`'s ``restore`` callback to put them back.

:class:`OpenCodeStream` plugs the mirror into the segment loop (:mod:`agentpod.chat_mirror.segment`):
OpenCode's ``/event`` stream, a reconcile on every ``server.connected`` (the stream has no replay).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import httpx
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.chat_mirror.coalescer import (
    DEFAULT_INTERVAL,
    DEFAULT_MAX_ITEMS,
    Coalescer,
    MessageChange,
    MessageRemoved,
    Operation,
    PartRemoved,
    SessionChange,
    SessionSignal,
)
from agentpod.chat_mirror.mirror import Mirror, serialized, write_message
from agentpod.chat_mirror.opencode_api import OpenCodeApi
from agentpod.chat_mirror.opencode_mapping import (
    content_values,
    dig,
    merge_info,
    merge_parts,
    message_values,
    reconciled_message,
    session_values,
    stored_info_parts,
)
from agentpod.chat_mirror.restore import expected_parts, upstream_covers
from agentpod.clients.opencode import OpenCodeClient, OpenCodeError
from agentpod.domain.chat import ReconcileReport, SyncStatus, SyncTarget
from agentpod.store.acp_sync import acp_session_ids
from agentpod.store.base import utcnow
from agentpod.store.chat_sync import (
    MessageRow,
    MessageValues,
    SessionRow,
    ensure_session,
    find_session,
    flag_messages_missing,
    flag_sessions_missing,
    list_sessions,
    load_messages,
    mark_interrupted,
    mark_session_deleted,
    recompute_session_stats,
    remove_message,
    remove_part,
    upsert_session,
)
from agentpod.store.sync_state import commit_sync_status
from agentpod.store.tables import ChatSyncState

JSON = dict[str, Any]
SOURCE = "opencode"

log = logging.getLogger(__name__)


class OpenCodeSessionApi(OpenCodeApi, Protocol):
    """What reconciling one session needs beyond :class:`OpenCodeApi`."""

    async def get_session(self, session_id: str) -> JSON:
        """``GET /session/{id}`` (raises when OpenCode has no such session)."""
        ...


def judge_upstream(known: Collection[str], upstream: Collection[str]) -> tuple[bool, str | None]:
    """The upstream-loss guard: may sessions missing from upstream's list be tombstoned?

    ``known`` are the sessions we had confirmed upstream and still consider live (not deleted, not
    already flagged missing); ``upstream`` is what OpenCode lists now. Upstream is trusted only if

    1. it lists at least one session (an empty store is what a recreated container looks like);
    2. it still has at least one of ``known`` (no overlap means a different store took its place);
    3. at most half of ``known`` are missing (a mass disappearance is a loss, not a user's clean-up).

    Returns ``(trusted, reason_when_not)``.
    """
    upstream_ids, known_ids = set(upstream), set(known)
    missing = known_ids - upstream_ids
    if not upstream_ids:
        return False, "upstream lists no sessions"
    if not missing:
        return True, None
    if not known_ids & upstream_ids:
        return False, f"upstream shares none of our {len(known_ids)} sessions (store replaced?)"
    if 2 * len(missing) > len(known_ids):
        return False, f"upstream lacks {len(missing)} of our {len(known_ids)} sessions"
    return True, None


@dataclass
class _Ref:
    id: str
    status: str


def _keep_interrupted(stored: MessageRow, values: MessageValues) -> MessageValues:
    # A turn we already judged interrupted stays so when only its parts are edited.
    if stored.values.status == "interrupted" and values.status == "streaming":
        return replace(values, status="interrupted")
    return values


def _rebuild(stored: MessageRow, content: dict[str, Any]) -> MessageValues:
    return _keep_interrupted(stored, content_values(content))


def _still_running(listed: list[JSON]) -> str | None:
    """In a busy session only the newest assistant turn may still be running; older unfinished ones
    were cut off (e.g. the server restarted mid-reply)."""
    assistants = [str(m["info"]["id"]) for m in listed if m["info"].get("role") == "assistant"]
    return assistants[-1] if assistants else None


class _BatchWriter:
    """Applies coalesced operations inside one transaction (the sandbox lock already held)."""

    def __init__(self, db: AsyncSession, *, sandbox_id: str, user_id: str, now: datetime) -> None:
        self.db = db
        self.sandbox_id = sandbox_id
        self.user_id = user_id
        self.now = now
        self.refs: dict[str, _Ref] = {}
        self.stale: set[str] = set()  # session rows whose counters must be recomputed
        self.touched = 0
        # Messages the batch will change, per upstream session: read in one query when the first is needed.
        self._wanted: dict[str, set[str]] = {}
        self._loaded: dict[tuple[str, str], MessageRow | None] = {}

    def plan(self, ops: Sequence[Operation]) -> None:
        """Note which stored messages ``ops`` will read, so they load together."""
        for op in ops:
            if isinstance(op, MessageChange):
                self._wanted.setdefault(op.session_id, set()).add(op.message_id)

    async def _editing(self, session_id: str, message_id: str) -> _Ref | None:
        """The stored session of a message about to be removed or cut: its prefetched copy goes stale."""
        ref = await self._existing(session_id)
        if ref is not None:
            self._loaded.pop((ref.id, message_id), None)
        return ref

    async def _stored_message(self, ref: _Ref, session_id: str, message_id: str) -> MessageRow | None:
        key = (ref.id, message_id)
        if key not in self._loaded:
            wanted = self._wanted.pop(session_id, set()) | {message_id}
            rows = await load_messages(self.db, ref.id, wanted)
            self._loaded.update({(ref.id, wanted_id): rows.get(wanted_id) for wanted_id in wanted})
        # Taken, not kept: a second change of the same message in this batch must see the first one's write.
        return self._loaded.pop(key)

    async def _existing(self, session_id: str) -> _Ref | None:
        ref = self.refs.get(session_id)
        if ref is None:
            row = await find_session(self.db, self.sandbox_id, session_id)
            if row is not None:
                ref = self.refs[session_id] = _Ref(row.id, row.status)
        return ref

    async def _ensure(self, session_id: str) -> _Ref:
        ref = await self._existing(session_id)
        if ref is None:
            row = await ensure_session(
                self.db,
                sandbox_id=self.sandbox_id,
                user_id=self.user_id,
                source=SOURCE,
                external_session_id=session_id,
                now=self.now,
            )
            ref = self.refs[session_id] = _Ref(row.id, row.status)
            self.touched += 1
        return ref

    async def apply(self, op: Operation) -> None:
        if isinstance(op, SessionChange):
            await self._session(op)
        elif isinstance(op, MessageChange):
            await self._message(op)
        elif isinstance(op, MessageRemoved):
            ref = await self._editing(op.session_id, op.message_id)
            if ref is not None and await remove_message(self.db, session_id=ref.id, external_message_id=op.message_id):
                self.touched += 1
                self.stale.add(ref.id)
        elif isinstance(op, PartRemoved):
            ref = await self._editing(op.session_id, op.message_id)
            if ref is not None and await remove_part(
                self.db,
                session_id=ref.id,
                external_message_id=op.message_id,
                part_id=op.part_id,
                rebuild=_rebuild,
                now=self.now,
            ):
                self.touched += 1
                self.stale.add(ref.id)
        # SessionSignal (status / idle / error) is live state only: it triggered the flush, and
        # what it reports reaches the rows through the message updates around it.

    async def _session(self, op: SessionChange) -> None:
        if op.info is not None:
            write = await upsert_session(
                self.db, sandbox_id=self.sandbox_id, user_id=self.user_id, values=session_values(op.info), now=self.now
            )
            self.refs[op.session_id] = _Ref(write.id, write.status)
            self.touched += write.written
        if op.kind == "deleted":
            ref = await self._existing(op.session_id)
            if ref is not None and await mark_session_deleted(self.db, ref.id, now=self.now):
                ref.status = "deleted"
                self.touched += 1

    async def _message(self, op: MessageChange) -> None:
        ref = await self._ensure(op.session_id)
        if ref.status == "deleted":
            return  # deleted upstream: a straggling event must not add to the frozen history
        stored = await self._stored_message(ref, op.session_id, op.message_id)
        old_info, old_parts = stored_info_parts(stored.values.content if stored else None)
        info = merge_info(old_info, op.info)
        # With no info yet (parts before their message) this stores a placeholder the info fills in later.
        values = message_values(info, merge_parts(old_parts, op.parts.values()))
        if await write_message(
            self.db, user_id=self.user_id, session_row_id=ref.id, values=values, stored=stored, now=self.now
        ):
            self.touched += 1
            self.stale.add(ref.id)

    async def finish(self) -> None:
        for session_row_id in sorted(self.stale):
            if await recompute_session_stats(self.db, session_row_id, now=self.now):
                self.touched += 1


class OpenCodeMirror(Mirror):
    """Mirror of one sandbox's OpenCode sessions and messages.

    ``clock`` (monotonic seconds) times the live path's flushes; ``now`` stamps rows (UTC). Calls on
    one instance are serialized by the mirror itself; separate instances (e.g. a periodic reconcile)
    may run concurrently.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        sandbox_id: str,
        user_id: str,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        flush_interval: float = DEFAULT_INTERVAL,
        max_buffered: int = DEFAULT_MAX_ITEMS,
    ) -> None:
        super().__init__(sessions, sandbox_id=sandbox_id, user_id=user_id, now=now)
        self.coalescer = Coalescer(interval=flush_interval, max_items=max_buffered, clock=clock)
        self._unwritten: list[Operation] = []  # a failed flush's operations, retried first next time

    # ------------------------------------------------------------------ writing operations

    async def _write(self, ops: Sequence[Operation]) -> int:
        """Apply operations in one transaction; the number of rows written."""
        if all(isinstance(op, SessionSignal) for op in ops):
            return 0  # live state only (idle, status): nothing to write, so no transaction either
        async with self._writing() as db:
            writer = _BatchWriter(db, sandbox_id=self.sandbox_id, user_id=self.user_id, now=self._now())
            writer.plan(ops)
            for op in ops:
                await writer.apply(op)
            await writer.finish()
        return writer.touched

    @serialized
    async def apply(self, events: list[JSON]) -> int:
        """Apply a batch of events in one transaction (coalesced first); the number of rows written."""
        batch = Coalescer(interval=float("inf"), max_items=len(events) + 1)
        for event in events:
            batch.add(event)
        return await self._write(batch.drain())

    # ------------------------------------------------------------------ live path

    @serialized
    async def feed(self, event: JSON) -> int:
        """Take one live event; writes (and returns rows written) only when a flush is due."""
        if self.coalescer.add(event):
            return await self.flush()
        return 0

    def due_in(self) -> float | None:
        """Seconds until :meth:`flush_due` will write (0: now); None while nothing waits."""
        return 0.0 if self._unwritten else self.coalescer.due_in()

    @serialized
    async def flush_due(self) -> int:
        """Flush if the oldest buffered change has waited long enough (call on a short timer)."""
        if self.coalescer.due() or self._unwritten:
            return await self.flush()
        return 0

    @serialized
    async def flush(self) -> int:
        """Write everything buffered now. On failure nothing is lost: it is retried on the next flush."""
        ops = [*self._unwritten, *self.coalescer.drain()]
        self._unwritten = []
        try:
            return await self._write(ops)
        except BaseException:
            self._unwritten = ops  # upserts of upstream state: replaying them later is safe
            raise

    # ------------------------------------------------------------------ reconcile

    @serialized
    async def reconcile(self, api: OpenCodeApi) -> ReconcileReport:
        """Make our copy match OpenCode's: upsert what differs, tombstone or flag what vanished."""
        await self.flush()
        # Reconcile runs on every (re)connect: deltas missed meanwhile would leave holes in the
        # buffered copies, so appending to them is no longer safe.
        self.coalescer.reset()
        report = ReconcileReport()
        started = self._now()
        listed = [s for s in await api.list_sessions() if isinstance(s, dict) and s.get("id")]
        busy = set(await api.session_status())
        upstream = {str(s["id"]): s for s in listed}
        report.upstream_empty = not upstream
        async with self._db() as db:
            ours = await list_sessions(db, self.sandbox_id)
            # Sessions made through the ACP gateway are in OpenCode's store too; the ACP mirror owns them.
            theirs = await acp_session_ids(db, self.sandbox_id)
        mirrored = {key: info for key, info in upstream.items() if key not in theirs}

        # Parents before children, so a child's parent link finds a real row.
        for session_id, info in sorted(mirrored.items(), key=lambda kv: (dig(kv[1], "time", "created") or 0, kv[0])):
            messages: list[JSON] | None
            try:
                messages = await api.list_messages(session_id)
            except Exception as error:  # e.g. deleted between the two calls: judge it next time
                messages = None
                report.notes.append(f"messages of {session_id} not listed: {type(error).__name__}: {error}"[:300])
            await self._reconcile_session(info, messages, busy=session_id in busy, started=started, report=report)

        # Only rows stored before this reconcile began can be judged against the listing.
        before = {key: row for key, row in ours.items() if row.created_at < started}
        await self._reconcile_vanished(before, upstream.keys(), report)
        return report

    @serialized
    async def reconcile_session(self, api: OpenCodeSessionApi, session_id: str) -> ReconcileReport:
        """Reconcile one session (the session restore calls it right after an import)."""
        report = ReconcileReport()
        started = self._now()
        info = await api.get_session(session_id)
        messages = await api.list_messages(session_id)
        busy = session_id in await api.session_status()
        await self._reconcile_session(info, messages, busy=busy, started=started, report=report)
        return report

    async def _reconcile_session(
        self,
        info: JSON,
        messages: list[JSON] | None,
        *,
        busy: bool,
        started: datetime,
        report: ReconcileReport,
    ) -> None:
        async with self._writing() as db:
            now = self._now()
            # Re-read under the lock: the live path may have changed the row since the listing.
            current = await find_session(db, self.sandbox_id, str(info["id"]))
            if current is not None and current.missing_upstream_at is not None and current.status != "deleted":
                # Back after being lost: only once it holds all of ours (an `opencode import` writes a
                # session before its messages; judging the half-written copy would remove our messages).
                ours_before = await load_messages(db, current.id)
                expected = expected_parts(row.values.content for row in ours_before.values())
                if messages is None or not upstream_covers(expected, messages):
                    report.sessions_missing_upstream += 1
                    report.notes.append(f"{info['id']} is back upstream but lacks messages of ours: kept flagged")
                    return
            write = await upsert_session(
                db,
                sandbox_id=self.sandbox_id,
                user_id=self.user_id,
                values=session_values(info),
                now=now,
                stored=current,
            )
            if write.written:
                report.sessions_upserted += 1
            else:
                report.unchanged += 1
            if messages is None or write.status == "deleted":
                return

            ours = await load_messages(db, write.id)
            listed = [m for m in messages if isinstance(m.get("info"), dict) and m["info"].get("id")]
            running = _still_running(listed) if busy else None
            changed = False
            for message in listed:
                message_id = str(message["info"]["id"])
                row = ours.get(message_id)
                values = message_values(*reconciled_message(row.values.content if row else None, message))
                if values.role == "assistant" and values.status == "streaming" and message_id != running:
                    values = replace(values, status="interrupted")
                changed |= await write_message(
                    db, user_id=self.user_id, session_row_id=write.id, values=values, stored=row, now=now, report=report
                )

            listed_ids = {str(m["info"]["id"]) for m in listed}
            gone = [row for key, row in ours.items() if key not in listed_ids and row.created_at < started]
            if gone and listed_ids & ours.keys():
                # The listing still shares messages with our copy: what it lacks was removed upstream.
                for row in gone:
                    await remove_message(db, session_id=write.id, external_message_id=row.values.external_message_id)
                report.messages_removed += len(gone)
                changed = True
            elif gone:
                # An empty or unrelated listing proves nothing: keep our messages, flagged.
                unflagged = [row.id for row in gone if row.missing_upstream_at is None]
                if unflagged:
                    await flag_messages_missing(db, unflagged, now=now)
                    report.notes.append(f"{len(unflagged)} messages of {info['id']} kept: missing upstream")
            if changed:
                await recompute_session_stats(db, write.id, now=now)

    async def _reconcile_vanished(
        self, before: dict[str, SessionRow], upstream: Collection[str], report: ReconcileReport
    ) -> None:
        present = set(upstream)
        vanished = [row for key, row in before.items() if key not in present and row.status != "deleted"]
        known = [
            key
            for key, row in before.items()
            if row.status != "deleted" and row.missing_upstream_at is None and row.upstream_created_at is not None
        ]
        trusted, reason = judge_upstream(known, present)
        report.sessions_missing_upstream += sum(1 for row in vanished if row.missing_upstream_at is not None)
        newly = [row for row in vanished if row.missing_upstream_at is None]
        if not newly:
            return
        async with self._writing() as db:
            now = self._now()
            if trusted:
                for row in newly:
                    report.sessions_marked_deleted += await mark_session_deleted(db, row.id, now=now)
            else:
                await flag_sessions_missing(db, [row.id for row in newly], now=now)
                report.sessions_missing_upstream += len(newly)
                report.notes.append(f"upstream-loss guard: kept {len(newly)} sessions ({reason})")
            # Their agent no longer has them: an unfinished turn there will never finish.
            report.messages_interrupted += await mark_interrupted(db, [row.id for row in newly], now=now)


class OpenCodeStream:
    """OpenCode's ``/event`` stream as a segment source (:class:`agentpod.chat_mirror.segment.StreamSource`).

    OpenCode's stream has no event ids and no replay: every ``server.connected`` reconciles through the
    REST API, which is what makes the mirror gap-free.
    """

    name = "OpenCode"
    errors: tuple[type[Exception], ...] = (OpenCodeError, httpx.HTTPError)
    # `server.connected` is the stream's first frame, sent at once. A request that reaches OpenCode while
    # it is still starting up can hang without ever getting it; waiting the full silence limit for that
    # would leave the mirror 30 s behind after every agent restart.
    first_frame_limit = 5.0
    # OpenCode sends `server.heartbeat` every 10 s; three missed ones mean the connection is dead.
    silence_limit = 30.0

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        target: SyncTarget,
        passwords: Sequence[str],
        *,
        restore: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``restore``: called when a reconcile finds sessions we hold that OpenCode lacks (it starts the
        session restore); None: nobody restores them."""
        self.mirror = OpenCodeMirror(sessions, sandbox_id=target.sandbox_id, user_id=target.user_id)
        self.label = f"sync {target.sandbox_id}"
        self._sessions = sessions
        self._url = target.opencode_url
        self._passwords = list(passwords)
        self._restore = restore

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[tuple[OpenCodeClient, AsyncIterator[JSON]]]:
        """A client (with the sandbox's server passwords) and its event stream."""
        async with OpenCodeClient(self._url, self._passwords) as client:
            yield client, client.events().__aiter__()

    def opens(self, frame: JSON) -> bool:
        """``server.connected`` opens the stream."""
        return frame.get("type") == "server.connected"

    async def dispatch(self, client: OpenCodeClient, frame: JSON, *, first: bool) -> ReconcileReport | bool:
        """Reconcile on ``server.connected``, skip heartbeats, feed everything else to the mirror."""
        kind = frame.get("type")
        if kind == "server.connected":
            report = await self.mirror.reconcile(client)
            await ask_for_lost_sessions(self._restore, report, self.label)
            return report
        if kind == "server.heartbeat":
            return False
        await self.mirror.feed(frame)
        return True

    async def disconnected(self) -> None:
        """Write what the lost connection delivered; a database error keeps it buffered for the next flush."""
        with contextlib.suppress(SQLAlchemyError):
            await self.mirror.flush()

    async def save_status(self, status: SyncStatus) -> None:
        """Persist the status the chat API shows (``chat_sync_state``)."""
        await commit_sync_status(self._sessions, ChatSyncState, self.mirror.sandbox_id, status)


async def ask_for_lost_sessions(
    restore: Callable[[], Awaitable[None]] | None, report: ReconcileReport, label: str
) -> None:
    """After a reconcile: when it found sessions we hold that OpenCode lacks, ask ``restore`` for them back.
    Whatever happens the caller goes on (the next reconcile asks again); a failure becomes a report note."""
    if not report.sessions_missing_upstream or restore is None:
        return
    try:
        await restore()
    except Exception as error:  # e.g. Temporal unreachable
        log.warning("%s: restore of %d lost sessions not requested: %s", label, report.sessions_missing_upstream, error)
        report.notes.append(f"restore not requested: {type(error).__name__}: {error}"[:300])


__all__ = ["OpenCodeMirror", "OpenCodeStream", "ask_for_lost_sessions", "judge_upstream"]
