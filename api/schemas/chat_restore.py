"""Body of ``POST /api/v2/sandboxes/{sandbox_id}/chat/sessions/{session_id}/restore``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agentpod.domain.session_restore import SessionRestoreProgress
from api.schemas.base import ResponseBody


class ChatSessionRestoreOut(ResponseBody):
    """Where a session's restore into the sandbox's OpenCode stands."""

    session_id: str = Field(description="Our id of the session.")
    opencode_session_id: str
    state: Literal["present", "restored", "restoring"] = Field(
        description="`present`: OpenCode had it (nothing imported); `restored`: imported now, prompts work "
        "again; `restoring`: under way (202), follow `progress` or `GET .../chat/sync/status`."
    )
    progress: SessionRestoreProgress | None = Field(
        default=None, description="The sandbox's restore as last saved (202 only)."
    )
