"""The ACP sync's activities: its stream segment and reconcile.

``acp_stream_segment`` runs the shared segment loop (:func:`agentpod.chat_mirror.segment.run_segment`) on
the gateway's ``/events`` stream (:class:`agentpod.chat_mirror.acp.AcpStream`), resumed after the last
event committed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities.resources import WorkerResources
from agentpod.chat_mirror.acp import AcpMirror, AcpStream
from agentpod.chat_mirror.segment import run_segment
from agentpod.clients.acp import AcpGatewayClient
from agentpod.domain.chat import ReconcileReport, StreamSegmentInput, StreamSegmentResult, SyncTarget
from agentpod.domain.chat_mirror import ACP_MIRROR
from agentpod.security.sandbox_secrets import gateway_secrets


class AcpSyncActivities:
    """Activities of the ACP sync workflow."""

    def __init__(self, resources: WorkerResources) -> None:
        self._resources = resources
        self._sessions = resources.sessions

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [self.stream_segment, self.reconcile]

    @activity.defn(name=ACP_MIRROR.segment.name)
    async def stream_segment(self, data: StreamSegmentInput) -> StreamSegmentResult:
        """Mirror gateway events for ``segment_seconds`` (reconnecting as needed), then return."""
        source = await AcpStream.resumed(self._sessions, data.target, self._resources.keys)
        return await run_segment(source, data)

    @activity.defn(name=ACP_MIRROR.reconcile.name)
    async def reconcile(self, target: SyncTarget) -> ReconcileReport:
        """One full reconcile: every gateway session rebuilt from its history."""
        if not target.acp_url:
            return ReconcileReport(notes=["no ACP gateway"])
        mirror = AcpMirror(self._sessions, sandbox_id=target.sandbox_id, user_id=target.user_id)
        secrets = gateway_secrets(self._resources.keys(), target.sandbox_id)
        async with AcpGatewayClient(target.acp_url, secrets) as gateway:
            return await mirror.reconcile(gateway)
