"""Agent configuration and the environment an agent process gets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from agentpod_gateway.agents import child_environment
from agentpod_gateway.config import DEFAULT_AGENTS, load_agents
from pydantic import ValidationError


def test_builtin_agents_are_opencode_acp() -> None:
    assert load_agents(None) == DEFAULT_AGENTS
    opencode = DEFAULT_AGENTS["opencode"]
    assert (opencode.command, opencode.args) == ("opencode", ("acp",))


def test_agents_file_adds_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(
        json.dumps(
            {
                "agents": {
                    "opencode": {"command": "/opt/opencode", "args": ["acp", "--print-logs"], "env": {"A": "1"}},
                    "other-agent": {"name": "Other", "command": "other", "args": ["--acp"]},
                }
            }
        )
    )
    agents = load_agents(path)
    assert agents["opencode"].command == "/opt/opencode" and agents["opencode"].env == {"A": "1"}
    assert agents["other-agent"].display_name == "Other" and agents["other-agent"].args == ("--acp",)


@pytest.mark.parametrize(
    "body",
    [
        {"agents": {"Bad Id": {"command": "x"}}},
        {"agents": {"a": {"command": ""}}},
        {"agents": {"a": {"command": "x", "unknown": 1}}},
        {"agent": {}},
    ],
)
def test_bad_agents_files_are_rejected(tmp_path: Path, body: dict[str, object]) -> None:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ValidationError):
        load_agents(path)


def test_frozen_gateway_gives_agents_the_system_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/local/lib/agentpod-gateway/_internal")
    monkeypatch.setenv("_PYI_ARCHIVE_FILE", "/usr/local/lib/agentpod-gateway/agentpod-gateway")
    monkeypatch.setenv("KEEP_ME", "1")
    assert child_environment()["LD_LIBRARY_PATH"].endswith("_internal")  # not frozen: untouched
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    env = child_environment()
    assert "LD_LIBRARY_PATH" not in env and "_PYI_ARCHIVE_FILE" not in env and env["KEEP_ME"] == "1"
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/opt/lib")
    assert child_environment()["LD_LIBRARY_PATH"] == "/opt/lib"
