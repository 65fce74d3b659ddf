"""The audit trail of the API: actions declared on the endpoints that perform them, written in the background.

Declare the action on the route::

    @router.post("/{sandbox_id}/start", dependencies=[audit("sandbox.start", entity="sandbox", id_param="sandbox_id")])

or take the entry as a parameter to complete it (a new entity's id, metadata, the user on sign-in)::

    async def sign_in(..., entry: Annotated[AuditEntry, audit("auth.login", entity="user", public=True)]):
        ...
        entry.user_id = user.id

The entry is recorded only when the handler returns (an exception means nothing changed). By
default it goes to an in-process queue that :class:`AuditWriter` drains in batches, so a request
never waits for the audit insert; a full queue falls back to a direct write (never a drop), and
closing the writer flushes everything (clean shutdown loses nothing). Events that must commit with
the data call ``await entry.record(db)`` inside the handler's transaction instead: this module is the
one way the API writes activity. Actions a workflow records are still declared here
(``recorded_by="workflow"``), so every state-changing endpoint names its action
(:func:`declared_actions`; a test enforces it).

Only what the handler puts in ``metadata`` is stored, never request bodies; keys that look like
secrets are removed anyway. IP comes from :mod:`api.client_ip` (X-Forwarded-For only from trusted
proxies).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.domain.activity import ActivityEvent
from agentpod.store.activity import record_activity
from agentpod.store.base import utcnow
from api.context import AppContext
from api.deps import Auth, ClientIp, Context
from api.errors import request_id_of

log = logging.getLogger(__name__)

_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_ENTITY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Metadata keys never stored, at any depth, whatever a handler hands over (matched as whole words
# of a snake_case or camelCase key: "refresh_token" and "apiKey" go, "tokens" used stays).
_SECRET_WORDS = re.compile(
    r"(^|_)(password|passwd|secret|token|api_?key|access_?key|private_?key|authorization|cookie|credentials?)(_|$)"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_ENTITY_ID_MAX = 128
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RecordedBy = Literal["request", "workflow"]


def _secret(key: object) -> bool:
    return bool(_SECRET_WORDS.search(_CAMEL.sub("_", str(key)).lower().replace("-", "_")))


def strip_secrets(value: Any) -> Any:
    """``value`` without any mapping key that looks like a secret (recursively)."""
    if isinstance(value, dict):
        return {key: strip_secrets(item) for key, item in value.items() if not _secret(key)}
    if isinstance(value, list):
        return [strip_secrets(item) for item in value]
    return value


@dataclass
class AuditEntry:
    """The activity row a request will produce. Handlers may fill in what only they know."""

    action: str
    user_id: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    ip_address: str | None = None
    user_agent: str | None = None
    skipped: bool = False
    written: bool = False

    def skip(self) -> None:
        """Record nothing for this request (e.g. an update that changed nothing)."""
        self.skipped = True

    def event(self) -> ActivityEvent:
        """The event to write."""
        entity_id = self.entity_id
        if entity_id is None and self.entity_type == "user":
            entity_id = self.user_id
        return ActivityEvent(
            user_id=self.user_id,
            action=self.action,
            entity_type=self.entity_type,
            entity_id=entity_id[:_ENTITY_ID_MAX] if entity_id else None,
            metadata=strip_secrets(self.metadata),
            ip_address=self.ip_address,
            user_agent=self.user_agent,
        )

    async def record(self, db: AsyncSession, *, entity_id: str | None = None, **metadata: Any) -> None:
        """Write the entry now, in ``db``'s transaction (the handler commits): for events that must
        exist exactly when the data change does."""
        if entity_id is not None:
            self.entity_id = entity_id
        self.metadata.update(metadata)
        await record_activity(db, self.event())
        self.written = True


@dataclass(frozen=True)
class AuditSpec:
    """What an endpoint declares: its action and where its entity comes from."""

    action: str
    entity: str | None
    id_param: str | None
    public: bool
    recorded_by: RecordedBy


def audit(
    action: str,
    *,
    entity: str | None = None,
    id_param: str | None = None,
    public: bool = False,
    recorded_by: RecordedBy = "request",
    with_request_id: bool = True,
) -> Any:
    """A dependency recording ``action`` when the endpoint succeeds.

    ``entity`` / ``id_param``: the entity type and the path parameter holding its id (an entity of
    type ``user`` defaults to the caller). ``public``: the route has no bearer token, the handler
    sets ``entry.user_id``.

    ``recorded_by``: ``"request"`` (this dependency writes it, or the handler through
    ``entry.record(db)``); ``"workflow"``, the workflow that performs the action records it once it
    really happened (the sandbox workflow: start, stop, delete, with this request's IP and user
    agent). Either way the action is declared here, on the endpoint, where :func:`declared_actions`
    finds it.

    ``with_request_id=False``: the row's metadata is exactly what the handler records, without the
    ``request_id`` that ties other rows to the server logs (the sandbox and preferences rows keep
    the shape they have always had).
    """
    if not _ACTION.match(action) or len(action) > 64:
        raise ValueError(f"audit action {action!r} must look like 'feature.verb' (lowercase, at most 64 chars)")
    if entity is not None and not _ENTITY.match(entity):
        raise ValueError(f"audit entity {entity!r} must be lowercase, at most 32 chars")
    if id_param is not None and entity is None:
        raise ValueError("id_param needs an entity type")
    spec = AuditSpec(action, entity, id_param, public, recorded_by)
    if recorded_by != "request":

        async def recorded_elsewhere() -> None:
            return None

        recorded_elsewhere.audit_spec = spec  # type: ignore[attr-defined]
        return Depends(recorded_elsewhere)

    def start(request: Request, user_id: str | None, ip: str | None) -> AuditEntry:
        entry = AuditEntry(
            action=action,
            user_id=user_id,
            entity_type=entity,
            entity_id=str(request.path_params[id_param]) if id_param in request.path_params else None,
            ip_address=ip,
            user_agent=request.headers.get("user-agent"),
        )
        if with_request_id and (request_id := request_id_of(request)) is not None:
            entry.metadata["request_id"] = request_id  # ties the row to server logs
        return entry

    async def finish(request: Request, ctx: AppContext, entry: AuditEntry) -> None:
        if entry.skipped or entry.written:
            return
        writer: AuditWriter | None = getattr(request.app.state, "audit_writer", None)
        if writer is None:
            await write_now(ctx.sessions, [entry.event()])  # no writer running (e.g. during startup)
        else:
            await writer.record(entry.event())

    if public:

        async def audit_public(request: Request, ctx: Context, ip: ClientIp) -> AsyncIterator[AuditEntry]:
            entry = start(request, None, ip)
            yield entry  # an exception from the handler is raised here: nothing is recorded
            await finish(request, ctx, entry)

        dependency: Callable[..., Any] = audit_public
    else:

        async def audit_authenticated(
            request: Request, ctx: Context, auth: Auth, ip: ClientIp
        ) -> AsyncIterator[AuditEntry]:
            entry = start(request, auth[0].id, ip)
            yield entry  # an exception from the handler is raised here: nothing is recorded
            await finish(request, ctx, entry)

        dependency = audit_authenticated
    dependency.audit_spec = spec  # type: ignore[attr-defined]
    return Depends(dependency)


def not_audited(reason: str) -> Any:
    """Declare that a state-changing endpoint deliberately records nothing, and why."""
    if not reason.strip():
        raise ValueError("say why the endpoint is not audited")

    async def no_audit() -> None:
        return None

    no_audit.audit_exempt_reason = reason  # type: ignore[attr-defined]
    return Depends(no_audit)


def _endpoints(app: FastAPI) -> Iterable[tuple[str, set[str], Any]]:
    """(path, methods, dependant) of every API route, however the routers were included."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazily included routers: app.routes is flat
        for route in app.routes:
            if isinstance(route, APIRoute):
                yield route.path, route.methods or set(), route.dependant
        return
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.path is not None:
            yield context.path, context.methods or set(), context.dependant


