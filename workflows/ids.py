"""Every Temporal id the project uses, in one place (operators search the Web UI by these)."""

from __future__ import annotations

ARCHIVAL_SCHEDULE_ID = "activity-archival-daily"
# Every few minutes: restart the chat mirrors of running sandboxes that have none (MirrorReconcilerWorkflow).
MIRROR_RECONCILE_SCHEDULE_ID = "mirror-reconcile"
# A pass started at worker start; the schedule's runs are "<this>-<scheduled time>".
MIRROR_RECONCILER_WORKFLOW_ID = "mirror-reconciler"


def sandbox_workflow_id(sandbox_id: str) -> str:
    """The entity workflow of one sandbox."""
    return f"sandbox-{sandbox_id}"


def sandbox_sync_workflow_id(sandbox_id: str) -> str:
    """The OpenCode sync loop of one running sandbox."""
    return f"sandbox-sync-{sandbox_id}"


def acp_sync_workflow_id(sandbox_id: str) -> str:
    """The ACP gateway sync loop of one running sandbox."""
    return f"acp-sync-{sandbox_id}"


def account_deletion_workflow_id(user_id: str) -> str:
    """The deletion saga of one account (a repeated request joins the same one)."""
    return f"account-deletion-{user_id}"


def session_restore_workflow_id(sandbox_id: str) -> str:
    """The restore of the OpenCode sessions one sandbox's agent lost (one at a time per sandbox)."""
    return f"session-restore-{sandbox_id}"
