"""The encryption keyring: loaded from settings, validated, generated for dev mode only."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from agentpod.settings import Settings

log = logging.getLogger(__name__)

KEY_BYTES = 32  # AES-256
DEV_KEY_FILE = "dev-encryption-key"
# A random 32-byte key has ~30 distinct byte values; fewer than this means a typed or patterned key.
_MIN_DISTINCT_BYTES = 16


class KeyringError(ValueError):
    """The configured keyring is missing, malformed or weak."""


@dataclass(frozen=True)
class Keyring:
    """Ordered keys: the first encrypts, every key decrypts (so rotation never strands data)."""

    keys: tuple[tuple[str, bytes], ...]

    @property
    def primary(self) -> tuple[str, bytes]:
        """The (key id, key) new ciphertexts are made with."""
        return self.keys[0]

    def get(self, key_id: str) -> bytes | None:
        """The key with ``key_id``, if this keyring holds it."""
        return dict(self.keys).get(key_id)


def parse_key(entry: str) -> tuple[str, bytes]:
    """Parse one ``kid:base64key`` entry and reject weak keys with a message that says how to fix it."""
    key_id, sep, encoded = entry.partition(":")
    if not sep or not key_id or not key_id.replace("-", "").replace("_", "").isalnum():
        raise KeyringError(f"keyring entry must be 'kid:base64key' with an alphanumeric key id, got {key_id!r}")
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise KeyringError(f"key {key_id!r} is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise KeyringError(f"key {key_id!r} must decode to {KEY_BYTES} bytes, got {len(key)}")
    if len(set(key)) < _MIN_DISTINCT_BYTES:
        raise KeyringError(f"key {key_id!r} is too weak (low entropy): generate one with `agentpod keys generate`")
    return key_id, key


def generate_entry(key_id: str = "k1") -> str:
    """A new random keyring entry."""
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def load_keyring(settings: Settings) -> Keyring:
    """The keyring from settings; in dev mode a missing one is generated under the data directory."""
    entries = list(settings.encryption_keys)
    if not entries and settings.dev_mode:
        entries = [_dev_key_entry(settings.data_dir)]
    if not entries:
        raise KeyringError(
            "no encryption key configured: set AGENTPOD_ENCRYPTION_KEYS='k1:<base64 32 bytes>' "
            "(generate one with `agentpod keys generate`), or set AGENTPOD_DEV_MODE=1 for a local dev key"
        )
    keys = tuple(parse_key(entry) for entry in entries)
    if len({key_id for key_id, _ in keys}) != len(keys):
        raise KeyringError("keyring has duplicate key ids")
    return Keyring(keys)


def _dev_key_entry(data_dir: Path) -> str:
    path = data_dir / DEV_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    entry = generate_entry("dev1")
    # Created 0600 before writing so the key is never world-readable, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(entry + "\n")
    log.warning("dev mode: generated a local encryption key at %s (never use dev mode in production)", path)
    return entry
