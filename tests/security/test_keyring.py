"""The encryption keyring: refuse missing or weak keys outside dev mode; dev mode makes one."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from agentpod.security.keyring import KeyringError, generate_entry, load_keyring
from agentpod.settings import Settings


def _settings(tmp_path: Path, **kwargs: object) -> Settings:
    return Settings(data_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_production_without_a_key_refuses_with_instructions(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="AGENTPOD_ENCRYPTION_KEYS"):
        load_keyring(_settings(tmp_path, dev_mode=False))
    assert not any(tmp_path.iterdir()), "nothing may be generated outside dev mode"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("k1:" + base64.b64encode(b"short").decode(), "32 bytes"),
        ("k1:" + base64.b64encode(b"a" * 32).decode(), "weak"),
        ("k1:" + base64.b64encode(bytes(range(8)) * 4).decode(), "weak"),
        ("k1:not base64!!", "base64"),
        ("nokeyid", "kid:base64key"),
    ],
)
def test_weak_or_malformed_keys_are_refused(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        load_keyring(_settings(tmp_path, encryption_keys=[entry]))


def test_ordered_keyring_first_encrypts(tmp_path: Path) -> None:
    first, second = generate_entry("new"), generate_entry("old")
    keyring = load_keyring(_settings(tmp_path, encryption_keys=[first, second]))
    assert keyring.primary[0] == "new"
    assert keyring.get("old") is not None and keyring.get("missing") is None


def test_keyring_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTPOD_ENCRYPTION_KEYS", f"{generate_entry('a')}, {generate_entry('b')}")
    assert [kid for kid, _ in load_keyring(Settings(data_dir=tmp_path)).keys] == ["a", "b"]


def test_dev_mode_generates_a_private_key_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = load_keyring(_settings(tmp_path, dev_mode=True))
    assert "generated a local encryption key" in caplog.text
    key_file = next(tmp_path.iterdir())
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_keyring(_settings(tmp_path, dev_mode=True)) == first  # reused, not regenerated
