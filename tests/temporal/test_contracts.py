"""The typed contracts between workflows and their activities, updates and saved histories."""

from __future__ import annotations

import ast
import inspect
import json
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter

from activities import build_activities
from activities.resources import WorkerResources
from agentpod.domain import contracts
from agentpod.domain.contracts import ActivityContract
from agentpod.domain.sandbox import SandboxTransition, SandboxWorkflowState
from agentpod.settings import Settings
from tests.histories import HISTORIES_DIR
from workflows.registry import ALL_WORKFLOWS
from workflows.sandbox import SandboxWorkflow
from workflows.sandbox_client import TRANSITION_UPDATES

CONTRACTS: list[ActivityContract[*tuple[Any, ...], Any]] = [
    value for value in vars(contracts).values() if isinstance(value, ActivityContract)
]
BY_NAME = {contract.name: contract for contract in CONTRACTS}
HISTORIES = sorted(HISTORIES_DIR.glob("*.json"))


def _registered(tmp_path: Path) -> dict[str, Callable[..., Any]]:
    # Building the activities touches neither the database nor Docker: an unbound session factory will do.
    resources = WorkerResources(settings=Settings(data_dir=tmp_path), sessions=async_sessionmaker(class_=AsyncSession))
    return {str(activity._Definition.must_from_callable(fn).name): fn for fn in build_activities(resources)}


def test_contract_names_are_unique() -> None:
    assert len(BY_NAME) == len(CONTRACTS) > 20


@pytest.mark.parametrize("contract", CONTRACTS, ids=[contract.name for contract in CONTRACTS])
def test_every_contract_matches_the_activity_the_worker_registers(
    contract: ActivityContract[*tuple[Any, ...], Any], tmp_path: Path
) -> None:
    implementation = _registered(tmp_path).get(contract.name)
    assert implementation is not None, f"no activity {contract.name} is registered"
    hints = typing.get_type_hints(implementation)
    parameters = tuple(hints[name] for name in inspect.signature(implementation).parameters)
    assert parameters == contract.arg_types
    if contract.result_type is not object:  # object: the workflow takes the result as it comes
        assert hints["return"] == contract.result_type


def test_workflows_call_only_activities_with_a_contract(tmp_path: Path) -> None:
    """Every workflow calls only contracted activities; the chat mirrors stream by name."""
    mirrors = {"opencode_stream_segment", "opencode_reconcile", "acp_stream_segment", "acp_reconcile"}
    assert set(_registered(tmp_path)) - mirrors == set(BY_NAME)


@pytest.mark.parametrize("transition", list(SandboxTransition))
def test_each_transition_is_sent_as_the_update_of_its_name(transition: SandboxTransition) -> None:
    name, result_type = workflow._UpdateDefinition.get_name_and_result_type(TRANSITION_UPDATES[transition])
    assert (name, result_type) == (transition.value, SandboxWorkflowState)
    assert workflow._Definition.must_from_class(SandboxWorkflow).updates[name].name == transition.value


def test_update_signal_and_query_names_are_unchanged() -> None:
    """Saved histories and operators in the Web UI use these names."""
    definition = workflow._Definition.must_from_class(SandboxWorkflow)
    assert (definition.name, set(definition.updates), set(definition.signals), set(definition.queries)) == (
        "SandboxWorkflow",
        {"start", "stop", "reconfigure", "delete"},
        {"operator_stop", "operator_start", "agent_config_changed"},
        {"describe"},
    )
    assert {workflow._Definition.must_from_class(cls).name for cls in ALL_WORKFLOWS} == {
        "SandboxWorkflow",
        "OpenCodeSyncWorkflow",
        "AcpSyncWorkflow",
        "ArchivalWorkflow",
        "AccountDeletionWorkflow",
        "MirrorReconcilerWorkflow",
        "SessionRestoreWorkflow",
    }


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_saved_activity_inputs_still_decode_into_their_contracts(path: Path) -> None:
    """Inputs already in running workflows' histories reach today's activities: same arguments, no field lost."""
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    converter = pydantic_data_converter.payload_converter
    checked = 0
    for event in history.events:
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        scheduled = event.activity_task_scheduled_event_attributes
        contract = BY_NAME.get(scheduled.activity_type.name)
        if contract is None:  # a chat mirror's stream activity
            continue
        payloads = list(scheduled.input.payloads)
        values = converter.from_payloads(payloads, list(contract.arg_types))
        assert len(values) == len(contract.arg_types)
        for payload, value in zip(payloads, values, strict=True):
            saved = json.loads(payload.data)
            if isinstance(saved, dict):
                assert set(saved) <= set(json.loads(converter.to_payloads([value])[0].data)), contract.name
        checked += 1
    assert checked


def _imported_modules(module: object) -> set[str]:
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_workflow_modules_import_only_stdlib_temporalio_and_domain() -> None:
    """What Temporal's sandbox re-imports for every run stays deterministic and small (no I/O libraries)."""
    modules = {
        inspect.getmodule(cls)
        for workflow_class in ALL_WORKFLOWS
        for cls in workflow_class.__mro__
        if cls.__module__.startswith("workflows.")
    }
    assert len(modules) >= len(ALL_WORKFLOWS)
    helpers = {"workflows.activity_options", "workflows.stream_sync"}
    for module in modules:
        for name in _imported_modules(module) | _imported_modules(sys.modules["workflows.activity_options"]):
            allowed = name.split(".")[0] in sys.stdlib_module_names | {"temporalio"}
            assert allowed or name.startswith("agentpod.domain") or name in helpers, (module, name)
