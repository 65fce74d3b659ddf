"""Authenticated encryption of stored secrets (provider keys, MCP secrets) with the keyring.

Envelope: ``v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`` — AES-256-GCM, a random 96-bit nonce
per value, a 128-bit tag. The associated data binds the envelope header and a *context* naming the
row and field (``<user id>|<scope>|<field>``): a ciphertext copied to another user, provider or
field, a changed key id or a flipped bit all fail with :class:`DecryptionError`, never garbage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agentpod.security.keyring import Keyring

VERSION = "v1"
NONCE_BYTES = 12  # 96 bits: the size GCM is specified for
TAG_BYTES = 16
# Hints show the last four characters only when that leaves most of the secret hidden.
HINT_CHARS = 4
HINT_MIN_LENGTH = 12
_MAC_CHARS = 32  # 192 bits of a truncated HMAC-SHA256


class DecryptionError(ValueError):
    """A stored secret cannot be decrypted: malformed, unknown key id, or tampered / moved."""


def context(user_id: str, scope: str, field: str) -> str:
    """The associated data naming where a secret lives, e.g. ``<user>|openai|api_key``."""
    parts = (user_id, scope, field)
    if any(not part or "|" in part for part in parts):
        raise ValueError("context parts must be non-empty and must not contain '|'")
    return "|".join(parts)


def _aad(key_id: str, where: str) -> bytes:
    return f"{VERSION}:{key_id}|{where}".encode()


def encrypt(keyring: Keyring, plaintext: str, *, where: str) -> str:
    """Encrypt ``plaintext`` with the keyring's first key, bound to the context ``where``."""
    key_id, key = keyring.primary
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), _aad(key_id, where))
    return f"{VERSION}:{key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"


def key_id_of(envelope: str) -> str:
    """The id of the key that sealed ``envelope``."""
    return _split(envelope)[0]


def _split(envelope: str) -> tuple[str, bytes]:
    version, sep, rest = envelope.partition(":")
    key_id, sep2, encoded = rest.partition(":")
    if not sep or not sep2 or not key_id:
        raise DecryptionError("not an encrypted value (expected 'v1:<key id>:<data>')")
    if version != VERSION:
        raise DecryptionError(f"unsupported ciphertext version {version!r}")
    try:
        blob = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecryptionError("ciphertext is not valid base64url") from exc
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("ciphertext is truncated")
    return key_id, blob


def decrypt(keyring: Keyring, envelope: str, *, where: str) -> str:
    """Decrypt a value sealed for ``where``; raises :class:`DecryptionError` on any mismatch."""
    key_id, blob = _split(envelope)
    key = keyring.get(key_id)
    if key is None:
        raise DecryptionError(f"key {key_id!r} is not in the keyring (was it removed before `agentpod keys rotate`?)")
    try:
        plaintext = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(key_id, where))
    except InvalidTag:
        raise DecryptionError("ciphertext failed authentication (tampered, or copied from another row)") from None
    return plaintext.decode()


def is_current(keyring: Keyring, envelope: str) -> bool:
    """Whether ``envelope`` is sealed with the keyring's first key (nothing to rotate)."""
    return envelope.startswith(f"{VERSION}:{keyring.primary[0]}:")


def current_prefix(keyring: Keyring) -> str:
    """What every envelope sealed with the first key starts with (for finding the others in SQL)."""
    return f"{VERSION}:{keyring.primary[0]}:"


def reencrypt(keyring: Keyring, envelope: str, *, where: str) -> str:
    """``envelope`` sealed again with the first key (decrypting with whichever key sealed it)."""
    return encrypt(keyring, decrypt(keyring, envelope, where=where), where=where)


def hint(secret: str) -> str | None:
    """The last four characters of a long secret (for "sk-…abcd"), else None: a short one would show."""
    return secret[-HINT_CHARS:] if len(secret) >= HINT_MIN_LENGTH else None


def _mac_key(key: bytes, purpose: str) -> bytes:
    # A key per purpose, so a MAC can never be confused with anything else made with the same key.
    return hmac.new(key, f"agentpod mac key: {purpose}".encode(), hashlib.sha256).digest()


def _mac(key: bytes, purpose: str, message: str) -> str:
    digest = hmac.new(_mac_key(key, purpose), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:_MAC_CHARS]


def mac(keyring: Keyring, purpose: str, message: str) -> str:
    """An unforgeable tag of ``message`` (keyed with the first key) for unguessable ids."""
    return _mac(keyring.primary[1], purpose, message)


def macs(keyring: Keyring, purpose: str, message: str) -> list[str]:
    """:func:`mac` with every key of the keyring, the primary first (what a holder of an older tag may have)."""
    return [_mac(key, purpose, message) for _, key in keyring.keys]


def mac_matches(keyring: Keyring, purpose: str, message: str, tag: str) -> bool:
    """Whether ``tag`` was made by :func:`mac` with any key of the keyring (survives rotation)."""
    return any(hmac.compare_digest(_mac(key, purpose, message), tag) for _, key in keyring.keys)
