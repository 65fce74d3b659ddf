"""The one Temporal client factory, shared by the API, the worker and the CLI.

Everything that talks to Temporal uses the pydantic data converter, so workflow inputs,
results, update payloads and saved histories all speak the same dialect.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from agentpod.settings import Settings

# Keyword search attributes every workflow of ours sets, so operators can filter in the Web UI.
SEARCH_ATTRIBUTES = ("AgentpodUserId", "AgentpodSandboxId", "AgentpodStatus")


async def connect(settings: Settings, *, lazy: bool = False) -> Client:
    """Connect to the configured Temporal namespace.

    ``lazy=True`` lets the API start while Temporal is still coming up; the first call connects.
    A worker needs an eager client.
    """
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        lazy=lazy,
    )
