"""Temporal activities: all I/O (database, Docker, OpenCode) lives here, and every one is idempotent.

Activities are methods of small classes that receive their dependencies (database sessions,
clients) once, at worker start. :func:`build_activities` returns every activity of the project.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.account import AccountActivities
from activities.acp_sync import AcpSyncActivities
from activities.activity_log import ActivityLogActivities
from activities.archival import ArchivalActivities
from activities.docker import DockerActivities
from activities.mirror_reconciler import MirrorReconcilerActivities
from activities.opencode_sync import OpenCodeSyncActivities
from activities.resources import WorkerResources
from activities.sandboxes import SandboxActivities
from activities.session_restore import SessionRestoreActivities


def build_activities(resources: WorkerResources) -> list[Callable[..., Any]]:
    """Every activity the worker registers."""
    return [
        *ActivityLogActivities(resources).all(),
        *SandboxActivities(resources).all(),
        *DockerActivities(resources).all(),
        *OpenCodeSyncActivities(resources).all(),
        *AcpSyncActivities(resources).all(),
        *ArchivalActivities(resources).all(),
        *AccountActivities(resources).all(),
        *MirrorReconcilerActivities(resources).all(),
        *SessionRestoreActivities(resources).all(),
    ]
