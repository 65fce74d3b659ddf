"""The OpenCode sync's activities: its stream segment and reconcile, and the lifecycle of both chat mirrors.

``opencode_stream_segment`` runs the shared segment loop (:func:`agentpod.chat_mirror.segment.run_segment`)
on OpenCode's ``/event`` stream (:class:`agentpod.chat_mirror.opencode.OpenCodeStream`).
``sync_ensure_started`` and ``sync_finish`` start and finish the sandbox's OpenCode and ACP sync workflows.
A segment whose reconcile finds sessions OpenCode lost starts the session restore (``SessionRestoreWorkflow``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from activities.resources import WorkerResources
from agentpod.chat_mirror.opencode import OpenCodeMirror, OpenCodeStream, ask_for_lost_sessions
from agentpod.chat_mirror.segment import run_segment
from agentpod.clients.opencode import OpenCodeClient
from agentpod.domain.chat import (
    ReconcileReport,
    StreamSegmentInput,
    StreamSegmentResult,
    SyncStatus,
    SyncTarget,
    SyncWorkflowInput,
)
from agentpod.domain.chat_mirror import OPENCODE_MIRROR
from agentpod.domain.contracts import SYNC_ENSURE_STARTED, SYNC_FINISH
from agentpod.security.sandbox_secrets import opencode_passwords
from agentpod.store.sync_state import commit_sync_status
from agentpod.store.tables import ChatSyncState
from workflows.acp_sync import AcpSyncWorkflow
from workflows.ids import acp_sync_workflow_id, sandbox_sync_workflow_id
from workflows.opencode_sync import OpenCodeSyncWorkflow
from workflows.session_restore_client import request_restore
from workflows.stream_sync import StreamSyncWorkflow


class OpenCodeSyncActivities:
    """Activities of the OpenCode sync workflow, plus the two the sandbox workflow uses to drive both mirrors."""

    def __init__(self, resources: WorkerResources) -> None:
        self._sessions = resources.sessions
        self._temporal = resources.temporal
        self._keys = resources.keys
        self._settings = resources.settings

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [self.stream_segment, self.reconcile, self.ensure_sync, self.finish_sync]

    @activity.defn(name=OPENCODE_MIRROR.segment.name)
    async def stream_segment(self, data: StreamSegmentInput) -> StreamSegmentResult:
        """Mirror live events for ``segment_seconds`` (reconnecting as needed), then return."""
        passwords = opencode_passwords(self._keys(), data.target.sandbox_id)
        source = OpenCodeStream(self._sessions, data.target, passwords, restore=self._restorer(data.target))
        return await run_segment(source, data)

    @activity.defn(name=OPENCODE_MIRROR.reconcile.name)
    async def reconcile(self, target: SyncTarget) -> ReconcileReport:
        """One full reconcile through OpenCode's REST API (every few minutes, and "sync now"); sessions
        OpenCode lacks are asked back from the session restore, as the stream's own reconcile does."""
        mirror = OpenCodeMirror(self._sessions, sandbox_id=target.sandbox_id, user_id=target.user_id)
        async with OpenCodeClient(target.opencode_url, opencode_passwords(self._keys(), target.sandbox_id)) as client:
            report = await mirror.reconcile(client)
        await ask_for_lost_sessions(self._restorer(target), report, f"sync {target.sandbox_id}")
        status = SyncStatus(last_reconcile_at=datetime.now(UTC))
        await commit_sync_status(self._sessions, ChatSyncState, target.sandbox_id, status, merge=True)
        return report

    def _restorer(self, target: SyncTarget) -> Callable[[], Awaitable[None]] | None:
        """What puts back sessions we hold that OpenCode lacks (new container, lost volume): a signal to the
        sandbox's session restore (started if needed). None in a worker built without Temporal."""
        if self._temporal is None:
            return None
        client, queue = self._temporal, activity.info().task_queue

        async def restore() -> None:
            await request_restore(
                client,
                target.sandbox_id,
                task_queue=queue,
                concurrency=self._settings.session_restore_concurrency,
                user_id=target.user_id,
            )

        return restore

    # ------------------------------------------------------------------ lifecycle (used by SandboxWorkflow)

    def _client(self) -> Client:
        if self._temporal is None:
            raise RuntimeError("the worker was built without a Temporal client")
        return self._temporal

    @activity.defn(name=SYNC_ENSURE_STARTED.name)
    async def ensure_sync(self, target: SyncTarget) -> None:
        """Start the sandbox's chat mirrors (OpenCode, and ACP when the sandbox runs a gateway), or point
        the running ones at ``target`` (signal-with-start)."""
        mirrors: list[tuple[type[StreamSyncWorkflow], str, str]] = [
            (OpenCodeSyncWorkflow, sandbox_sync_workflow_id(target.sandbox_id), "Chat sync"),
        ]
        if target.acp_url:
            mirrors.append((AcpSyncWorkflow, acp_sync_workflow_id(target.sandbox_id), "ACP chat sync"))
        for workflow_class, workflow_id, label in mirrors:
            await self._client().start_workflow(
                workflow_class.__name__,
                SyncWorkflowInput(target=target),
                id=workflow_id,
                task_queue=activity.info().task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                start_signal="retarget",
                start_signal_args=[target],
                static_summary=f"{label} of sandbox {target.sandbox_id}",
            )

    @activity.defn(name=SYNC_FINISH.name)
    async def finish_sync(self, sandbox_id: str) -> ReconcileReport | None:
        """Finish the sandbox's chat mirrors with a last reconcile each (the OpenCode one's report is returned)."""
        reports = await asyncio.gather(
            self._finish(sandbox_sync_workflow_id(sandbox_id)), self._finish(acp_sync_workflow_id(sandbox_id))
        )
        return reports[0]

    async def _finish(self, workflow_id: str) -> ReconcileReport | None:
        handle = self._client().get_workflow_handle(workflow_id)
        try:
            return await handle.execute_update(StreamSyncWorkflow.finish, rpc_timeout=timedelta(minutes=3))
        except (RPCError, WorkflowUpdateFailedError) as error:
            activity.logger.info("no running %s to finish: %s", workflow_id, error)
            return None
