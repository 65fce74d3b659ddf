"""Channel names that publishers and subscribers in different modules (and processes) must agree on."""

from __future__ import annotations


def chat_channel(sandbox_id: str) -> str:
    """The channel a chat write transaction of ``sandbox_id`` notifies at commit (PostgreSQL)."""
    return f"chat:{sandbox_id}"
