"""The shape both chat mirrors share: a long-lived workflow holding its live stream in bounded segments.

A segment is one long-running activity (5 minutes by default) that connects, reconciles, then follows
the stream, reconnecting with jittered backoff inside the segment. The segment boundary is also the
periodic full reconcile and the continue-as-new point. ``retarget`` follows a recreated container;
``finish`` runs a last reconcile before the container stops; ``reconcile_now`` is the app's "sync now".

Subclasses name their activities' contracts (:mod:`agentpod.domain.chat_mirror`) and say which URL of
the :class:`SyncTarget` they follow: :class:`workflows.opencode_sync.OpenCodeSyncWorkflow` and
:class:`workflows.acp_sync.AcpSyncWorkflow`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from agentpod.domain.chat import (
        ReconcileReport,
        StreamSegmentInput,
        StreamSegmentResult,
        SyncStatus,
        SyncTarget,
        SyncWorkflowInput,
    )
    from agentpod.domain.chat_mirror import MirrorContracts

# The stream never gives up while the sandbox runs: failures back off (capped) and try again.
_STREAM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=60)
)
_FINAL_RECONCILE_RETRY = RetryPolicy(maximum_attempts=3)


class StreamSyncWorkflow:
    """Mirror one sandbox's agent into the database until the sandbox stops (base, not a workflow itself)."""

    activities: ClassVar[MirrorContracts]

    @workflow.init
    def __init__(self, data: SyncWorkflowInput) -> None:
        self._target = data.target
        self._status = data.status
        self._finishing = False
        self._retargeted = False
        self._segment: workflow.ActivityHandle[StreamSegmentResult] | None = None
        self._final: ReconcileReport | None = None

    def _url(self) -> str | None:
        """The address this mirror follows (from the target)."""
        raise NotImplementedError

    async def _run(self, data: SyncWorkflowInput) -> SyncStatus:
        """Stream segment after segment; continue-as-new between segments when history grows."""
        workflow.set_current_details(f"Following {self._url()}")
        while not self._finishing:
            self._retargeted = False
            # ±10 %: after a worker restart every loop reconnects at once; without jitter their segments
            # (and reconnect-and-reconcile storms) would stay in lockstep every 5 minutes.
            seconds = data.segment_seconds * workflow.random().uniform(0.9, 1.1)
            self._segment = workflow.start_activity(
                self.activities.segment.name,
                StreamSegmentInput(target=self._target, segment_seconds=seconds, status=self._status),
                result_type=self.activities.segment.result_type,
                start_to_close_timeout=timedelta(seconds=seconds + 120),
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
                f"Following {self._url()}\n\n**Connected:** {self._status.connected} · "
                f"**reconnects:** {self._status.reconnects} · **last error:** {self._status.last_error or '-'}"
            )
            if not self._finishing and not self._retargeted and workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(data.model_copy(update={"target": self._target, "status": self._status}))
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._status

    @workflow.signal
    async def retarget(self, target: SyncTarget) -> None:
        """Follow a new address (the container was recreated); the next segment reconnects."""
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
            self._final = await self._reconcile()
        except ActivityError as error:
            # The agent may already be gone (crashed container): history stays as mirrored so far.
            self._final = ReconcileReport(notes=[f"final reconcile failed: {error.cause or error}"])
        return self._final

    @workflow.update
    async def reconcile_now(self) -> ReconcileReport:
        """Run a full reconcile now (the app's "sync now"); safe beside the live stream: upserts are idempotent."""
        return await self._reconcile()

    @reconcile_now.validator
    def _validate_reconcile_now(self) -> None:
        if self._finishing:
            raise ApplicationError("the sandbox is stopping", type="SyncFinishing")

    async def _reconcile(self) -> ReconcileReport:
        report: ReconcileReport = await workflow.execute_activity(
            self.activities.reconcile.name,
            self._target,
            result_type=self.activities.reconcile.result_type,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=_FINAL_RECONCILE_RETRY,
        )
        return report

    @workflow.query
    def status(self) -> SyncStatus:
        """The mirror's state as of the last finished segment."""
        return self._status
