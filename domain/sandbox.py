"""Sandbox types shared by the API, the sandbox workflow and its activities."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

CONTAINER_PREFIX = "agentpod"
OPENCODE_PORT = 4096
ACP_GATEWAY_PORT = 4097
LABEL_PREFIX = "agentpod."


class SandboxStatus(StrEnum):
    """Observed state, as stored on the row and shown to the user."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


class DesiredState(StrEnum):
    """What the user (or operator) last asked for."""

    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


def container_name(sandbox_id: str) -> str:
    """Docker name of a sandbox's container (unique: Docker refuses a second one)."""
    return f"{CONTAINER_PREFIX}-{sandbox_id}"


def volume_names(sandbox_id: str) -> tuple[str, str]:
    """(workspace volume, agent data volume): the agent's store survives container recreation."""
    return f"{CONTAINER_PREFIX}-{sandbox_id}-workspace", f"{CONTAINER_PREFIX}-{sandbox_id}-data"


class ContainerSpec(BaseModel):
    """Everything needed to (re)create a sandbox's container, derived from its database row."""

    sandbox_id: str
    user_id: str
    name: str
    slug: str
    image: str
    cpu_cores: float = Field(gt=0)
    memory_mb: int = Field(gt=0)
    pids_limit: int = Field(gt=0)
    network: str = "bridge"
    repo_name: str
    github_url: str | None = None
    flavor_id: str
    resource_tier_id: str
    # addon id -> container port to publish (code-server 8080, vnc 6080)
    addon_ports: dict[str, int] = Field(default_factory=dict)


class ContainerState(BaseModel):
    """What Docker says about a sandbox's container right now."""

    exists: bool
    running: bool = False
    container_id: str | None = None
    docker_status: str | None = None  # created / running / exited / dead / ...
    spec_hash: str | None = None  # the hash label of the spec it was created from
    # container port -> host port on the loopback interface
    host_ports: dict[int, int] = Field(default_factory=dict)


class SandboxUrls(BaseModel):
    """The four URLs stored on the row."""

    opencode_url: str | None = None
    acp_gateway_url: str | None = None
    code_server_url: str | None = None
    vnc_url: str | None = None
