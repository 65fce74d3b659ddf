"""Bodies of the ACP endpoints (``/api/v2/sandboxes/{sandbox_id}/acp``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from api.schemas.base import RequestBody, ResponseBody
from api.schemas.chat import PromptText

_ID = r"^[A-Za-z0-9._:-]+$"


class AcpAgentOut(ResponseBody):
    """An agent of the sandbox: whether it can run for you, and what its process is doing."""

    id: str
    name: str | None = None
    available: bool = Field(True, description="False when the agent cannot run for you; `unavailable_reason` says why.")
    unavailable_reason: str | None = None
    provider: str | None = Field(None, description="The provider whose API key the agent uses (None: OpenCode's).")
    state: str = Field(
        description="`stopped`, `starting`, `running`, `exited` or `failed` (`stopped` while the sandbox is not "
        "running)."
    )
    error: str | None = None
    load_session: bool | None = Field(
        None,
        description="Whether the agent reloads a conversation after a restart of the agent or the gateway "
        "(ACP `session/load`); None until it has run once.",
    )


class AcpAgentList(ResponseBody):
    """The agents of a sandbox."""

    agents: list[AcpAgentOut]


class AcpSessionCreate(RequestBody):
    """Which agent the new conversation is with."""

    agent_id: Annotated[str, Field(min_length=1, max_length=64, pattern=_ID)]


class AcpPrompt(RequestBody):
    """A prompt for the agent, sent as typed (whitespace kept)."""

    model_config = ConfigDict(str_strip_whitespace=False)

    text: PromptText


class AcpTurnAccepted(ResponseBody):
    """The turn runs in the background; the chat API (and its stream) shows the reply as it is mirrored."""

    session_id: str
    turn_id: str


class AcpPermissionOut(ResponseBody):
    """A tool call waiting for the user's decision (never approved automatically)."""

    request_id: str
    session_id: str | None = Field(description="Our chat session id (None if the sync has not seen it yet).")
    acp_session_id: str
    agent_id: str | None
    tool_call: dict[str, Any]
    options: list[dict[str, Any]] = Field(description="ACP options: `optionId`, `name`, `kind`.")


class AcpPermissionList(ResponseBody):
    """The permission requests still waiting in a sandbox."""

    permissions: list[AcpPermissionOut]


class AcpPermissionAnswer(RequestBody):
    """The option the user picked (one of the request's ``options[].optionId``)."""

    option_id: Annotated[str, Field(min_length=1, max_length=128, pattern=_ID)]


class AcpPermissionAnswered(ResponseBody):
    """The agent has the answer."""

    request_id: str
    option_id: str
