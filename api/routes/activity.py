"""The caller's own audit trail (``/api/users/me/activity``): list, stats, export, one entity's history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from agentpod.safe_csv import SafeCsvWriter
from agentpod.store import activity_queries
from agentpod.store.activity_queries import ActivityFilter, ActivityRow, Position
from api.deps import Context, CurrentUser, DbSession
from api.errors import ERROR_RESPONSES, BadRequest
from api.schemas.activity import (
    ActivityOut,
    ActivityPage,
    ActivityStats,
    ExportQuery,
    InvalidCursor,
    ListQuery,
    PageQuery,
    Window,
    decode_cursor,
    encode_cursor,
)

router = APIRouter(prefix="/api/users/me/activity", tags=["activity"], responses=ERROR_RESPONSES)

CSV_COLUMNS = ("id", "created_at", "action", "entity_type", "entity_id", "ip_address", "user_agent", "metadata")


def _position(cursor: str | None) -> Position | None:
    try:
        return decode_cursor(cursor)
    except InvalidCursor:
        raise BadRequest("the cursor is not one this API handed out", code="invalid_cursor") from None


async def _page(db: DbSession, user_id: str, where: ActivityFilter, query: PageQuery | ListQuery) -> ActivityPage:
    rows, following = await activity_queries.page(db, user_id, where, limit=query.limit, before=_position(query.cursor))
    return ActivityPage(
        activities=[ActivityOut.model_validate(row) for row in rows], next_cursor=encode_cursor(following)
    )


@router.get("")
async def list_activity(query: Annotated[ListQuery, Query()], user: CurrentUser, db: DbSession) -> ActivityPage:
    """The caller's activity, newest first, filtered by action, entity type and time window."""
    return await _page(db, user.id, query.to_filter(), query)


@router.get("/stats")
async def activity_stats(query: Annotated[Window, Query()], user: CurrentUser, db: DbSession) -> ActivityStats:
    """How many times the caller did each action (in the optional window)."""
    by_action = await activity_queries.count_by_action(db, user.id, since=query.since, until=query.until)
    return ActivityStats(total=sum(by_action.values()), by_action=by_action, since=query.since, until=query.until)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}, "text/csv": {}}, "description": "Every matching row"}},
)
async def export_activity(query: Annotated[ExportQuery, Query()], user: CurrentUser, ctx: Context) -> StreamingResponse:
    """Every matching row of the caller's activity, streamed as a JSON array or as CSV (no cap)."""
    pages = activity_queries.iter_all(ctx.sessions, user.id, query.to_filter())
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    if query.format == "csv":
        body, media_type = _csv(pages), "text/csv; charset=utf-8"
    else:
        body, media_type = _json(pages), "application/json"
    disposition = f'attachment; filename="agentpod-activity-{stamp}.{query.format}"'
    return StreamingResponse(body, media_type=media_type, headers={"Content-Disposition": disposition})


@router.get("/entity/{entity_type}/{entity_id}")
async def entity_activity(
    entity_type: Annotated[str, Path(max_length=32, pattern=r"^[a-z][a-z0-9_]*$")],
    entity_id: Annotated[str, Path(min_length=1, max_length=128)],
    query: Annotated[PageQuery, Query()],
    user: CurrentUser,
    db: DbSession,
) -> ActivityPage:
    """The caller's activity on one entity (e.g. one sandbox), newest first."""
    where = ActivityFilter(entity_type=entity_type, entity_id=entity_id)
    return await _page(db, user.id, where, query)


async def _json(pages: AsyncIterator[list[ActivityRow]]) -> AsyncIterator[str]:
    yield "["
    separator = ""
    async for rows in pages:
        yield separator + ",".join(ActivityOut.model_validate(row).model_dump_json() for row in rows)
        separator = ","
    yield "]\n"


async def _csv(pages: AsyncIterator[list[ActivityRow]]) -> AsyncIterator[str]:
    # User agents, entity ids and metadata come from clients: the safe writer keeps a cell such as
    # =HYPERLINK(...) from running as a formula in a spreadsheet (agentpod/safe_csv.py).
    writer = SafeCsvWriter()
    yield writer.rows([CSV_COLUMNS])
    async for rows in pages:
        yield writer.rows([getattr(row, column) for column in CSV_COLUMNS] for row in rows)
