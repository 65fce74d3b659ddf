"""The signed-in user's preferences (``/api/users/me/preferences``): versioned, with history and live push.

Every response carries ``ETag: "<settings_version>"``; writes honour ``If-Match`` (412 with the current
state when it is stale, and nothing changes). After each committed change the new state is published
on ``preferences:<user id>``, which every connected ``/stream`` of that user forwards.
See docs/preferences.md for the contract.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.background import BackgroundTask

from agentpod.notify import Notifier
from agentpod.notify.sse import Versioned, versioned_stream
from agentpod.store import preferences as prefs
from agentpod.store.sandboxes import CatalogError
from agentpod.store.tables import UserPreferences
from api.audit import AuditEntry, audit
from api.deps import (
    Auth,
    Context,
    CurrentUser,
    DbSession,
    HeartbeatSeconds,
    LiveStreamsDep,
    NotifierDep,
    PreferencesWrite,
    PreferencesWriter,
)
from api.errors import (
    ERROR_RESPONSES,
    ApiError,
    BadRequest,
    Conflict,
    ErrorResponse,
    NotFound,
    PreconditionFailed,
)
from api.live_streams import LiveStream
from api.schemas.preferences import (
    HistoryEntryOut,
    PreferencesHistoryOut,
    PreferencesOut,
    PreferencesPatch,
    PreferencesReplace,
    PreferencesSyncOut,
    PreferencesValues,
    PreferencesVersionOut,
    SyncStatus,
)

log = logging.getLogger(__name__)

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    412: {"model": ErrorResponse, "description": "If-Match is stale; `details.current` is the stored state"},
}
router = APIRouter(prefix="/api/users/me/preferences", tags=["preferences"], responses=_RESPONSES)

_ETAG = re.compile(r'^(?:W/)?"(\d{1,18})"$')

# Every write is this action; the handler records it with the version it made, in the write's transaction.
PreferencesAudit = Annotated[AuditEntry, audit("preferences.update", entity="preferences", with_request_id=False)]


def channel(user_id: str) -> str:
    """The notifier channel of a user's preferences."""
    return f"preferences:{user_id}"


@router.get("")
async def get_preferences(user: CurrentUser, db: DbSession, response: Response) -> PreferencesOut:
    """The caller's preferences (created with the defaults on first use)."""
    row = await _stored(db, user.id)
    return _respond(PreferencesOut.model_validate(row), response)


@router.put("")
async def replace_preferences(
    body: PreferencesReplace, write: PreferencesWriter, entry: PreferencesAudit
) -> PreferencesOut:
    """Replace the whole document: fields left out get their defaults."""
    wanted = {**prefs.defaults(), **body.model_dump()}
    return await _write(write, entry, lambda _: wanted, action="replace")


@router.patch("")
async def update_preferences(
    body: PreferencesPatch, write: PreferencesWriter, entry: PreferencesAudit
) -> PreferencesOut:
    """Change the fields sent. Sending values already stored creates no new version."""
    changes = body.model_dump(exclude_unset=True)
    return await _write(write, entry, lambda _: changes, action="update")


@router.delete("")
async def reset_preferences(write: PreferencesWriter, entry: PreferencesAudit) -> PreferencesOut:
    """Reset to the defaults, as a new version (never back to version 1)."""
    return await _write(write, entry, lambda _: prefs.defaults(), action="reset", always=True)


@router.get("/version")
async def get_version(user: CurrentUser, db: DbSession, response: Response) -> PreferencesVersionOut:
    """The current version only."""
    row = await _stored(db, user.id)
    response.headers["ETag"] = _etag(row.settings_version)
    return PreferencesVersionOut(settings_version=row.settings_version)


