"""Chat-sync types shared by the sync workflow, its activities and the chat API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from agentpod.domain.session_restore import SessionRestoreProgress


class SyncStatus(BaseModel):
    """Honest state of one sandbox's live mirror (what `GET .../chat/sync/status` shows)."""

    connected: bool = False
    last_event_at: datetime | None = None
    last_reconcile_at: datetime | None = None
    lag_ms: float | None = None  # upstream event time -> committed in our database, last batch
    reconnects: int = 0
    last_error: str | None = None
    events_applied: int = 0
    # Written by the session restore alone (the stream's own status writes leave it as it is).
    restore: SessionRestoreProgress | None = Field(
        default=None, description="The last restore of sessions the agent had lost (none: never needed)."
    )


class ReconcileReport(BaseModel):
    """What one full reconcile changed."""

    sessions_upserted: int = 0
    sessions_marked_deleted: int = 0
    sessions_missing_upstream: int = 0
    messages_upserted: int = 0
    messages_removed: int = 0
    messages_interrupted: int = 0
    unchanged: int = 0
    upstream_empty: bool = False
    notes: list[str] = Field(default_factory=list)


class SyncTarget(BaseModel):
    """Which OpenCode a sandbox's sync follows (changes when the container is recreated)."""

    sandbox_id: str
    user_id: str
    opencode_url: str
    acp_url: str | None = None  # the ACP gateway, followed by its own sync workflow


class StreamSegmentInput(BaseModel):
    """One bounded stretch of live streaming; a reconcile runs on every (re)connect within it."""

    target: SyncTarget
    segment_seconds: float = 300.0
    status: SyncStatus = Field(default_factory=SyncStatus)


class StreamSegmentResult(BaseModel):
    """What a segment did (small: bodies never travel through Temporal history)."""

    status: SyncStatus
    events: int = 0
    reconciles: int = 0


class SyncWorkflowInput(BaseModel):
    """Start argument of the sync workflow; ``status`` is carried across continue-as-new."""

    target: SyncTarget
    segment_seconds: float = 300.0
    status: SyncStatus = Field(default_factory=SyncStatus)
