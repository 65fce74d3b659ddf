"""The audit-trail event every feature records."""

from __future__ import annotations

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
