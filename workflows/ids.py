"""Every Temporal id the project uses, in one place (operators search the Web UI by these)."""

from __future__ import annotations

ARCHIVAL_SCHEDULE_ID = "activity-archival-daily"


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
