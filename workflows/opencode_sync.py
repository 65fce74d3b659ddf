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

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from domain.chat import (
        ReconcileReport,
        StreamSegmentInput,
        StreamSegmentResult,
        SyncStatus,
        SyncTarget,
        SyncWorkflowInput,
    )

# The stream never gives up while the sandbox runs: failures back off (capped) and try again.
_STREAM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=60)
)
_FINAL_RECONCILE_RETRY = RetryPolicy(maximum_attempts=3)


@workflow.defn
class OpenCodeSyncWorkflow:
    """Mirror one sandbox's OpenCode into the database until the sandbox stops."""

    @workflow.init
    def __init__(self, data: SyncWorkflowInput) -> None:
        self._target = data.target
        self._status = data.status
        self._finishing = False
        self._retargeted = False
        self._segment: workflow.ActivityHandle[StreamSegmentResult] | None = None
        self._final: ReconcileReport | None = None

    @workflow.run
    async def run(self, data: SyncWorkflowInput) -> SyncStatus:
        """Stream segment after segment; continue-as-new between segments when history grows."""
        workflow.set_current_details(f"Following {self._target.opencode_url}")
        while not self._finishing:
            self._retargeted = False
            self._segment = workflow.start_activity(
                "opencode_stream_segment",
                StreamSegmentInput(target=self._target, segment_seconds=data.segment_seconds, status=self._status),
                result_type=StreamSegmentResult,
                start_to_close_timeout=timedelta(seconds=data.segment_seconds + 120),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=_STREAM_RETRY,
            )
            try:
                result = await self._segment
                self._status = result.status
            except ActivityError as error:
                # Cancelled by finish/retarget: expected. Anything else already exhausted no retries
                # (the policy is unlimited), so it can only be a cancellation too.
                if not isinstance(error.cause, CancelledError):
                    raise
            self._segment = None
            workflow.set_current_details(
                f"Following {self._target.opencode_url}\n\n**Connected:** {self._status.connected} · "
                f"**reconnects:** {self._status.reconnects} · **last error:** {self._status.last_error or '-'}"
            )
            if not self._finishing and not self._retargeted and workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(data.model_copy(update={"target": self._target, "status": self._status}))
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._status

    @workflow.signal
    async def retarget(self, target: SyncTarget) -> None:
        """Follow a new OpenCode URL (the container was recreated); the next segment reconnects."""
        if target == self._target:
            return
        self._target = target
        self._retargeted = True
        if self._segment is not None:
            self._segment.cancel()

    @workflow.update
    async def finish(self) -> ReconcileReport:
        """Stop streaming, reconcile one last time (the container is about to stop), and end."""
        if self._final is not None:
            return self._final
        self._finishing = True
        if self._segment is not None:
            # Cancellation reaches the stream at its next heartbeat; the last reconcile need not wait for
            # that (both write through idempotent upserts), so the container can stop sooner.
            self._segment.cancel()
        try:
            self._final = await workflow.execute_activity(
                "opencode_reconcile",
                self._target,
                result_type=ReconcileReport,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=_FINAL_RECONCILE_RETRY,
            )
        except ActivityError as error:
            # The agent may already be gone (crashed container): history stays as mirrored so far.
            self._final = ReconcileReport(notes=[f"final reconcile failed: {error.cause or error}"])
        return self._final

    @workflow.update
    async def reconcile_now(self) -> ReconcileReport:
        """Run a full reconcile now (the app's "sync now"); safe beside the live stream: upserts are idempotent."""
        report: ReconcileReport = await workflow.execute_activity(
            "opencode_reconcile",
            self._target,
            result_type=ReconcileReport,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=_FINAL_RECONCILE_RETRY,
        )
        return report

    @reconcile_now.validator
    def _validate_reconcile_now(self) -> None:
        if self._finishing:
            raise ApplicationError("the sandbox is stopping", type="SyncFinishing")

    @workflow.query
    def status(self) -> SyncStatus:
        """The mirror's state as of the last finished segment."""
        return self._status
