"""``MirrorReconcilerWorkflow``: one pass restarting the chat mirrors of running sandboxes that have none.

A running sandbox's mirrors (``sandbox-sync-<id>``, ``acp-sync-<id>``) are started by its workflow when it
starts. A sandbox imported from Docker labels, or one whose mirror an operator terminated, would stay
unmirrored until it is restarted. Run by the ``mirror-reconcile`` schedule every few minutes and once at
every worker start; the pass itself is one activity (``mirror_reconcile_pass``): the counts show in the
Web UI (current details) and in the result.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.activity_options import ActivityOptions, execute

with workflow.unsafe.imports_passed_through():
    from agentpod.domain.contracts import MIRROR_RECONCILE_PASS
    from agentpod.domain.mirror_reconciler import MirrorReconcileInput, MirrorReconcileReport

# A pass over a few thousand sandboxes takes seconds; the next scheduled pass is the real retry.
_PASS = ActivityOptions(
    timedelta(minutes=10),
    RetryPolicy(initial_interval=timedelta(seconds=5), maximum_attempts=3),
    heartbeat=timedelta(seconds=30),
)


@workflow.defn
class MirrorReconcilerWorkflow:
    """Find running sandboxes whose mirrors are not running and start those mirrors."""

    @workflow.run
    async def run(self, data: MirrorReconcileInput) -> MirrorReconcileReport:
        """One pass; the report is the result and the current details."""
        workflow.set_current_details("**Checking** which running sandboxes have no running chat mirror …")
        report = await execute(MIRROR_RECONCILE_PASS, data, options=_PASS)
        workflow.set_current_details(details(report))
        return report


def details(report: MirrorReconcileReport) -> str:
    """The report as the Web UI shows it (markdown)."""
    text = (
        f"**Checked:** {report.checked} running sandboxes · **already mirrored:** {report.already_mirrored} · "
        f"**started:** {report.started}\n\n"
        f"**No address:** {report.no_address} · **failed:** {report.failed} · "
        f"**stopped meanwhile:** {report.finished_again}"
    )
    if report.started_sandboxes:
        text += "\n\n**Mirrors started for:** " + ", ".join(report.started_sandboxes)
    if report.problems:
        text += "\n\n**Problems:**\n" + "\n".join(f"- {problem}" for problem in report.problems)
    return text
