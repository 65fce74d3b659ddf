"""The ACP agents a sandbox runs behind its gateway, and the registry file the control plane writes for it.

The image carries three agents (see ``images/README.md``): OpenCode's own ``opencode acp``, Claude Code
through ``claude-code-acp`` and Codex through ``codex-acp``. The gateway learns from
``/run/agentpod/gateway-agents.json`` (the secrets tmpfs, written with the rest of the agent's config)
which of them it may start, with which command line and environment. Each agent's environment carries the
user's key for its provider from the encrypted store, and the provider's endpoint when the installation's
or the user's OpenCode config names one (``provider.<id>.options.baseURL``): one place says where a
provider lives, for OpenCode and for the agents alike. Keys reach only that agent's process: never the
container's environment, labels, ``docker inspect``, Temporal history or logs.

An agent whose provider has no key is left out of the file and reported unavailable, with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentpod.domain.secrets import AgentCredentials

REGISTRY_FILE = "gateway-agents.json"
# Codex's provider entry: its built-in OpenAI provider cannot be pointed elsewhere, ours can.
CODEX_PROVIDER = "agentpod-openai"
OPENAI_URL = "https://api.openai.com/v1"
# The container is the sandbox (Codex's own Landlock/seccomp sandbox cannot run unprivileged in it, and
# every command would fail), and every command Codex does not know to be read-only asks the user first.
CODEX_POLICY = ("sandbox_mode=danger-full-access", "approval_policy=untrusted")


@dataclass(frozen=True)
class AcpAgent:
    """One agent the sandbox image carries."""

    id: str
    name: str
    command: str
    args: tuple[str, ...] = ()
    # The provider (as in ``PUT /api/users/me/providers/{provider}``) whose key the agent needs; None:
    # the agent reads OpenCode's own config (keys included) like the OpenCode server does.
    provider: str | None = None
    provider_name: str = ""
    key_env: str = ""
    # Fixed environment: offline switches and where the agent keeps its state (the /data volume).
    env: Mapping[str, str] = field(default_factory=dict)
    # Sessions one agent process may hold open before the gateway restarts it when idle (None: no limit).
    max_open_sessions: int | None = None


OPENCODE = AcpAgent(id="opencode", name="OpenCode", command="opencode", args=("acp",))
CLAUDE_CODE = AcpAgent(
    id="claude-code",
    name="Claude Code",
    command="claude-code-acp",
    provider="anthropic",
    provider_name="Anthropic",
    key_env="ANTHROPIC_API_KEY",
    # The adapter starts a Claude Code process (~230 MB) for every session it opens and never ends one.
    max_open_sessions=2,
    env={
        # No telemetry, update checks or error reports: a sandbox reaches only its model provider.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        # Without it Claude Code asks api.anthropic.com about "fast mode" whatever the base URL says.
        "CLAUDE_CODE_DISABLE_FAST_MODE": "1",
    },
)
CODEX = AcpAgent(
    id="codex",
    name="Codex",
    command="codex-acp",
    provider="openai",
    provider_name="OpenAI",
    key_env="OPENAI_API_KEY",
    # Its state goes to ~/.codex (HOME is /data): a CODEX_HOME it would not create itself.
)
ACP_AGENTS: tuple[AcpAgent, ...] = (OPENCODE, CLAUDE_CODE, CODEX)
BY_ID = {agent.id: agent for agent in ACP_AGENTS}


def _provider_options(config: Mapping[str, Any], provider: str) -> Mapping[str, Any]:
    providers = config.get("provider")
    entry = providers.get(provider) if isinstance(providers, Mapping) else None
    options = entry.get("options") if isinstance(entry, Mapping) else None
    return options if isinstance(options, Mapping) else {}


def _base_url(config: Mapping[str, Any], provider: str) -> str | None:
    url = _provider_options(config, provider).get("baseURL")
    return url.rstrip("/") if isinstance(url, str) and url.strip() else None


def _config_key(config: Mapping[str, Any], provider: str) -> str | None:
    key = _provider_options(config, provider).get("apiKey")
    return key if isinstance(key, str) and key else None


def unavailable_reason(agent: AcpAgent, provider_ids: Sequence[str], config: Mapping[str, Any]) -> str | None:
    """Why ``agent`` cannot run for a user with keys for ``provider_ids`` and this (merged) OpenCode config;
    None when it can."""
    if agent.provider is None or agent.provider in provider_ids or _config_key(config, agent.provider):
        return None
    return (
        f"{agent.name} needs an {agent.provider_name} API key: add one with "
        f"PUT /api/users/me/providers/{agent.provider}"
    )


def _environment(agent: AcpAgent, key: str, config: Mapping[str, Any]) -> dict[str, str]:
    env = {**agent.env, agent.key_env: key}
    url = _base_url(config, agent.provider or "")
    if agent is CLAUDE_CODE and url:
        # OpenCode's Anthropic baseURL ends in /v1; Claude Code adds the /v1 itself.
        env["ANTHROPIC_BASE_URL"] = url.removesuffix("/v1")
    return env


def _arguments(agent: AcpAgent, config: Mapping[str, Any]) -> list[str]:
    args = list(agent.args)
    if agent is CODEX:
        table = f"model_providers.{CODEX_PROVIDER}"
        for setting in (
            f"model_provider={CODEX_PROVIDER}",
            f"{table}.name=OpenAI",
            f"{table}.base_url={_base_url(config, 'openai') or OPENAI_URL}",
            f"{table}.env_key={CODEX.key_env}",
            f"{table}.wire_api=responses",
            *CODEX_POLICY,
        ):
            args += ["-c", setting]
    return args


def gateway_registry(credentials: AgentCredentials, config: Mapping[str, Any]) -> bytes:
    """``gateway-agents.json``: every agent that can run for this user, with its command line and the
    environment its process alone gets (its provider's key and endpoint). ``config``: the merged OpenCode
    config the sandbox's OpenCode gets (installation's and user's)."""
    agents: dict[str, Any] = {}
    keys = {provider: auth.key for provider, auth in credentials.providers.items()}
    for agent in ACP_AGENTS:
        entry: dict[str, Any] = {"name": agent.name, "command": agent.command, "args": _arguments(agent, config)}
        if agent.max_open_sessions is not None:
            entry["max_open_sessions"] = agent.max_open_sessions
        if agent.provider is not None:
            key = keys.get(agent.provider) or _config_key(config, agent.provider)
            if not key:
                continue
            entry["env"] = _environment(agent, key, config)
        agents[agent.id] = entry
    return json.dumps({"agents": agents}).encode()
