"""Stand-ins for both chat mirrors' activities: the sync workflows run for real, without an agent.

A stream segment heartbeats until it is cancelled (finish, retarget) and records the address it follows;
a reconcile records itself and returns a report naming its mirror, so a test can tell which mirror ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity

from agentpod.domain.chat import ReconcileReport, StreamSegmentInput, StreamSegmentResult, SyncTarget
from agentpod.domain.chat_mirror import ACP_MIRROR, OPENCODE_MIRROR, MirrorContracts


@dataclass
class FakeMirrors:
    """What the fake activities saw: (activity name, sandbox id, address) per call."""

    segments: list[tuple[str, str, str | None]] = field(default_factory=list)
    reconciles: list[tuple[str, str]] = field(default_factory=list)

    def activities(self) -> list[Callable[..., Any]]:
        """Both mirrors' segment and reconcile activities."""
        return [fn for mirror in (OPENCODE_MIRROR, ACP_MIRROR) for fn in self._pair(mirror)]

    def _pair(self, mirror: MirrorContracts) -> list[Callable[..., Any]]:
        follows_acp = mirror is ACP_MIRROR

        @activity.defn(name=mirror.segment.name)
        async def segment(data: StreamSegmentInput) -> StreamSegmentResult:
            url = data.target.acp_url if follows_acp else data.target.opencode_url
            self.segments.append((mirror.segment.name, data.target.sandbox_id, url))
            while True:  # until cancelled: heartbeats deliver the cancellation
                activity.heartbeat()
                await asyncio.sleep(0.2)

        @activity.defn(name=mirror.reconcile.name)
        async def reconcile(target: SyncTarget) -> ReconcileReport:
            self.reconciles.append((mirror.reconcile.name, target.sandbox_id))
            return ReconcileReport(notes=[f"{mirror.reconcile.name} of {target.sandbox_id}"])

        return [segment, reconcile]