@router.get("/sync")
async def sync_preferences(
    user: CurrentUser,
    db: DbSession,
    response: Response,
    version: Annotated[int, Query(ge=0, description="The version the device holds (0: none).")],
) -> PreferencesSyncOut:
    """Whether a device holding ``version`` is behind, and the state to adopt if it must update."""
    row = await _stored(db, user.id)
    current = row.settings_version
    status: SyncStatus = "current" if version == current else "behind" if version < current else "ahead"
    response.headers["ETag"] = _etag(current)
    return PreferencesSyncOut(
        client_version=version,
        settings_version=current,
        status=status,
        needs_sync=status != "current",
        preferences=None if status == "current" else PreferencesOut.model_validate(row),
    )


@router.get("/history")
async def get_history(user: CurrentUser, db: DbSession, response: Response) -> PreferencesHistoryOut:
    """The last versions, newest first (each with its full values, so any can be restored)."""
    row = await _stored(db, user.id)
    entries = await prefs.history(db, user.id)
    response.headers["ETag"] = _etag(row.settings_version)
    return PreferencesHistoryOut(
        settings_version=row.settings_version,
        versions=[
            HistoryEntryOut(
                version=entry.version,
                action=entry.action,
                changed_fields=list(entry.changed_fields),
                restored_from=entry.restored_from,
                created_at=entry.created_at,
                preferences=PreferencesValues.model_validate(prefs.from_snapshot(entry.snapshot)),
            )
            for entry in entries
        ],
    )


@router.post("/restore/{version}")
async def restore_preferences(
    version: Annotated[int, Path(ge=1, description="A version listed by `/history`.")],
    write: PreferencesWriter,
    entry: PreferencesAudit,
) -> PreferencesOut:
    """Make the values of ``version`` current again, as a new version."""
    await prefs.get_or_create(write.db, write.user.id)
    # The column is a 32-bit integer: a larger number is no kept version (and must not reach the database).
    values = await prefs.snapshot(write.db, write.user.id, version) if version < 2**31 else None
    if values is None:
        raise NotFound(
            f"version {version} is not among the kept versions (the last {prefs.HISTORY_LIMIT})",
            code="version_not_found",
        )
    return await _write(write, entry, lambda _: values, action="restore", always=True, restored_from=version)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `preferences` events (data as GET, id = version), keep-alive comments",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        429: {
            "model": ErrorResponse,
            "description": "`too_many_streams`: the account holds the most live streams allowed",
        },
    },
)
async def stream_preferences(
    auth: Auth,
    db: DbSession,
    ctx: Context,
    notifier: NotifierDep,
    heartbeat_seconds: HeartbeatSeconds,
    streams: LiveStreamsDep,
) -> StreamingResponse:
    """Live push: the current state on connect, then every newer version, to every connected device.

    Ends when the device signs out (or its token expires, or the account is locked): no push goes out
    after that, and the stream closes within about a second.
    """
    user, auth_session = auth
    # The session only authenticated the caller: a stream must not pin a pooled connection for hours.
    await db.close()
    slot = streams.open(user.id, auth_session.id)  # 429 past the per-user cap
    return StreamingResponse(
        _events(ctx.sessions, notifier, user.id, slot, heartbeat_seconds),
        media_type="text/event-stream",
        # No caching, and no buffering by nginx-style proxies: each event must leave at once.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # The slot is also given back here: a client gone before the first byte never runs the body.
        background=BackgroundTask(slot.close),
    )


async def _events(
    sessions: async_sessionmaker[AsyncSession],
    notifier: Notifier,
    user_id: str,
    slot: LiveStream,
    heartbeat_seconds: float,
) -> AsyncIterator[bytes]:
    async def current() -> Versioned:
        async with sessions() as db:
            row = await _stored(db, user_id)
        out = PreferencesOut.model_validate(row)
        return Versioned(out.settings_version, out.model_dump_json())

    try:
        # Subscribed before the state is read: a change committed in between is not missed.
        async with notifier.subscribe(channel(user_id)) as messages:
            # Signed out anywhere: the shared re-check ends the subscription, and with it the stream.
            slot.on_revoked(messages.close)
            async for chunk in versioned_stream(
                messages,
                event="preferences",
                current=current,
                parse=_parse_pushed,
                heartbeat_seconds=heartbeat_seconds,
                # Checked before every push: another device writing often must not keep feeding this one.
                still_allowed=slot.still_allowed,
            ):
                yield chunk
    finally:
        slot.close()


