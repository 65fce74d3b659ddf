"""Request and response bodies of ``/api/account``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from agentpod.domain.account import DELETION_PHRASE, DeletionState, DeletionStep
from api.schemas.auth import UserOut
from api.schemas.base import RequestBody, ResponseBody


class AccountCounts(ResponseBody):
    """How much the account holds."""

    sandboxes: int
    chat_sessions: int
    chat_messages: int
    providers: int
    opencode_files: int
    activity: int


class AccountOut(ResponseBody):
    """The caller's profile and what their account holds."""

    user: UserOut
    counts: AccountCounts


class AccountDeleteIn(RequestBody):
    """Confirmation that the caller means it."""

    confirmation: Annotated[str, StringConstraints(max_length=64)] = Field(
        description=f"Exactly `{DELETION_PHRASE}`.", examples=[DELETION_PHRASE]
    )


class DeletionAccepted(ResponseBody):
    """The deletion is under way; poll ``status_url`` (no token needed: the id is the credential)."""

    deletion_id: str
    status_url: str


class DeletionStepOut(ResponseBody):
    """One step of the deletion."""

    step: DeletionStep
    title: str
    state: str = Field(description="`done`, `running` or `pending`.")


class DeletionStatusOut(ResponseBody):
    """Where a deletion stands."""

    deletion_id: str
    state: DeletionState
    current_step: DeletionStep | None
    steps: list[DeletionStepOut]
    removed: dict[str, int] = Field(description="Rows, sandboxes and containers removed so far, by kind.")
    started_at: datetime | None
    finished_at: datetime | None
