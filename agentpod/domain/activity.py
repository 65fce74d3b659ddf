"""The audit-trail event every feature records, and how a workflow hands one to the writer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class ActivityEvent(BaseModel):
    """One audit-log entry, as handed from the API or a workflow to the writer."""

    user_id: str | None
    action: str = Field(max_length=64, description="Dotted action name, e.g. `sandbox.start`.")
    entity_type: str | None = None
    entity_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    ip_address: str | None = None
    user_agent: str | None = None
    # When it happened, if that is not when it is written: a queued event keeps its moment, so the feed's
    # order is the order things happened in.
    occurred_at: datetime | None = None


class RecordActivityInput(BaseModel):
    """An event plus the id that makes retries write it once (argument of ``record_activity``)."""

    event_id: str
    event: ActivityEvent
