"""Activity contracts: the name, argument types and result type of every activity a workflow calls.

Workflows never import activity code (it does I/O), so they call activities by name. A contract makes
that call typed: workflows run ``workflows.activity_options.execute(contract, *args, options=...)``
(mypy checks the arguments and knows the result), activities register under ``contract.name``, and
``tests/temporal/test_contracts.py`` checks every contract against the activity the worker registers.

Names and argument shapes are in the histories of running workflows: never rename one, and change an
argument type only compatibly (new fields with defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar, TypeVarTuple, overload

from agentpod.domain.account import AccountInventory, DeletionRecord, SandboxesDeleted, VerifyInput
from agentpod.domain.activity import RecordActivityInput
from agentpod.domain.archival import ArchiveBatchInput, ArchiveBatchResult
from agentpod.domain.chat import SyncTarget
from agentpod.domain.mirror_reconciler import MirrorReconcileInput, MirrorReconcileReport
from agentpod.domain.sandbox import (
    ConfigPendingInput,
    ContainerSpec,
    ContainerState,
    DeliverConfigInput,
    PushCredentialsInput,
    ReloadAgentInput,
    RemoveContainerInput,
    SandboxEndpoints,
    SetStatusInput,
    WaitHealthyInput,
)
from agentpod.domain.session_restore import (
    RestoreSessionInput,
    SaveRestoreProgressInput,
    SessionRestorePlan,
    SessionRestorePlanInput,
    SessionRestoreResult,
)

A = TypeVar("A")
B = TypeVar("B")
R = TypeVar("R")
Args = TypeVarTuple("Args")

NoResult = type(None)


@dataclass(frozen=True)
class ActivityContract(Generic[*Args, R]):
    """One activity as its callers see it: ``ActivityContract[str, ContainerSpec]`` takes a ``str`` and
    returns a ``ContainerSpec``. Declared with :func:`contract`, which fills in both kinds of types."""

    name: str
    arg_types: tuple[type[Any], ...]
    result_type: type[R]


@overload
def contract(name: str, arg: type[A], /, *, returns: type[R]) -> ActivityContract[A, R]: ...


@overload
def contract(name: str, first: type[A], second: type[B], /, *, returns: type[R]) -> ActivityContract[A, B, R]: ...


def contract(name: str, *arg_types: type[Any], returns: type[Any]) -> ActivityContract[*tuple[Any, ...], Any]:
    """The contract of activity ``name`` (one or two arguments: no activity takes more)."""
    return ActivityContract(name, arg_types, returns)


# --------------------------------------------------------------------------- SandboxWorkflow

SANDBOX_LOAD_SPEC = contract("sandbox_load_spec", str, returns=ContainerSpec)
SANDBOX_SET_STATUS = contract("sandbox_set_status", SetStatusInput, returns=bool)
SANDBOX_ENDPOINTS = contract("sandbox_endpoints", ContainerSpec, ContainerState, returns=SandboxEndpoints)
SANDBOX_DELETE_ROW = contract("sandbox_delete_row", str, returns=NoResult)
SANDBOX_PUSH_AGENT_CREDENTIALS = contract("sandbox_push_agent_credentials", PushCredentialsInput, returns=int)
SANDBOX_SET_CONFIG_PENDING = contract("sandbox_set_config_pending", ConfigPendingInput, returns=NoResult)
OPENCODE_RELOAD_WHEN_IDLE = contract("opencode_reload_when_idle", ReloadAgentInput, returns=bool)

DOCKER_ENSURE_CONTAINER = contract("docker_ensure_container", ContainerSpec, returns=ContainerState)
DOCKER_START_CONTAINER = contract("docker_start_container", str, returns=ContainerState)
DOCKER_STOP_CONTAINER = contract("docker_stop_container", str, returns=ContainerState)
DOCKER_REMOVE_CONTAINER = contract("docker_remove_container", RemoveContainerInput, returns=NoResult)
DOCKER_INSPECT_CONTAINER = contract("docker_inspect_container", str, returns=ContainerState)
DOCKER_DELIVER_AGENT_CONFIG = contract("docker_deliver_agent_config", DeliverConfigInput, returns=NoResult)
WAIT_OPENCODE_HEALTHY = contract("wait_opencode_healthy", WaitHealthyInput, returns=NoResult)

# The chat mirrors' lifecycle (activities/opencode_sync.py). sync_finish returns the last reconcile's
# report (or None); the sandbox workflow only waits for it, so its result is taken as it comes.
SYNC_ENSURE_STARTED = contract("sync_ensure_started", SyncTarget, returns=NoResult)
SYNC_FINISH = contract("sync_finish", str, returns=object)

RECORD_ACTIVITY = contract("record_activity", RecordActivityInput, returns=NoResult)

# --------------------------------------------------------------------------- AccountDeletionWorkflow

ACCOUNT_LOCK = contract("account_lock", str, returns=AccountInventory)
ACCOUNT_UNLOCK = contract("account_unlock", str, returns=NoResult)
ACCOUNT_ANONYMIZE_ACTIVITY = contract("account_anonymize_activity", str, returns=int)
ACCOUNT_DELETE_SANDBOXES = contract("account_delete_sandboxes", str, returns=SandboxesDeleted)
ACCOUNT_DELETE_DATA = contract("account_delete_data", str, returns=dict[str, int])
ACCOUNT_DELETE_USER = contract("account_delete_user", str, returns=bool)
ACCOUNT_VERIFY_DELETED = contract("account_verify_deleted", VerifyInput, returns=list[str])
ACCOUNT_RECORD_DELETION = contract("account_record_deletion", DeletionRecord, returns=NoResult)

# --------------------------------------------------------------------------- ArchivalWorkflow

ARCHIVE_ACTIVITY_BATCH = contract("archive_activity_batch", ArchiveBatchInput, returns=ArchiveBatchResult)

# --------------------------------------------------------------------------- MirrorReconcilerWorkflow

MIRROR_RECONCILE_PASS = contract("mirror_reconcile_pass", MirrorReconcileInput, returns=MirrorReconcileReport)

# --------------------------------------------------------------------------- SessionRestoreWorkflow

SESSION_RESTORE_PLAN = contract("session_restore_plan", SessionRestorePlanInput, returns=SessionRestorePlan)
SESSION_RESTORE_SESSION = contract("session_restore_session", RestoreSessionInput, returns=SessionRestoreResult)
SESSION_RESTORE_SAVE_PROGRESS = contract("session_restore_save_progress", SaveRestoreProgressInput, returns=NoResult)
