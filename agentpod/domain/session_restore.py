"""Types of the session restore: OpenCode sessions we hold that the sandbox's OpenCode lost, put back.

``SessionRestoreWorkflow`` (id ``session-restore-<sandbox id>``) plans which sessions to restore
(:class:`SessionRestorePlan`), restores them one activity per session (:class:`RestoreSessionInput` →
:class:`SessionRestoreResult`) and publishes :class:`SessionRestoreProgress`: in the Web UI, through its
``progress`` query, and in the sync status the chat API shows (``SyncStatus.restore``).

These shapes are in workflow histories: change them only compatibly (new fields with defaults).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

# Failed session ids kept in the progress (the count is exact; the list is for a first look).
FAILED_LISTED = 20


class RestoreOutcome(StrEnum):
    """What restoring one session came to."""

    RESTORED = "restored"  # imported into OpenCode now
    PRESENT = "present"  # OpenCode already had it, whole: nothing imported
    SKIPPED = "skipped"  # nothing to restore (no such OpenCode session of ours, or deleted)
    FAILED = "failed"  # the import failed (after retries), or the sandbox stopped first


class SessionRestoreRequest(BaseModel):
    """Signal ``restore``: restore these sessions first (none: look for missing sessions again)."""

    session_ids: list[str] = Field(default_factory=list)


class SessionRestoreItem(BaseModel):
    """One session to restore (OpenCode ids); a child waits for its parent when both are restored."""

    session_id: str
    parent_id: str | None = None


class SessionRestorePlanInput(BaseModel):
    """Which sandbox to plan for; ``requested`` sessions come first whether flagged missing or not."""

    sandbox_id: str
    requested: list[str] = Field(default_factory=list)


class SessionRestorePlan(BaseModel):
    """Sessions in restore order: requested ones, then families by their latest activity (newest first),
    each parent before its children."""

    items: list[SessionRestoreItem] = Field(default_factory=list)
    # The sandbox's CPU limit: imports beyond it only compete for it (each is a CPU-bound process).
    cpu_cores: int | None = None


class RestoreSessionInput(BaseModel):
    """Restore one session (by its OpenCode id) into the sandbox's OpenCode."""

    sandbox_id: str
    session_id: str


class SessionRestoreResult(BaseModel):
    """The outcome for one session."""

    session_id: str
    outcome: RestoreOutcome
    messages: int = 0
    detail: str | None = None


class SessionRestoreProgress(BaseModel):
    """Where a sandbox's restore stands (what the sync status and the Web UI show)."""

    state: Literal["restoring", "done", "stopped"] = "restoring"
    total: int = 0
    restored: int = 0
    present: int = 0
    skipped: int = 0
    failed: int = 0
    current: list[str] = Field(default_factory=list, description="Sessions being restored right now.")
    failed_sessions: list[str] = Field(default_factory=list, description=f"Up to {FAILED_LISTED} failed ones.")
    last_error: str | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> int:
        """Sessions dealt with, whatever the outcome."""
        return self.restored + self.present + self.skipped + self.failed

    def count(self, result: SessionRestoreResult) -> None:
        """Add one session's outcome."""
        if result.outcome == RestoreOutcome.RESTORED:
            self.restored += 1
        elif result.outcome == RestoreOutcome.PRESENT:
            self.present += 1
        elif result.outcome == RestoreOutcome.SKIPPED:
            self.skipped += 1
        else:
            self.failed += 1
            self.last_error = result.detail
            if len(self.failed_sessions) < FAILED_LISTED:
                self.failed_sessions.append(result.session_id)


class SessionRestoreInput(BaseModel):
    """Start argument of ``SessionRestoreWorkflow``; the rest is carried across continue-as-new."""

    sandbox_id: str
    concurrency: int = 2
    queue: list[SessionRestoreItem] = Field(default_factory=list)
    attempted: list[str] = Field(default_factory=list)
    progress: SessionRestoreProgress | None = None


class SaveRestoreProgressInput(BaseModel):
    """Write a sandbox's restore progress into its sync status."""

    sandbox_id: str
    progress: SessionRestoreProgress
