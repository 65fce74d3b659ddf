"""The API's use of the sandbox workflow: settings applied, refusals turned into 409s, Temporal down into 503s.

Routes take :data:`api.deps.Transitions`, a :class:`SandboxTransitions` for the current request.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client

from agentpod.domain.sandbox import Actor, SandboxRecord, SandboxTransition, SandboxWorkflowState
from agentpod.settings import Settings
from agentpod.store.tables import Sandbox
from api.errors import Conflict, temporal_unavailable_as_503
from workflows import sandbox_client


# Temporal down or unreachable: the request was not taken, and the caller may retry (503).
@temporal_unavailable_as_503()
async def request_transition(
    client: Client,
    settings: Settings,
    sandbox: Sandbox,
    update: SandboxTransition,
    actor: Actor,
    *,
    changed_fields: list[str] | None = None,
    wait: timedelta | None = timedelta(seconds=90),
) -> SandboxWorkflowState | None:
    """Send ``update`` to the sandbox's workflow; None means accepted but still in progress (202)."""
    try:
        return await sandbox_client.request_transition(
            client,
            SandboxRecord.model_validate(sandbox),
            update,
            actor,
            task_queue=settings.temporal_task_queue,
            drift_check_seconds=settings.sandbox_drift_check_seconds,
            changed_fields=changed_fields,
            wait=wait,
        )
    except sandbox_client.IllegalTransitionError as error:
        raise Conflict(str(error), code="illegal_transition") from None


class SandboxTransitions:
    """The caller's way to ask a sandbox's workflow for a transition (settings, client and actor bound)."""

    def __init__(self, client: Client, settings: Settings, actor: Actor) -> None:
        self._client = client
        self._settings = settings
        self._actor = actor

    async def __call__(
        self, sandbox: Sandbox, update: SandboxTransition, *, changed_fields: list[str] | None = None
    ) -> bool:
        """Ask for ``update``; True when it finished, False when still in progress (answer 202)."""
        state = await request_transition(
            self._client, self._settings, sandbox, update, self._actor, changed_fields=changed_fields
        )
        return state is not None
