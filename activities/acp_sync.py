"""The ACP sync's I/O: follow a sandbox's ACP gateway stream and reconcile it.

``acp_stream_segment`` resumes from the last event committed (``Last-Event-ID``, stored with the rows),
applies events through :class:`integrations.acp.mirror.AcpMirror`, reconciles on every ``reset`` frame,
and reconnects with the same jittered, capped backoff as the OpenCode sync. The gateway heartbeats
every 15 s; a connection silent for three of those is treated as dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity

from activities.resources import WorkerResources
from agentpod.chat_mirror.acp import AcpMirror
from agentpod.chat_mirror.segment import (
    HEALTHY_RESET_SECONDS,
    StreamEnded,
    backoff_delay,
    next_frame,
    record_disconnect,
    segment_companions,
)
from agentpod.clients.acp import AcpGatewayClient, AcpGatewayError
from agentpod.domain.chat import ReconcileReport, StreamSegmentInput, StreamSegmentResult, SyncStatus, SyncTarget
from agentpod.security.gateway_secret import gateway_secrets
from agentpod.store.acp_sync import load_cursor, save_acp_status

SILENCE_LIMIT_SECONDS = 45.0


class AcpSyncActivities:
    """Activities of the ACP sync workflow."""

    def __init__(self, resources: WorkerResources) -> None:
        self._resources = resources
        self._sessions = resources.sessions

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [self.stream_segment, self.reconcile]

    def _client(self, target: SyncTarget) -> AcpGatewayClient:
        if not target.acp_url:
            raise AcpGatewayError("the sandbox has no ACP gateway address")
        return AcpGatewayClient(target.acp_url, gateway_secrets(self._resources.keys(), target.sandbox_id))

    @activity.defn(name="acp_stream_segment")
    async def stream_segment(self, data: StreamSegmentInput) -> StreamSegmentResult:
        """Mirror gateway events for ``segment_seconds`` (reconnecting as needed), then return."""
        target = data.target
        status = data.status.model_copy()
        result = StreamSegmentResult(status=status)
        mirror = AcpMirror(self._sessions, sandbox_id=target.sandbox_id, user_id=target.user_id)
        async with self._sessions() as db:
            mirror.applied_event_id = mirror.committed_event_id = await load_cursor(db, target.sandbox_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + data.segment_seconds
        label = f"ACP sync {target.sandbox_id}"
        save = functools.partial(self._save_status, target.sandbox_id)
        attempt = 0
        async with segment_companions(mirror, status, save, label=label) as lock:
            while loop.time() < deadline:
                connected_at: float | None = None
                try:
                    async with (
                        self._client(target) as gateway,
                        contextlib.aclosing(gateway.events(mirror.committed_event_id)) as events,
                    ):
                        while (
                            event := await next_frame(
                                events, silence_limit=SILENCE_LIMIT_SECONDS, deadline=deadline, source="the gateway"
                            )
                        ) is not None:
                            if connected_at is None:
                                connected_at = loop.time()
                                status.connected, status.last_error = True, None
                                if event.event != "reset":  # a reset reconciles everything anyway
                                    async with lock:
                                        await mirror.repair_unfinished(gateway)
                            if event.event == "heartbeat":
                                if mirror.pending_rebuilds():
                                    async with lock:
                                        await mirror.repair_unfinished(gateway)
                                continue
                            async with lock:
                                if event.event == "reset":
                                    report = await mirror.reconcile(gateway)
                                    await mirror.commit_cursor(event.id)
                                    result.reconciles += 1
                                    status.last_reconcile_at = datetime.now(UTC)
                                    activity.logger.info("ACP reconcile of %s: %s", target.sandbox_id, report)
                                    continue
                                session = await mirror.feed(event)
                                if event.event == "session_end_turn":
                                    # The reply's final state lands at once; a rebuild waits for it.
                                    await mirror.flush()
                                    if session is not None and session.rebuild_after_turn:
                                        await mirror.rebuild(gateway, str(event.data["session_id"]), ReconcileReport())
                            result.events += 1
                            status.events_applied += 1
                            status.last_event_at = datetime.now(UTC)
                            if loop.time() - connected_at > HEALTHY_RESET_SECONDS:
                                attempt = 0
                except (StreamEnded, AcpGatewayError, OSError, SQLAlchemyError) as error:
                    record_disconnect(status, error)
                    async with lock:
                        try:
                            await mirror.flush()
                        except SQLAlchemyError:
                            # Chunks append, so what was applied but not committed must not survive the
                            # reconnect, which resumes from the committed event.
                            mirror.discard_uncommitted()
                    delay = min(backoff_delay(attempt), max(0.0, deadline - loop.time()))
                    attempt += 1
                    activity.logger.info("%s lost (%s); retry in %.1fs", label, error, delay)
                    await asyncio.sleep(delay)
        return result

    @activity.defn(name="acp_reconcile")
    async def reconcile(self, target: SyncTarget) -> ReconcileReport:
        """One full reconcile: every gateway session rebuilt from its history."""
        if not target.acp_url:
            return ReconcileReport(notes=["no ACP gateway"])
        mirror = AcpMirror(self._sessions, sandbox_id=target.sandbox_id, user_id=target.user_id)
        async with self._client(target) as gateway:
            return await mirror.reconcile(gateway)

    async def _save_status(self, sandbox_id: str, status: SyncStatus) -> None:
        async with self._sessions() as db:
            await save_acp_status(db, sandbox_id, status)
            await db.commit()
