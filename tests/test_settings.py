"""Settings: documented, read from the environment, defaulting to the embedded stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentpod.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = README.read_text()
    undocumented = [name for name in Settings.model_fields if f"AGENTPOD_{name.upper()}" not in readme]
    assert undocumented == []


def test_defaults_run_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'var' / 'agentpod.db'}"
    assert settings.temporal_address == "localhost:7233"
    assert settings.dev_mode is False  # production is the safe default: keys must be configured


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTPOD_DATABASE_URL", "postgresql+asyncpg://u:p@db/agentpod")
    monkeypatch.setenv("AGENTPOD_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1")
    monkeypatch.setenv("AGENTPOD_FLAVOR_IMAGES", '{"python": "agentpod-sandbox:py"}')
    settings = Settings()
    assert settings.resolved_database_url == "postgresql+asyncpg://u:p@db/agentpod"
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.168.1.1"]
    assert settings.image_for_flavor("python") == "agentpod-sandbox:py"
    assert settings.image_for_flavor("go") == settings.sandbox_image
