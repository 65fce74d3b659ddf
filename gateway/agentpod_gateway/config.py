"""Which ACP agents the gateway can start, and how.

The built-in list has ``opencode`` (``opencode acp``). A JSON file adds agents or replaces built-in
ones by id::

    {"agents": {"opencode": {"command": "opencode", "args": ["acp"], "env": {"OPENCODE_LOG_LEVEL": "WARN"}},
                "my-agent": {"name": "My agent", "command": "/usr/local/bin/my-agent", "args": ["--acp"]}}}

``env`` is added to the gateway's own environment for that agent's process only. ``max_open_sessions``:
an idle process that opened more sessions is restarted (for agents that keep a whole process for each
session they open). The gateway follows the file while it runs (see :mod:`agentpod_gateway.watch`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

_AGENT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class AgentSpec(BaseModel):
    """How to start one ACP agent over stdio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str = ""
    command: str = Field(min_length=1)
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    # Sessions one process may hold open before it is restarted when idle (None: no limit). For agents
    # that keep a whole process per reopened session (Claude Code: ~230 MB each).
    max_open_sessions: int | None = Field(default=None, ge=1)

    @field_validator("id")
    @classmethod
    def _plain_id(cls, value: str) -> str:
        if not _AGENT_ID.match(value):
            raise ValueError("agent ids are lower-case letters, digits, '.', '_' or '-'")
        return value

    @property
    def display_name(self) -> str:
        return self.name or self.id

    def same_launch(self, other: AgentSpec) -> bool:
        """Whether both start the same process (command, args and env; the name does not matter)."""
        return (self.command, self.args, self.env) == (other.command, other.args, other.env)


DEFAULT_AGENTS: dict[str, AgentSpec] = {
    "opencode": AgentSpec(id="opencode", name="OpenCode", command="opencode", args=("acp",)),
}


class _AgentEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    max_open_sessions: int | None = Field(default=None, ge=1)


class _AgentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: dict[str, _AgentEntry]


def load_agents(path: Path | None) -> dict[str, AgentSpec]:
    """The built-in agents, overridden and extended by ``path`` when given."""
    agents = dict(DEFAULT_AGENTS)
    if path is None:
        return agents
    parsed = _AgentsFile.model_validate(json.loads(path.read_text()))
    for agent_id, entry in parsed.agents.items():
        agents[agent_id] = AgentSpec(
            id=agent_id,
            name=entry.name,
            command=entry.command,
            args=tuple(entry.args),
            env=entry.env,
            max_open_sessions=entry.max_open_sessions,
        )
    return agents
