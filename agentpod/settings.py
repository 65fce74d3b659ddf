"""Configuration from the environment (prefix ``AGENTPOD_``), read once per process.

Every knob an operator may turn lives here, with a default that runs the embedded stack
(SQLite under ``./var``, the Temporal dev server on localhost). The README's configuration
table is generated from the field descriptions below, so keep them short and true.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agentpod.domain.sandbox import DEFAULT_BLOCKED_NETWORKS, DEFAULT_SANDBOX_NETWORK


def default_password_workers() -> int:
    """Threads hashing passwords by default: one per CPU, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


class Settings(BaseSettings):
    """All runtime configuration. Construct through :func:`get_settings` in application code."""

    model_config = SettingsConfigDict(env_prefix="AGENTPOD_", env_file=".env", extra="ignore")

    dev_mode: bool = Field(
        False,
        description="Dev mode: generates a local encryption key in the data directory if none is set.",
    )
    data_dir: Path = Field(Path("var"), description="Directory for the embedded database, dev keys and logs.")
    database_url: str = Field(
        "",
        description="SQLAlchemy async URL. Empty means a SQLite file `agentpod.db` in the data directory; "
        "use `postgresql+asyncpg://user:pass@host/db` to scale out.",
    )

    temporal_address: str = Field("localhost:7233", description="Temporal frontend host:port.")
    temporal_namespace: str = Field("default", description="Temporal namespace.")
    temporal_task_queue: str = Field("agentpod", description="Task queue the worker polls.")
    temporal_ui_port: int = Field(8233, description="Port of the Temporal Web UI started by `agentpod dev`.")
    worker_max_activities: int = Field(
        2000,
        ge=10,
        description="Activities one worker runs at once. Every running sandbox holds two for as long as it "
        "runs (its OpenCode and ACP chat streams), so this caps the sandboxes a worker mirrors (about half).",
    )

    encryption_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Ordered keyring `kid:base64key,kid2:base64key` (32-byte AES-256 keys). "
        "The first key encrypts; every key decrypts.",
    )

    docker_host: str = Field("", description="Docker engine URL; empty uses the environment's default socket.")
    docker_network: str = Field(
        DEFAULT_SANDBOX_NETWORK,
        description="Docker network sandboxes join; created as a bridge with traffic between containers disabled "
        "(an existing network is used only if it has that setting).",
    )
    sandbox_firewall: Literal["enforce", "off"] = Field(
        "enforce",
        description="`enforce`: keep host firewall rules that stop sandboxes reaching the host and private "
        "networks (applied through the Docker engine); `off`: none (only for a machine trusted with every "
        "sandbox's code).",
    )
    sandbox_host_services: dict[str, int] = Field(
        default_factory=dict,
        description='Services on the Docker host sandboxes may reach, JSON name → TCP port, e.g. `{"llm": 11434}`.',
    )
    sandbox_blocked_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_BLOCKED_NETWORKS),
        description="Comma-separated IPv4 CIDRs sandboxes may not reach through the host (private, shared, "
        "link-local by default); the open internet stays reachable.",
    )
    sandbox_image: str = Field("agentpod-sandbox:dev", description="Image used for flavors without their own.")
    flavor_images: dict[str, str] = Field(
        default_factory=dict,
        description='Flavor id to image, JSON, e.g. `{"python": "agentpod-sandbox:py"}`.',
    )
    agent_base_config: dict[str, Any] = Field(
        default_factory=dict,
        description="OpenCode config (JSON) every sandbox's agent starts from; the user's own config is merged on top.",
    )
    public_domain: str = Field("localhost", description="Base domain of sandbox URLs.")
    max_sandboxes_per_user: int = Field(
        10, ge=1, description="Sandboxes one user may have; one being deleted counts until its deletion finishes."
    )
    max_sandboxes_per_tier: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description='Resource tier id to the most sandboxes one user may have on it, JSON, e.g. `{"power": 1}`; '
        "unlisted tiers have only the overall limit.",
    )
    sandbox_drift_check_seconds: float = Field(
        60.0, gt=0, description="How often each running sandbox's workflow checks its container still runs."
    )
    mirror_reconcile_minutes: int = Field(
        5,
        ge=1,
        description="How often the `mirror-reconcile` schedule restarts the chat mirrors of running sandboxes "
        "that have none (a pass also runs at every worker start).",
    )
    session_restore_concurrency: int = Field(
        2,
        ge=1,
        le=8,
        description="Sessions one sandbox's restore imports at once, at most its tier's CPUs (each is an "
        "`opencode import` process in the container, one to a few CPU-seconds).",
    )

    api_host: str = Field("127.0.0.1", description="Interface the API binds to.")
    api_port: int = Field(8000, description="Port the API listens on.")
    password_workers: int = Field(
        default_factory=default_password_workers,
        ge=1,
        description="Threads that hash and check passwords (argon2, 64 MiB each while busy); more sign-ins "
        "at once wait for one. Default: one per CPU, at most 4.",
    )
    auth_token_ttl_hours: int = Field(24 * 30, ge=1, description="Lifetime of a bearer token, in hours.")
    max_request_bytes: int = Field(1_048_576, ge=1024, description="Largest accepted request body, in bytes.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated proxy IPs/CIDRs whose X-Forwarded-For is believed."
    )

    sse_heartbeat_seconds: float = Field(
        15.0, gt=0, description="Idle seconds between keep-alive comments on event streams (SSE)."
    )
    max_streams_per_user: int = Field(
        16,
        ge=1,
        description="Live event streams (chat, preferences) one account may hold open at once, per API process; "
        "one more gets 429 `too_many_streams`.",
    )

    archival_hour: int = Field(3, ge=0, le=23, description="Hour of the daily activity-log archival run.")
    archival_timezone: str = Field("UTC", description="IANA time zone of the archival hour.")
    activity_retention_days: int = Field(90, ge=1, description="Days activity rows stay before archival.")

    @field_validator("encryption_keys", "trusted_proxies", "sandbox_blocked_networks", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        # Environment variables are flat strings; a comma list reads better than JSON there.
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'agentpod.db').resolve()}"

    def image_for_flavor(self, flavor_id: str) -> str:
        """The container image a flavor runs on."""
        return self.flavor_images.get(flavor_id, self.sandbox_image)


@lru_cache
def get_settings() -> Settings:
    """The process's settings (cached: the environment is read once)."""
    return Settings()
