"""The OpenCode sync's I/O: hold the SSE stream, reconcile, and drive the sync workflow's lifecycle.

``opencode_stream_segment`` is the long-running one: it connects to OpenCode's ``/event`` stream,
reconciles on every ``server.connected``, feeds events to the mirror (which coalesces streaming
deltas and writes in batches), and reconnects with jittered, capped exponential backoff. A clean end
of stream counts as a disconnect. A heartbeat task keeps Temporal informed while the stream idles
and persists the sync status for the chat API.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from activities.resources import WorkerResources
from agentpod.chat_mirror.opencode import OpenCodeMirror
from agentpod.chat_mirror.segment import (
    HEALTHY_RESET_SECONDS,
    StreamEnded,
    backoff_delay,
    next_frame,
    record_disconnect,
    segment_companions,
)
from agentpod.clients.opencode import OpenCodeClient, OpenCodeError
from agentpod.domain.chat import (
    ReconcileReport,
    StreamSegmentInput,
    StreamSegmentResult,
    SyncStatus,
    SyncTarget,
    SyncWorkflowInput,
)
from agentpod.store.sync_state import save_sync_status
from workflows.acp_sync import AcpSyncWorkflow
from workflows.ids import acp_sync_workflow_id, sandbox_sync_workflow_id
from workflows.opencode_sync import OpenCodeSyncWorkflow
from workflows.stream_sync import StreamSyncWorkflow

# OpenCode sends `server.heartbeat` every 10 s; three missed ones mean the connection is dead.
SILENCE_LIMIT_SECONDS = 30.0
# `server.connected` is the stream's first frame, sent at once. A request that reaches OpenCode while it
# is still starting up can hang without ever getting it; waiting the full silence limit for that
# would leave the mirror 30 s behind after every agent restart.
FIRST_EVENT_LIMIT_SECONDS = 5.0


class OpenCodeSyncActivities:
    """Activities of the OpenCode sync workflow, plus the two the sandbox workflow uses to drive it."""

    def __init__(self, resources: WorkerResources) -> None:
        self._settings = resources.settings
        self._sessions = resources.sessions
        self._temporal = resources.temporal

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [self.stream_segment, self.reconcile, self.ensure_sync, self.finish_sync]

    # ------------------------------------------------------------------ the stream

    @activity.defn(name="opencode_stream_segment")
    async def stream_segment(self, data: StreamSegmentInput) -> StreamSegmentResult:
        """Mirror live events for ``segment_seconds`` (reconnecting as needed), then return."""
        target = data.target
        status = data.status.model_copy()
        result = StreamSegmentResult(status=status)
        mirror = OpenCodeMirror(self._sessions, sandbox_id=target.sandbox_id, user_id=target.user_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + data.segment_seconds
        label = f"sync {target.sandbox_id}"
        save = functools.partial(self._save_status, target.sandbox_id)
        attempt = 0
        async with segment_companions(mirror, status, save, label=label) as lock:
            while loop.time() < deadline:
                connected_at: float | None = None
                try:
                    async with OpenCodeClient(target.opencode_url) as client:
                        events = client.events().__aiter__()
                        while True:
                            limit = SILENCE_LIMIT_SECONDS if connected_at is not None else FIRST_EVENT_LIMIT_SECONDS
                            event = await next_frame(events, silence_limit=limit, deadline=deadline, source="OpenCode")
                            if event is None:
                                break
                            kind = event.get("type")
                            if kind == "server.connected":
                                connected_at = loop.time()
                                status.connected, status.last_error = True, None
                                async with lock:
                                    await mirror.flush()
                                    report = await mirror.reconcile(client)
                                result.reconciles += 1
                                status.last_reconcile_at = datetime.now(UTC)
                                activity.logger.info("reconciled %s: %s", target.sandbox_id, report.model_dump())
                                continue
                            if kind == "server.heartbeat":
                                continue
                            async with lock:
                                await mirror.feed(event)
                            result.events += 1
                            status.events_applied += 1
                            status.last_event_at = datetime.now(UTC)
                            if connected_at is not None and loop.time() - connected_at > HEALTHY_RESET_SECONDS:
                                attempt = 0
                except (StreamEnded, OpenCodeError, httpx.HTTPError, OSError, SQLAlchemyError) as error:
                    # A database error too: reconnecting reconciles, and unwritten batches stay buffered,
                    # where failing the activity would drop the stream and reconcile all the same.
                    record_disconnect(status, error)
                    with contextlib.suppress(SQLAlchemyError):
                        async with lock:
                            await mirror.flush()
                    delay = min(backoff_delay(attempt), max(0.0, deadline - loop.time()))
                    attempt += 1
                    activity.logger.info("%s disconnected (%s); retry in %.1fs", label, error, delay)
                    await asyncio.sleep(delay)
        return result

    @activity.defn(name="opencode_reconcile")
    async def reconcile(self, target: SyncTarget) -> ReconcileReport:
        """One full reconcile through OpenCode's REST API."""
        mirror = OpenCodeMirror(self._sessions, sandbox_id=target.sandbox_id, user_id=target.user_id)
        async with OpenCodeClient(target.opencode_url) as client:
            report = await mirror.reconcile(client)
        status = SyncStatus(last_reconcile_at=datetime.now(UTC))
        await self._save_status(target.sandbox_id, status, merge=True)
        return report

    async def _save_status(self, sandbox_id: str, status: SyncStatus, *, merge: bool = False) -> None:
        async with self._sessions() as db:
            await save_sync_status(db, sandbox_id, status, merge=merge)
            await db.commit()

    # ------------------------------------------------------------------ lifecycle (used by SandboxWorkflow)

    def _client(self) -> Client:
        if self._temporal is None:
            raise RuntimeError("the worker was built without a Temporal client")
        return self._temporal

    @activity.defn(name="sync_ensure_started")
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

    @activity.defn(name="sync_finish")
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
