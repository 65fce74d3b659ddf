"""``ArchivalWorkflow``: move activity rows older than the retention into the anonymized archive.

Started daily by the ``activity-archival-daily`` schedule (or by an operator: Web UI "Trigger",
``agentpod archive --now``). The cutoff is computed once, from workflow time, when the first run
starts, and carried through continue-as-new, so a run that takes hours archives one consistent set.
Each batch is one activity and one database transaction; progress shows in the Web UI (current
details) and through the ``progress`` query.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.activity_options import ActivityOptions, execute

with workflow.unsafe.imports_passed_through():
    from agentpod.domain.archival import ArchivalInput, ArchivalProgress, ArchiveBatchInput
    from agentpod.domain.contracts import ARCHIVE_ACTIVITY_BATCH

# The database may be down for a while: keep retrying (capped backoff); the next day's run is
# skipped while this one is still going (overlap policy), so nothing piles up.
_BATCH = ActivityOptions(
    timedelta(minutes=5), RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
)


@workflow.defn
class ArchivalWorkflow:
    """Archive in batches until no row older than the cutoff is left."""

    @workflow.init
    def __init__(self, data: ArchivalInput) -> None:
        self._progress = ArchivalProgress(
            cutoff=data.cutoff,
            position=data.position,
            archived=data.archived,
            deleted=data.deleted,
            batches=data.batches,
        )

    @workflow.run
    async def run(self, data: ArchivalInput) -> ArchivalProgress:
        """Loop batches; continue-as-new between batches when history grows."""
        cutoff = data.cutoff or workflow.now() - timedelta(days=data.retention_days)
        progress = self._progress
        progress.cutoff = cutoff
        self._publish()
        for _ in range(data.max_batches_per_run):
            batch_input = ArchiveBatchInput(cutoff=cutoff, after=progress.position, limit=data.batch_size)
            batch = await execute(ARCHIVE_ACTIVITY_BATCH, batch_input, options=_BATCH)
            progress.batches += 1
            progress.archived += batch.archived
            progress.deleted += batch.deleted
            progress.position = batch.last or progress.position
            progress.done = batch.exhausted
            self._publish()
            if progress.done:
                return progress
            if workflow.info().is_continue_as_new_suggested():
                break
        workflow.continue_as_new(
            data.model_copy(
                update={
                    "cutoff": cutoff,
                    "position": progress.position,
                    "archived": progress.archived,
                    "deleted": progress.deleted,
                    "batches": progress.batches,
                }
            )
        )

    @workflow.query
    def progress(self) -> ArchivalProgress:
        """How far this run (chain) has got."""
        return self._progress

    def _publish(self) -> None:
        """Progress for operators in the Web UI."""
        progress = self._progress
        position = progress.position.created_at.isoformat() if progress.position else "-"
        state = "done" if progress.done else "archiving"
        workflow.set_current_details(
            f"**{state.capitalize()}** rows created before {progress.cutoff.isoformat() if progress.cutoff else '-'}"
            f"\n\n**Archived:** {progress.archived} · **removed:** {progress.deleted} · "
            f"**batches:** {progress.batches}\n\n**Up to:** {position}"
        )
