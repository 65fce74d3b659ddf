"""The bearer secret of a sandbox's ACP gateway, derived from the keyring (nothing extra to store).

``HMAC(keyring key, "acp-gateway" | sandbox id)``: unguessable without the keyring, the same in the API
and the worker, and different for every sandbox. It is written into the container's tmpfs at each
start, so a key rotation reaches a sandbox at its next start; until then :func:`gateway_secrets` also
yields the tags of the older keys, which clients try in turn.
"""

from __future__ import annotations

from agentpod.security.encryption import mac, macs
from agentpod.security.keyring import Keyring

_PURPOSE = "acp-gateway"


def gateway_secret(keyring: Keyring, sandbox_id: str) -> str:
    """The secret delivered to the sandbox now (made with the primary key)."""
    return mac(keyring, _PURPOSE, sandbox_id)


def gateway_secrets(keyring: Keyring, sandbox_id: str) -> list[str]:
    """Every secret the sandbox may hold: the current one first, then those of older keys."""
    return macs(keyring, _PURPOSE, sandbox_id)
