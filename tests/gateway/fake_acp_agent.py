"""A scripted ACP agent over stdio for the gateway's tests: ``python fake_acp_agent.py``.

Each prompt is a command:

* ``env NAME``: replies ``NAME=<$NAME in this process's environment>``
* ``pid``: replies this process's id
* ``wait PATH``: streams ``waiting``, then replies ``done`` once PATH exists (``cancelled`` on session/cancel)
* anything else: replies ``echo: <text>``

Sessions are JSON files under ``$FAKE_ACP_STATE``, so a new process can ``session/load`` one (it
replays the conversation). A prompt to a session this process neither created nor loaded fails:
that shows whether the gateway re-attached the session after a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any, cast

from acp import (
    PROTOCOL_VERSION,
    Agent,
    RequestError,
    run_agent,
    update_agent_message_text,
    update_user_message_text,
)
from acp.interfaces import Client
from acp.schema import (
    AgentCapabilities,
    Implementation,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PromptResponse,
    TextContentBlock,
)


class FakeAgent:
    """The ACP agent side; the SDK calls these methods with the request's fields as keywords."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._client: Client | None = None
        self._attached: set[str] = set()
        self._cancelled: dict[str, asyncio.Event] = {}

    def on_connect(self, conn: Client) -> None:
        self._client = conn

    async def initialize(self, protocol_version: int, **kwargs: Any) -> InitializeResponse:
        return InitializeResponse(
            protocol_version=PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=True),
            agent_info=Implementation(name="fake-acp-agent", version="1.0"),
        )

    async def new_session(self, cwd: str, **kwargs: Any) -> NewSessionResponse:
        session_id = f"fake_{uuid.uuid4().hex[:12]}"
        self._save(session_id, [])
        self._attached.add(session_id)
        return NewSessionResponse(session_id=session_id)

    async def load_session(self, cwd: str, session_id: str, **kwargs: Any) -> LoadSessionResponse:
        path = self._path(session_id)
        if not path.exists():
            raise RequestError.resource_not_found(session_id)
        for role, text in json.loads(path.read_text()):
            update = update_user_message_text(text) if role == "user" else update_agent_message_text(text)
            await self._say(session_id, update)
        self._attached.add(session_id)
        return LoadSessionResponse()

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        if session_id not in self._attached:
            raise RequestError.invalid_params({"sessionId": f"{session_id} is not open in this process"})
        text = "".join(block.text for block in prompt if isinstance(block, TextContentBlock))
        command, _, argument = text.partition(" ")
        stop_reason = "end_turn"
        if command == "env":
            reply = f"{argument}={os.environ.get(argument)}"
        elif command == "pid":
            reply = str(os.getpid())
        elif command == "wait":
            cancelled = self._cancelled[session_id] = asyncio.Event()
            await self._say(session_id, update_agent_message_text("waiting "))
            while not Path(argument).exists() and not cancelled.is_set():
                await asyncio.sleep(0.02)
            reply = "cancelled" if cancelled.is_set() else "done"
            stop_reason = "cancelled" if cancelled.is_set() else "end_turn"
        else:
            reply = f"echo: {text}"
        await self._say(session_id, update_agent_message_text(reply))
        self._save(session_id, [*json.loads(self._path(session_id).read_text()), ["user", text], ["agent", reply]])
        return PromptResponse(stop_reason=stop_reason)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        if session_id in self._cancelled:
            self._cancelled[session_id].set()

    async def _say(self, session_id: str, update: Any) -> None:
        assert self._client is not None
        await self._client.session_update(session_id=session_id, update=update)

    def _path(self, session_id: str) -> Path:
        return self._state_dir / f"{session_id}.json"

    def _save(self, session_id: str, history: list[Any]) -> None:
        self._state_dir.mkdir(parents=True, exist_ok=True)
        self._path(session_id).write_text(json.dumps(history))


def main() -> None:
    agent = FakeAgent(Path(os.environ["FAKE_ACP_STATE"]))
    asyncio.run(run_agent(cast(Agent, agent)))


if __name__ == "__main__":
    main()
