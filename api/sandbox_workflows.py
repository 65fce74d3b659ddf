"""The API's use of the sandbox workflow: settings applied, refusals turned into 409s, Temporal down into 503s.

Routes take :data:`api.deps.Transitions`, a :class:`SandboxTransitions` for the current request.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from agentpod.domain.sandbox import Actor, SandboxRecord, SandboxTransition, SandboxWorkflowState
from agentpod.settings import Settings
from agentpod.store import sandboxes
from agentpod.store.tables import Sandbox
from api.errors import Conflict, temporal_unavailable_as_503
from workflows import sandbox_client

logger = logging.getLogger(__name__)


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


class AgentConfigPush:
    """After a change of the caller's agent config, files or provider keys: their running sandboxes are
    flagged ``config_pending`` (in the caller's transaction) and their workflows told (after the commit),
    so the agent gets the change within seconds, reloaded when no turn is in progress."""

    def __init__(self, client: Client, user_id: str) -> None:
        self._client = client
        self._user_id = user_id
        self._flagged: list[str] = []

    async def flag(self, db: AsyncSession) -> None:
        """Flag the running sandboxes; call before the route's commit."""
        self._flagged = await sandboxes.mark_config_pending(db, self._user_id)

    async def push(self) -> None:
        """Tell the flagged sandboxes' workflows; call after the commit. Never fails the request: the change
        is saved, and a sandbox whose workflow cannot be told now gets it at its next start."""
        if not self._flagged:
            return
        missed = await sandbox_client.agent_config_changed(self._client, self._flagged)
        if missed:
            logger.warning("agent config change not pushed to sandboxes %s (Temporal unreachable?)", missed)
