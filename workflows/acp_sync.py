"""``AcpSyncWorkflow``: the long-lived mirror of one running sandbox's ACP gateway (id ``acp-sync-<sandbox>``).

Beside the OpenCode mirror, with the same shape (see :mod:`workflows.stream_sync`). The gateway's stream
has ids and replay, so a segment resumes exactly after the last event it committed (``Last-Event-ID``,
stored with the rows); only a ``reset`` frame (gateway restarted, buffer expired, first connection)
triggers a reconcile from the gateway's session list and histories.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.stream_sync import StreamSyncWorkflow

with workflow.unsafe.imports_passed_through():
    from agentpod.domain.chat import SyncStatus, SyncWorkflowInput
    from agentpod.domain.chat_mirror import ACP_MIRROR


@workflow.defn
class AcpSyncWorkflow(StreamSyncWorkflow):
    """Mirror one sandbox's ACP sessions into the database until the sandbox stops."""

    activities = ACP_MIRROR

    def _url(self) -> str | None:
        return self._target.acp_url

    @workflow.run
    async def run(self, data: SyncWorkflowInput) -> SyncStatus:
        """Stream segment after segment; continue-as-new between segments when history grows."""
        return await self._run(data)