def _calls(dependant: Any) -> Iterable[Any]:
    pending = list(dependant.dependencies)
    while pending:
        sub = pending.pop()
        yield sub.call
        pending.extend(sub.dependencies)


def declared_actions(app: FastAPI) -> dict[tuple[str, str], AuditSpec | str | None]:
    """Every state-changing endpoint → its audit spec, the reason it is exempt, or None (undeclared)."""
    found: dict[tuple[str, str], AuditSpec | str | None] = {}
    for path, methods, dependant in _endpoints(app):
        declared: AuditSpec | str | None = None
        for call in _calls(dependant):
            declared = getattr(call, "audit_spec", None) or getattr(call, "audit_exempt_reason", None) or declared
        for method in methods & MUTATING_METHODS:
            found[(method, path)] = declared
    return found


# --------------------------------------------------------------------------- the background writer


def _without_person(event: ActivityEvent) -> ActivityEvent:
    # The user was deleted between the request and the write: keep the row, anonymized, as the
    # deletion saga would have left it.
    return event.model_copy(update={"user_id": None, "ip_address": None, "user_agent": None})


async def write_now(sessions: async_sessionmaker[AsyncSession], events: list[ActivityEvent]) -> None:
    """Write ``events`` in one transaction (ids make a retried write idempotent)."""
    await _write(sessions, [(str(uuid.uuid4()), event) for event in events])


