"""``OpenCodeSyncWorkflow``: the long-lived mirror of one running sandbox's OpenCode chats.

The live SSE stream is held by one long-running activity in bounded segments (5 minutes by default).
Each segment connects, reconciles everything through the REST API (OpenCode's stream has no event
ids and no replay, so the reconcile is what makes the mirror gap-free), then applies events as they
come; a disconnect inside a segment reconnects with jittered backoff and reconciles again. The
segment boundary is therefore also the periodic full reconcile and the continue-as-new point.

Started (or re-targeted to a new URL) by the sandbox workflow when the sandbox runs; finished through
the ``finish`` update before the container stops, with a last reconcile so nothing is left behind.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.stream_sync import StreamSyncWorkflow

with workflow.unsafe.imports_passed_through():
    from agentpod.domain.chat import SyncStatus, SyncWorkflowInput
    from agentpod.domain.chat_mirror import OPENCODE_MIRROR


@workflow.defn
class OpenCodeSyncWorkflow(StreamSyncWorkflow):
    """Mirror one sandbox's OpenCode into the database until the sandbox stops."""

    activities = OPENCODE_MIRROR

    def _url(self) -> str | None:
        return self._target.opencode_url

    @workflow.run
    async def run(self, data: SyncWorkflowInput) -> SyncStatus:
        """Stream segment after segment; continue-as-new between segments when history grows."""
        return await self._run(data)
