"""The gateway's agent registry the control plane writes: which agents run, with which key and endpoint."""

from __future__ import annotations

import json
from typing import Any

from agentpod.acp_agents import CLAUDE_CODE, CODEX, OPENCODE, gateway_registry, unavailable_reason
from agentpod.agent_config import agent_files
from agentpod.domain.secrets import AgentCredentials, ProviderAuth

ANTHROPIC_KEY = "sk-ant-test-0123456789"
OPENAI_KEY = "sk-openai-test-0123456789"


def registry(credentials: AgentCredentials, config: dict[str, Any] | None = None) -> dict[str, Any]:
    agents: dict[str, Any] = json.loads(gateway_registry(credentials, config or {}))["agents"]
    return agents


def keys(**providers: str) -> AgentCredentials:
    return AgentCredentials(providers={name: ProviderAuth(key=key) for name, key in providers.items()})


def test_without_keys_only_opencode_runs_and_the_others_say_which_key_they_need() -> None:
    assert list(registry(AgentCredentials())) == ["opencode"]
    assert unavailable_reason(OPENCODE, [], {}) is None
    reason = unavailable_reason(CLAUDE_CODE, ["openai"], {})
    assert reason is not None and "Anthropic" in reason and "/api/users/me/providers/anthropic" in reason
    assert unavailable_reason(CODEX, ["openai"], {}) is None


def test_each_agent_gets_only_its_own_providers_key_and_stays_offline() -> None:
    agents = registry(keys(anthropic=ANTHROPIC_KEY, openai=OPENAI_KEY))
    assert set(agents) == {"opencode", "claude-code", "codex"}
    claude, codex = agents["claude-code"], agents["codex"]
    assert claude["command"] == "claude-code-acp" and claude["env"]["ANTHROPIC_API_KEY"] == ANTHROPIC_KEY
    assert OPENAI_KEY not in json.dumps(claude) and ANTHROPIC_KEY not in json.dumps(codex)
    assert claude["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert codex["command"] == "codex-acp" and codex["env"]["OPENAI_API_KEY"] == OPENAI_KEY
    settings = set(codex["args"][1::2])
    assert "model_providers.agentpod-openai.base_url=https://api.openai.com/v1" in settings  # none configured
    # Commands run in the container (Codex's own sandbox cannot), each one asked for first.
    assert {"sandbox_mode=danger-full-access", "approval_policy=untrusted"} <= settings
    assert "env" not in agents["opencode"]  # OpenCode reads its config (keys included) like the server


def test_the_opencode_config_says_where_each_provider_lives() -> None:
    config = {
        "provider": {
            "anthropic": {"options": {"baseURL": "http://10.0.0.1:9001/v1/"}},
            "openai": {"options": {"baseURL": "http://10.0.0.1:9002/v1", "apiKey": OPENAI_KEY}},
        }
    }
    agents = registry(keys(anthropic=ANTHROPIC_KEY), config)
    # Claude Code appends /v1 itself; OpenCode's baseURL carries it.
    assert agents["claude-code"]["env"]["ANTHROPIC_BASE_URL"] == "http://10.0.0.1:9001"
    codex = agents["codex"]  # its key from the config: an installation-wide key counts
    assert codex["env"]["OPENAI_API_KEY"] == OPENAI_KEY
    settings = set(codex["args"][1::2])
    assert "model_providers.agentpod-openai.base_url=http://10.0.0.1:9002/v1" in settings
    assert "model_provider=agentpod-openai" in settings
    assert unavailable_reason(CODEX, [], config) is None


def test_the_registry_travels_with_the_agents_other_files() -> None:
    files = agent_files({}, keys(anthropic=ANTHROPIC_KEY))
    assert set(json.loads(files["gateway-agents.json"])["agents"]) == {"opencode", "claude-code"}
