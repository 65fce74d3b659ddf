"""Reading a legacy sandbox out of its Docker labels (the origin system kept metadata only there)."""

from __future__ import annotations

from pydantic import BaseModel

from agentpod.domain.sandbox import LABEL_PREFIX, SandboxStatus

# Docker's container state -> our observed status (the workflow re-checks it on its first transition).
DOCKER_STATE_TO_STATUS = {
    "created": SandboxStatus.CREATED,
    "running": SandboxStatus.RUNNING,
    "restarting": SandboxStatus.STARTING,
    "paused": SandboxStatus.STOPPED,
    "exited": SandboxStatus.STOPPED,
    "removing": SandboxStatus.STOPPING,
    "dead": SandboxStatus.ERROR,
}


class LabelledSandbox(BaseModel):
    """What a labelled container says about the sandbox it belongs to."""

    sandbox_id: str
    user_id: str
    name: str
    slug: str | None
    repo_name: str | None
    github_url: str | None
    tier_id: str | None
    flavor_id: str | None
    addon_ids: list[str]
    container_id: str
    container_name: str
    status: SandboxStatus


def from_labels(
    container_id: str, container_name: str, state: str | None, labels: dict[str, str]
) -> LabelledSandbox | None:
    """Parse one container's labels; None when it lacks the sandbox id or owner (nothing to import)."""

    def label(key: str) -> str | None:
        value = labels.get(f"{LABEL_PREFIX}{key}", "").strip()
        return value or None

    sandbox_id, user_id = label("sandbox.id"), label("sandbox.user")
    if sandbox_id is None or user_id is None:
        return None
    # Both label styles exist: ours (`agentpod.addons=a,b`) and the origin's (`agentpod.addon.<id>=true`).
    addons = {a.strip() for a in (label("addons") or "").split(",") if a.strip()}
    addons |= {
        key.removeprefix(f"{LABEL_PREFIX}addon.")
        for key, value in labels.items()
        if key.startswith(f"{LABEL_PREFIX}addon.") and value == "true"
    }
    return LabelledSandbox(
        sandbox_id=sandbox_id,
        user_id=user_id,
        name=label("sandbox.name") or sandbox_id,
        slug=label("sandbox.slug"),
        repo_name=label("sandbox.repo"),
        github_url=label("sandbox.github"),
        tier_id=label("tier"),
        flavor_id=label("flavor"),
        addon_ids=sorted(addons),
        container_id=container_id,
        container_name=container_name,
        status=DOCKER_STATE_TO_STATUS.get(state or "", SandboxStatus.ERROR),
    )
