"""What a sandbox's agent is given at start, as files for the container's secrets tmpfs.

The entrypoint points OpenCode at them: ``opencode.json`` is its config (``OPENCODE_CONFIG``), the
``config/`` directory its config dir (``OPENCODE_CONFIG_DIR``: custom agents in ``agent/*.md``, commands
in ``command/*.md``), and the user's AGENTS.md is named in the config's ``instructions``, so every
agent of the user follows it. ``gateway-agents.json`` tells the ACP gateway which agents it may start
(:mod:`agentpod.acp_agents`). Nothing here travels through env, labels or Temporal history.
"""

from __future__ import annotations

import json
from typing import Any

from agentpod.acp_agents import REGISTRY_FILE, gateway_registry
from agentpod.domain.secrets import AgentCredentials

SECRETS_DIR = "/run/agentpod"
CONFIG_DIR = "config"
INSTRUCTIONS_FILE = f"{CONFIG_DIR}/AGENTS.md"


def merge_config(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two OpenCode configs; the user's values win over the installation's."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        merged[key] = merge_config(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
    return merged


def agent_files(base_config: dict[str, Any], credentials: AgentCredentials) -> dict[str, bytes]:
    """Every file of the agent's configuration, by path inside the tmpfs."""
    config = merge_config(base_config, credentials.opencode_config or {})
    files: dict[str, bytes] = {}
    if credentials.instructions:
        files[INSTRUCTIONS_FILE] = credentials.instructions.encode()
        listed = config.get("instructions")
        # The user's instructions come after the installation's own (a list of paths or globs).
        config["instructions"] = [*(listed if isinstance(listed, list) else []), f"{SECRETS_DIR}/{INSTRUCTIONS_FILE}"]
    for path, content in credentials.config_files.items():
        files[f"{CONFIG_DIR}/{path}"] = content.encode()
    if config:
        files["opencode.json"] = json.dumps(config).encode()
    # Which ACP agents the gateway may start, each with its provider's key (see acp_agents).
    files[REGISTRY_FILE] = gateway_registry(credentials, config)
    return files