@functools.lru_cache(maxsize=64)
def _parse_pushed(payload: str) -> Versioned:
    # Cached: all of a user's streams receive the same payload object; parse it once, not per device.
    return Versioned(int(json.loads(payload)["settings_version"]), payload)


async def _write(
    write: PreferencesWrite,
    entry: AuditEntry,
    target: Callable[[prefs.Values], prefs.Values],
    *,
    action: str,
    always: bool = False,
    restored_from: int | None = None,
) -> PreferencesOut:
    """One versioned write: precondition, audit record, commit, then push to the user's devices."""
    db = write.db
    try:
        written = await prefs.write(
            db,
            write.user.id,
            target,
            action=action,
            expected=_expected_versions(write.if_match),
            always_new_version=always,
            restored_from=restored_from,
        )
    except prefs.StaleVersionError as stale:
        await db.commit()  # keep the defaults if this request is what created them
        current = PreferencesOut.model_validate(stale.current)
        raise PreconditionFailed(
            f"preferences are at version {current.settings_version}, not the one in If-Match",
            details={"current": current.model_dump(mode="json")},
            headers={"ETag": _etag(current.settings_version)},
        ) from None
    except CatalogError as error:
        raise _catalog_error(error, action) from None
    except prefs.ConcurrentWriteError:
        raise Conflict("preferences are being changed concurrently; retry", code="concurrent_write") from None
    out = PreferencesOut.model_validate(written.row)
    if written.new_version:
        restored = {} if restored_from is None else {"restored_from": restored_from}
        await entry.record(
            db, entity_id=written.row.id, fields=written.changed, version=out.settings_version, via=action, **restored
        )
    else:
        entry.skip()  # the values were already stored: no new version, nothing to record
    await db.commit()
    if written.new_version:
        await _push(write.notifier, write.user.id, out)
    return _respond(out, write.response)


async def _push(notifier: Notifier, user_id: str, out: PreferencesOut) -> None:
    try:
        await notifier.publish(channel(user_id), out.model_dump_json())
    except Exception:
        # The change is committed: failing the request would make the client retry a write that
        # succeeded. Devices catch up on their next connect or sync.
        log.warning("pushing preferences version %d failed", out.settings_version, exc_info=True)


def _expected_versions(if_match: str | None) -> frozenset[int] | None:
    """The versions ``If-Match`` allows (None: any)."""
    if if_match is None:
        return None
    versions = set()
    for tag in (part.strip() for part in if_match.split(",")):
        if tag == "*":
            return None
        match = _ETAG.match(tag)
        if match is None:
            raise BadRequest('If-Match must be "<version>", W/"<version>" or *', code="invalid_if_match")
        versions.add(int(match[1]))
    return frozenset(versions)


def _catalog_error(error: CatalogError, action: str) -> ApiError:
    field = f"default_{error.field}"  # the catalog check names the sandbox's fields
    if action == "restore":
        return Conflict(
            f"that version's {field} is no longer offered by the catalog",
            code="unknown_catalog_item",
            details={"field": field},
        )
    # The project's 422 shape, as if the schema had refused it: the value is not offered.
    return ApiError(
        "request did not pass validation",
        status=422,
        code="validation_error",
        details=[{"loc": ["body", field], "msg": "not offered by the catalog", "type": "unknown_catalog_item"}],
    )


async def _stored(db: AsyncSession, user_id: str) -> UserPreferences:
    """The user's preferences row, created with the defaults on first use (and committed at once)."""
    row = await prefs.get_or_create(db, user_id)
    await db.commit()
    return row


def _etag(version: int) -> str:
    return f'"{version}"'


def _respond(out: PreferencesOut, response: Response) -> PreferencesOut:
    response.headers["ETag"] = _etag(out.settings_version)
    return out
