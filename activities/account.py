"""Activities of the account-deletion saga. Each is idempotent: Temporal retries, workers die.

Sandboxes are deleted through their own workflows (``request_transition(..., SandboxTransition.DELETE)``),
which remove container and volumes before the row; only containers no row knows about any more are
removed here directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import docker
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.resources import WorkerResources, heartbeating
from agentpod.domain import contracts
from agentpod.domain.account import AccountInventory, DeletionRecord, SandboxesDeleted, VerifyInput
from agentpod.domain.sandbox import LABEL_PREFIX, Actor, SandboxRecord, SandboxTransition
from agentpod.store import account
from workflows.sandbox_client import request_transition

HEARTBEAT_SECONDS = 2.0
# How long one attempt waits for the sandbox workflows; a retry re-sends (and joins) the deletions.
SANDBOX_DELETE_WAIT = timedelta(minutes=4)
LABEL_USER = f"{LABEL_PREFIX}sandbox.user"
LABEL_SANDBOX = f"{LABEL_PREFIX}sandbox.id"


class AccountActivities:
    """The database, Temporal and Docker work of deleting an account."""

    def __init__(self, resources: WorkerResources) -> None:
        self._settings = resources.settings
        self._sessions = resources.sessions
        self._temporal = resources.temporal
        self.engine = resources.docker_engine()

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [
            self.lock,
            self.unlock,
            self.anonymize_activity,
            self.delete_sandboxes,
            self.delete_data,
            self.delete_user,
            self.verify_deleted,
            self.record_deletion,
        ]

    def _client(self) -> Client:
        if self._temporal is None:
            raise ApplicationError("the worker was built without a Temporal client", non_retryable=True)
        return self._temporal

    @activity.defn(name=contracts.ACCOUNT_LOCK.name)
    async def lock(self, user_id: str) -> AccountInventory:
        """Lock the account and revoke every token; returns what the account holds (read in the same
        transaction, so a retry after the lock sees the same sandboxes and counts)."""
        async with self._sessions() as db:
            revoked = await account.lock(db, user_id)
            inventory = AccountInventory(
                sessions_revoked=revoked,
                sandbox_ids=await account.sandbox_ids(db, user_id),
                counts=await account.counts(db, user_id),
            )
            await db.commit()
        return inventory

    @activity.defn(name=contracts.ACCOUNT_UNLOCK.name)
    async def unlock(self, user_id: str) -> None:
        """Compensation: unlock an account whose deletion was cancelled before anything was destroyed."""
        async with self._sessions() as db:
            await account.unlock(db, user_id)
            await db.commit()

    @activity.defn(name=contracts.ACCOUNT_ANONYMIZE_ACTIVITY.name)
    async def anonymize_activity(self, user_id: str) -> int:
        """Detach the user's activity rows from them; returns how many changed."""
        async with self._sessions() as db:
            changed = await account.anonymize_activity(db, user_id)
            await db.commit()
        return changed

    @activity.defn(name=contracts.ACCOUNT_DELETE_SANDBOXES.name)
    async def delete_sandboxes(self, user_id: str) -> SandboxesDeleted:
        """Delete every sandbox through its workflow, then remove any container still labelled with the
        user (one no row knows, e.g. left by a crash of the original system)."""
        async with self._sessions() as db:
            records = [SandboxRecord.model_validate(row) for row in await account.sandbox_rows(db, user_id)]
        client = self._client()
        actor = Actor(kind="user")  # the user asked; no IP or user agent: the trail is anonymized anyway
        deletions = [
            request_transition(
                client,
                record,
                SandboxTransition.DELETE,
                actor,
                task_queue=self._settings.temporal_task_queue,
                drift_check_seconds=self._settings.sandbox_drift_check_seconds,
                wait=SANDBOX_DELETE_WAIT,
            )
            for record in records
        ]
        results = await heartbeating(asyncio.gather(*deletions), every=HEARTBEAT_SECONDS)
        if any(result is None for result in results):
            raise ApplicationError("sandbox deletions still in progress; asking again", type="SandboxesPending")
        async with self._sessions() as db:
            remaining = await account.sandbox_rows(db, user_id)
        if remaining:
            # Created while this step ran (a request already past authentication when the lock came).
            raise ApplicationError(f"{len(remaining)} sandbox(es) appeared meanwhile; deleting again")
        containers = await heartbeating(asyncio.to_thread(self.engine.list_managed), every=HEARTBEAT_SECONDS)
        stray = {
            c["labels"][LABEL_SANDBOX] for c in containers if _owned(c, user_id) and c["labels"].get(LABEL_SANDBOX)
        }
        for sandbox_id in sorted(stray):
            await heartbeating(asyncio.to_thread(self.engine.remove, sandbox_id, True), every=HEARTBEAT_SECONDS)
        return SandboxesDeleted(sandbox_ids=[record.id for record in records], orphans_removed=len(stray))

    @activity.defn(name=contracts.ACCOUNT_DELETE_DATA.name)
    async def delete_data(self, user_id: str) -> dict[str, int]:
        """Delete provider keys, OpenCode config and files, preferences, chat history, links and sessions."""
        async with self._sessions() as db:
            deleted = await account.delete_data(db, user_id)
            await db.commit()
        return deleted

    @activity.defn(name=contracts.ACCOUNT_DELETE_USER.name)
    async def delete_user(self, user_id: str) -> bool:
        """Delete the user row; False while a sandbox row still exists (the workflow goes round again)."""
        async with self._sessions() as db:
            deleted = await account.delete_user(db, user_id)
            await db.commit()
        return deleted

    @activity.defn(name=contracts.ACCOUNT_VERIFY_DELETED.name)
    async def verify_deleted(self, data: VerifyInput) -> list[str]:
        """Everything still referencing the user: rows, containers, volumes (empty: the proof)."""
        async with self._sessions() as db:
            found = await account.references(db, data.user_id)
        containers = await heartbeating(asyncio.to_thread(self.engine.list_managed), every=HEARTBEAT_SECONDS)
        found += [f"container {c['name']}" for c in containers if _owned(c, data.user_id, data.sandbox_ids)]
        found += [f"volume {name}" for name in await asyncio.to_thread(self._volumes_of, data.sandbox_ids)]
        return found

    def _volumes_of(self, sandbox_ids: list[str]) -> list[str]:
        if not sandbox_ids:
            return []
        client = docker.DockerClient(base_url=self._settings.docker_host) if self._settings.docker_host else None
        client = client or docker.from_env()
        try:
            managed = client.volumes.list(filters={"label": f"{LABEL_PREFIX}managed=true"})
            wanted = set(sandbox_ids)
            return sorted(v.name for v in managed if (v.attrs.get("Labels") or {}).get(LABEL_SANDBOX) in wanted)
        finally:
            client.close()

    @activity.defn(name=contracts.ACCOUNT_RECORD_DELETION.name)
    async def record_deletion(self, data: DeletionRecord) -> None:
        """Write the deletion's one anonymized audit row (once, however often retried)."""
        async with self._sessions() as db:
            await account.record_deletion(db, data.event_id, data.counts)
            await db.commit()


def _owned(container: dict[str, Any], user_id: str, sandbox_ids: list[str] | None = None) -> bool:
    labels = container.get("labels") or {}
    return labels.get(LABEL_USER) == user_id or labels.get(LABEL_SANDBOX) in (sandbox_ids or [])
