"""Account deletion types shared by the API, the deletion saga and its activities."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

DELETION_PHRASE = "DELETE MY ACCOUNT"


class DeletionStep(StrEnum):
    """The saga's steps, in order. Each is one idempotent activity."""

    LOCK = "lock_account"
    ANONYMIZE = "anonymize_activity"
    SANDBOXES = "delete_sandboxes"
    DATA = "delete_data"
    USER = "delete_user"
    VERIFY = "verify_nothing_left"
    AUDIT = "record_deletion"


STEP_TITLES: dict[DeletionStep, str] = {
    DeletionStep.LOCK: "Lock the account (tokens revoked, sign-in refused)",
    DeletionStep.ANONYMIZE: "Anonymize the activity log",
    DeletionStep.SANDBOXES: "Stop and remove every sandbox (containers and volumes)",
    DeletionStep.DATA: "Delete provider keys, OpenCode config, preferences and chat history",
    DeletionStep.USER: "Delete the user",
    DeletionStep.VERIFY: "Verify no row and no container references the user",
    DeletionStep.AUDIT: "Record the anonymized audit entry",
}


class DeletionState(StrEnum):
    """Where a deletion stands, as the app sees it."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AccountDeletionInput(BaseModel):
    """Start argument of ``AccountDeletionWorkflow``."""

    user_id: str


class DeletionProgress(BaseModel):
    """What the saga has done so far (query ``progress``, memo ``progress``, and its result)."""

    user_id: str
    current: DeletionStep | None = None
    completed: list[DeletionStep] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    rounds: int = 0  # cleanup passes (a second one only if the verification found something)
    leftovers: list[str] = Field(default_factory=list)
    done: bool = False


class DeletionStatus(BaseModel):
    """A deletion as read from Temporal (works after the user row is gone)."""

    state: DeletionState
    progress: DeletionProgress | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class AccountInventory(BaseModel):
    """What the account held when it was locked: the counts reported as removed, and the sandboxes
    whose containers and volumes the verification must find gone (a retried step cannot tell)."""

    sessions_revoked: int = 0
    sandbox_ids: list[str] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)


class SandboxesDeleted(BaseModel):
    """Result of the sandbox step: which sandboxes went, and stray containers removed directly."""

    sandbox_ids: list[str] = Field(default_factory=list)
    orphans_removed: int = 0


class VerifyInput(BaseModel):
    """Whose traces to look for, including the volumes of sandboxes already deleted."""

    user_id: str
    sandbox_ids: list[str] = Field(default_factory=list)


class DeletionRecord(BaseModel):
    """The anonymized audit entry of a finished deletion (the id makes a retried write land once)."""

    event_id: str
    counts: dict[str, int] = Field(default_factory=dict)