async def _commit(sessions: async_sessionmaker[AsyncSession], batch: list[tuple[str, ActivityEvent]]) -> None:
    async with sessions() as db:
        for event_id, event in batch:
            await record_activity(db, event, event_id=event_id)
        await db.commit()


async def _write(sessions: async_sessionmaker[AsyncSession], batch: list[tuple[str, ActivityEvent]]) -> None:
    """Commit ``batch``; an event the database refuses is isolated so it cannot hold back the others.

    Connection and lock errors propagate (the caller retries); a refused event is never retried.
    """
    try:
        await _commit(sessions, batch)
        return
    except (exc.IntegrityError, exc.DataError, exc.ProgrammingError) as error:
        refused = error
    if len(batch) > 1:
        for item in batch:
            await _write(sessions, [item])
        return
    event_id, event = batch[0]
    if isinstance(refused, exc.IntegrityError) and event.user_id is not None:
        await _write(sessions, [(event_id, _without_person(event))])
        return
    log.error("audit event %s refused by the database and skipped: %s", event.action, refused)


class AuditWriter:
    """Drains queued audit events into the database in batches, off the request path."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        close_timeout: float = 15.0,
    ) -> None:
        self._sessions = sessions
        self._queue: asyncio.Queue[tuple[str, ActivityEvent]] = asyncio.Queue(capacity)
        self._batch_size = batch_size
        self._close_timeout = close_timeout
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.direct_writes = 0  # events written in the request because the queue was full or closed

    def start(self) -> None:
        """Start draining (in the running event loop)."""
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def record(self, event: ActivityEvent) -> None:
        """Queue ``event``; if the queue is full or closed, write it right here instead."""
        if event.occurred_at is None:  # stamped now: the write may come a moment later
            event = event.model_copy(update={"occurred_at": utcnow()})
        item = (str(uuid.uuid4()), event)
        if self._task is not None and not self._closing:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                pass
        self.direct_writes += 1
        try:
            await self._write_retrying([item], deadline=time.monotonic() + self._close_timeout)
        except Exception:
            log.exception("audit event %s lost: the database stayed unavailable", event.action)

    async def drain(self) -> None:
        """Wait until every event queued so far is committed."""
        await self._queue.join()

    async def close(self) -> None:
        """Stop accepting, flush what is queued (waiting out a database hiccup up to the timeout), stop."""
        self._closing = True
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), self._close_timeout + 1)
        except TimeoutError:
            log.error("audit writer: %d events not written at shutdown (database unavailable)", self._queue.qsize())
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write_retrying(batch)
            except Exception:
                log.exception("audit writer: %d events lost", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_retrying(self, batch: list[tuple[str, ActivityEvent]], deadline: float | None = None) -> None:
        """Write, retrying while the database is unreachable; after closing began, only until the deadline."""
        delay = 0.05
        while True:
            try:
                await _write(self._sessions, batch)
                return
            except Exception:
                if self._closing and deadline is None:
                    deadline = time.monotonic() + self._close_timeout
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                log.warning("audit writer: write of %d events failed; retrying in %.2fs", len(batch), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@asynccontextmanager
async def running_audit_writer(app: FastAPI, sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AuditWriter]:
    """Run an :class:`AuditWriter` for the app's lifetime (``app.state.audit_writer``); flushes on exit."""
    writer = AuditWriter(sessions)
    writer.start()
    app.state.audit_writer = writer
    try:
        yield writer
    finally:
        await writer.close()
        del app.state.audit_writer
