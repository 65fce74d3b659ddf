"""AES-256-GCM envelopes: bound to their row, versioned, key-labelled, rotatable, loud when wrong."""

from __future__ import annotations

import base64

import pytest

from agentpod.security.encryption import (
    DecryptionError,
    context,
    decrypt,
    encrypt,
    hint,
    is_current,
    key_id_of,
    mac,
    mac_matches,
    reencrypt,
)
from agentpod.security.keyring import Keyring, generate_entry, parse_key

K1 = Keyring((parse_key(generate_entry("k1")),))
K2 = Keyring((parse_key(generate_entry("k2")),))
ROTATED = Keyring((K2.keys[0], K1.keys[0]))  # k2 first (encrypts), k1 still decrypts
HERE = context("user-1", "openai", "api_key")
SECRET = "sk-test-0123456789abcdef"


def _flip(envelope: str, index: int) -> str:
    prefix, _, data = envelope.rpartition(":")
    blob = bytearray(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    blob[index] ^= 0x01
    return f"{prefix}:{base64.urlsafe_b64encode(bytes(blob)).decode().rstrip('=')}"


def test_round_trip_and_format() -> None:
    envelope = encrypt(K1, SECRET, where=HERE)
    version, key_id, data = envelope.split(":")
    assert (version, key_id) == ("v1", "k1")
    blob = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    assert len(blob) == 12 + len(SECRET) + 16  # nonce, ciphertext, tag
    assert SECRET not in envelope
    assert decrypt(K1, envelope, where=HERE) == SECRET
    assert decrypt(K1, encrypt(K1, "", where=HERE), where=HERE) == ""


def test_every_encryption_uses_a_fresh_nonce() -> None:
    first, second = encrypt(K1, SECRET, where=HERE), encrypt(K1, SECRET, where=HERE)
    assert first != second
    assert first.split(":")[2][:16] != second.split(":")[2][:16]


@pytest.mark.parametrize(
    "moved_to",
    [
        context("user-2", "openai", "api_key"),  # another user's row
        context("user-1", "anthropic", "api_key"),  # another provider of the same user
        context("user-1", "openai", "refresh_token"),  # another field of the same row
    ],
)
def test_a_ciphertext_moved_to_another_row_fails_loudly(moved_to: str) -> None:
    envelope = encrypt(K1, SECRET, where=HERE)
    with pytest.raises(DecryptionError, match="authentication"):
        decrypt(K1, envelope, where=moved_to)


@pytest.mark.parametrize("index", [0, 11, 12, -1])  # nonce, ciphertext, tag
def test_a_tampered_ciphertext_fails_loudly(index: int) -> None:
    with pytest.raises(DecryptionError, match="authentication"):
        decrypt(K1, _flip(encrypt(K1, SECRET, where=HERE), index), where=HERE)


def test_a_relabelled_key_id_fails_even_when_that_key_exists() -> None:
    envelope = encrypt(ROTATED, SECRET, where=HERE)  # sealed with k2
    relabelled = envelope.replace("v1:k2:", "v1:k1:")
    with pytest.raises(DecryptionError):
        decrypt(ROTATED, relabelled, where=HERE)


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        ("sk-plaintext", "not an encrypted value"),
        ("v2:k1:AAAA", "version"),
        ("v1:k1:!!!", "base64"),
        ("v1:k1:AAAA", "truncated"),
    ],
)
def test_malformed_values_fail_with_a_reason(envelope: str, message: str) -> None:
    with pytest.raises(DecryptionError, match=message):
        decrypt(K1, envelope, where=HERE)


def test_an_unknown_key_id_names_the_key() -> None:
    with pytest.raises(DecryptionError, match="'k2' is not in the keyring"):
        decrypt(K1, encrypt(K2, SECRET, where=HERE), where=HERE)


def test_rotation_round_trips() -> None:
    old = encrypt(K1, SECRET, where=HERE)
    assert decrypt(ROTATED, old, where=HERE) == SECRET  # old values keep working during rotation
    assert not is_current(ROTATED, old)
    new = reencrypt(ROTATED, old, where=HERE)
    assert (key_id_of(new), is_current(ROTATED, new)) == ("k2", True)
    assert decrypt(ROTATED, new, where=HERE) == decrypt(K2, new, where=HERE) == SECRET
    with pytest.raises(DecryptionError):
        decrypt(K1, new, where=HERE)  # k1 alone can no longer read it


def test_context_parts_cannot_smuggle_separators() -> None:
    with pytest.raises(ValueError, match="'\\|'"):
        context("user|1", "openai", "api_key")
    with pytest.raises(ValueError):
        context("", "openai", "api_key")


def test_hints_show_the_last_four_of_long_secrets_only() -> None:
    assert hint(SECRET) == "cdef"
    assert hint("short-key") is None


def test_macs_verify_with_any_key_and_only_for_their_purpose() -> None:
    tag = mac(K1, "deletion", "user-1")
    assert mac_matches(K1, "deletion", "user-1", tag)
    assert mac_matches(ROTATED, "deletion", "user-1", tag)  # still valid after a rotation
    assert not mac_matches(K1, "deletion", "user-2", tag)
    assert not mac_matches(K1, "other", "user-1", tag)
    assert not mac_matches(K2, "deletion", "user-1", tag)
