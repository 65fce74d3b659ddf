"""``ALL_WORKFLOWS``: what the worker registers.

Kept out of ``workflows/__init__.py`` on purpose: Temporal's sandbox re-imports a workflow's module,
and with it its package's ``__init__``, for every workflow it runs. A package ``__init__`` importing
every workflow made each cached sync loop carry a private copy of all five workflow modules (about
a thousand objects each, scanned by every full garbage collection: the worker's lag tail).
"""

from __future__ import annotations

from workflows.account_deletion import AccountDeletionWorkflow
from workflows.acp_sync import AcpSyncWorkflow
from workflows.archival import ArchivalWorkflow
from workflows.mirror_reconciler import MirrorReconcilerWorkflow
from workflows.opencode_sync import OpenCodeSyncWorkflow
from workflows.sandbox import SandboxWorkflow
from workflows.session_restore import SessionRestoreWorkflow

ALL_WORKFLOWS: list[type] = [
    SandboxWorkflow,
    OpenCodeSyncWorkflow,
    AcpSyncWorkflow,
    ArchivalWorkflow,
    AccountDeletionWorkflow,
    MirrorReconcilerWorkflow,
    SessionRestoreWorkflow,
]
