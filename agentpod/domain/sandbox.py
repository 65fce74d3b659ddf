"""Sandbox types shared by the API, the sandbox workflow and its activities."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

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


class SandboxTransition(StrEnum):
    """What a caller may ask of a sandbox; each value is the name of the ``SandboxWorkflow`` update that
    carries it (``workflows.sandbox_client`` sends the update through its typed handle)."""

    START = "start"
    STOP = "stop"
    RECONFIGURE = "reconfigure"
    DELETE = "delete"


def container_name(sandbox_id: str) -> str:
    """Docker name of a sandbox's container (unique: Docker refuses a second one)."""
    return f"{CONTAINER_PREFIX}-{sandbox_id}"


def volume_names(sandbox_id: str) -> tuple[str, str]:
    """(workspace volume, agent data volume): the agent's store survives container recreation."""
    return f"{CONTAINER_PREFIX}-{sandbox_id}-workspace", f"{CONTAINER_PREFIX}-{sandbox_id}-data"


# The Docker network sandboxes join (setting AGENTPOD_DOCKER_NETWORK): a bridge with traffic between
# containers disabled, created by the control plane.
DEFAULT_SANDBOX_NETWORK = "agentpod-sandboxes"
# Private (RFC 1918), shared / CGNAT (RFC 6598), link-local (cloud metadata lives at 169.254.169.254)
# and "this network": where a control plane's database, Temporal or an internal service would live.
DEFAULT_BLOCKED_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "0.0.0.0/8",
)


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
    network: str = DEFAULT_SANDBOX_NETWORK
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


class Actor(BaseModel):
    """Who asked for a transition, for the audit trail."""

    kind: str = "operator"  # "user" (through the API) or "operator" (Temporal Web UI / CLI)
    ip_address: str | None = None
    user_agent: str | None = None


class TransitionRequest(BaseModel):
    """Argument of the start / stop / reconfigure / delete updates (all fields optional for operators)."""

    actor: Actor = Field(default_factory=Actor)
    changed_fields: list[str] = Field(default_factory=list)  # reconfigure: what the user changed


class SandboxWorkflowState(BaseModel):
    """Everything the sandbox workflow knows; carried across continue-as-new."""

    sandbox_id: str
    user_id: str
    desired: DesiredState = DesiredState.STOPPED
    status: SandboxStatus = SandboxStatus.CREATED
    error_message: str | None = None
    container_id: str | None = None
    urls: SandboxUrls = Field(default_factory=SandboxUrls)
    internal_opencode_url: str | None = None  # where the control plane reaches OpenCode
    internal_acp_url: str | None = None  # ... and the ACP gateway
    # The operation being carried out right now (None when idle), for conflict checks.
    in_progress: DesiredState | None = None
    repairs: int = 0  # containers recreated or restarted after drifting
    transitions: int = 0
    # The user's agent config, files or keys changed and the running agent has not been given them yet.
    config_pending: bool = False


class SandboxWorkflowInput(BaseModel):
    """Start argument of ``SandboxWorkflow``."""

    sandbox_id: str
    user_id: str
    name: str = ""
    drift_check_seconds: float = 60.0
    state: SandboxWorkflowState | None = None


class SetStatusInput(BaseModel):
    """A status write (with the container id and URLs when they are known)."""

    sandbox_id: str
    status: SandboxStatus
    error_message: str | None = None
    container_id: str | None = None
    urls: SandboxUrls | None = None
    internal_opencode_url: str | None = None
    internal_acp_url: str | None = None


class SandboxEndpoints(BaseModel):
    """Where users reach a sandbox (public URLs) and where the control plane reaches OpenCode and the gateway."""

    urls: SandboxUrls
    internal_opencode_url: str
    internal_acp_url: str | None = None  # None: the image runs no ACP gateway (port not published)


class PushCredentialsInput(BaseModel):
    """Hand the user's agent credentials to a running OpenCode."""

    user_id: str
    opencode_url: str
    # Whose OpenCode: its server password is derived from it (None only in histories from before).
    sandbox_id: str | None = None


class ReloadAgentInput(BaseModel):
    """Reload a running OpenCode's configuration once no turn is in progress."""

    sandbox_id: str
    opencode_url: str
    # How long to wait for the agent to be idle before giving up for now (a turn is never cut).
    idle_wait_seconds: float = Field(20.0, gt=0)


class ConfigPendingInput(BaseModel):
    """Whether a sandbox's agent still waits for the user's changed configuration."""

    sandbox_id: str
    pending: bool


class DeliverConfigInput(BaseModel):
    """Whose agent config goes into which sandbox (the activity fetches the secrets itself)."""

    sandbox_id: str
    user_id: str


class WaitHealthyInput(BaseModel):
    """Where OpenCode (and the ACP gateway) listen (e.g. ``http://127.0.0.1:49153``) and how long to wait."""

    base_url: str
    timeout_seconds: float = Field(60.0, gt=0)
    # When set, the container is watched too: one that exited fails the wait at once, not at the timeout.
    sandbox_id: str | None = None
    # When set, the ACP gateway must answer its /health too before the sandbox counts as running.
    gateway_url: str | None = None


class RemoveContainerInput(BaseModel):
    """Which sandbox's container to remove, and whether its volumes (all its data) go too."""

    sandbox_id: str
    remove_volumes: bool = False


class SandboxRecord(BaseModel):
    """The fields of a sandbox row that callers of the workflow need (no ORM object crosses layers)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    user_id: str
    name: str
    slug: str
    status: str
    container_id: str | None = None
    opencode_url: str | None = None
    acp_gateway_url: str | None = None
    code_server_url: str | None = None
    vnc_url: str | None = None

    @property
    def urls(self) -> SandboxUrls:
        """The four stored URLs."""
        return SandboxUrls(
            opencode_url=self.opencode_url,
            acp_gateway_url=self.acp_gateway_url,
            code_server_url=self.code_server_url,
            vnc_url=self.vnc_url,
        )
