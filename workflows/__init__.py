"""Temporal workflows: pure orchestration. Modules here import only the standard library,
``temporalio`` and ``domain`` (never SQLAlchemy, httpx or docker: I/O belongs in ``activities``).

``ALL_WORKFLOWS`` is what the worker registers.
"""

from __future__ import annotations

from workflows.account_deletion import AccountDeletionWorkflow
from workflows.acp_sync import AcpSyncWorkflow
from workflows.archival import ArchivalWorkflow
from workflows.opencode_sync import OpenCodeSyncWorkflow
from workflows.sandbox import SandboxWorkflow

ALL_WORKFLOWS: list[type] = [
    SandboxWorkflow,
    OpenCodeSyncWorkflow,
    AcpSyncWorkflow,
    ArchivalWorkflow,
    AccountDeletionWorkflow,
]
