"""Query parameters and bodies of the activity-log endpoints."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from agentpod.store.activity_queries import ActivityFilter, Position
from api.schemas.base import ResponseBody

Action = Annotated[
    str, Field(max_length=64, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", examples=["sandbox.start"])
]
EntityType = Annotated[str, Field(max_length=32, pattern=r"^[a-z][a-z0-9_]*$", examples=["sandbox"])]


class _Query(BaseModel):
    # An unknown parameter (a typo such as `acton=`) is an error, not a silently ignored filter.
    model_config = ConfigDict(extra="forbid")


def _representable_in_utc(value: datetime | None) -> datetime | None:
    # 0001-01-01T00:00+01:00 is a valid timestamp whose UTC time is before year 1: a 500 in the query.
    if value is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("the time is outside the range of UTC dates") from None
    return value


When = Annotated[AwareDatetime | None, AfterValidator(_representable_in_utc)]


class Window(_Query):
    """A time window: ``since`` inclusive, ``until`` exclusive, both with a time zone."""

    since: When = None
    until: When = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        return self


class Filters(Window):
    """Filters shared by the list and the export."""

    action: Action | None = None
    entity_type: EntityType | None = None

    def to_filter(self) -> ActivityFilter:
        """The store's filter."""
        return ActivityFilter(action=self.action, entity_type=self.entity_type, since=self.since, until=self.until)


class ListQuery(Filters):
    """``GET /activity``: filters plus keyset pagination."""

    limit: int = Field(50, ge=1, le=100)
    cursor: str | None = Field(None, max_length=256, description="`next_cursor` of the previous page.")


class PageQuery(_Query):
    """Pagination alone (one entity's history)."""

    limit: int = Field(50, ge=1, le=100)
    cursor: str | None = Field(None, max_length=256, description="`next_cursor` of the previous page.")


class ExportQuery(Filters):
    """``GET /activity/export``: every matching row, as JSON or CSV."""

    format: Literal["json", "csv"] = "json"


class ActivityOut(ResponseBody):
    """One thing the caller (or the system on their behalf) did."""

    id: str
    created_at: datetime
    action: str
    entity_type: str | None
    entity_id: str | None
    metadata: dict[str, Any]
    ip_address: str | None
    user_agent: str | None


class ActivityPage(ResponseBody):
    """A page of the trail, newest first; pass ``next_cursor`` back for the next one (null: the end)."""

    activities: list[ActivityOut]
    next_cursor: str | None


class ActivityStats(ResponseBody):
    """The caller's number of recorded actions, by action, in the window."""

    total: int
    by_action: dict[str, int]
    since: datetime | None
    until: datetime | None


class InvalidCursor(ValueError):
    """A cursor this API did not hand out."""


def encode_cursor(position: Position | None) -> str | None:
    """Opaque page token: the last row's timestamp and id."""
    if position is None:
        return None
    raw = f"{position.created_at.isoformat()}|{position.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Position | None:
    """The position in ``cursor``; :class:`InvalidCursor` if it was not made by :func:`encode_cursor`."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
        created_at.astimezone(UTC)  # an offset can push year 1 out of range: that is no cursor of ours
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise InvalidCursor("invalid cursor") from None
    if created_at.tzinfo is None or not row_id or len(row_id) > 36 or "\x00" in row_id:
        raise InvalidCursor("invalid cursor")
    return Position(created_at, row_id)
