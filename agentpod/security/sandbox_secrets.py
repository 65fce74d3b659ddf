"""Per-sandbox secrets the control plane shares with a sandbox's servers, derived from the keyring.

``HMAC(keyring key, purpose | sandbox id)``: unguessable without the keyring, the same in the API and
the worker, different for every sandbox and purpose, and nothing extra to store. Both are written into
the container's tmpfs at each start, so a key rotation reaches a sandbox at its next start; until then
the ``*_secrets`` functions also yield the values of the older keys, which clients try in turn.

* the ACP gateway's bearer secret (purpose ``acp-gateway``);
* OpenCode's server password (purpose ``opencode-server``): ``opencode serve`` answers 401 to any
  request without it, so a neighbour that reaches the port still gets nothing.
"""

from __future__ import annotations

from agentpod.security.encryption import mac, macs
from agentpod.security.keyring import Keyring

_GATEWAY = "acp-gateway"
_OPENCODE = "opencode-server"


def gateway_secret(keyring: Keyring, sandbox_id: str) -> str:
    """The gateway secret delivered to the sandbox now (made with the primary key)."""
    return mac(keyring, _GATEWAY, sandbox_id)


def gateway_secrets(keyring: Keyring, sandbox_id: str) -> list[str]:
    """Every gateway secret the sandbox may hold: the current one first, then those of older keys."""
    return macs(keyring, _GATEWAY, sandbox_id)


def opencode_password(keyring: Keyring, sandbox_id: str) -> str:
    """The OpenCode server password delivered to the sandbox now."""
    return mac(keyring, _OPENCODE, sandbox_id)


def opencode_passwords(keyring: Keyring, sandbox_id: str) -> list[str]:
    """Every OpenCode password the sandbox may hold: the current one first, then older keys' ones."""
    return macs(keyring, _OPENCODE, sandbox_id)
