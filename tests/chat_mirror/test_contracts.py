"""The mirrors' activity contracts name activities the worker registers, with the types those take and return."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities import build_activities
from activities.resources import WorkerResources
from agentpod.domain.chat_mirror import ACP_MIRROR, OPENCODE_MIRROR
from agentpod.settings import Settings


def test_each_mirror_names_registered_activities_with_their_types(tmp_path: Path) -> None:
    resources = WorkerResources(settings=Settings(data_dir=tmp_path), sessions=async_sessionmaker(class_=AsyncSession))
    registered = {activity._Definition.must_from_callable(fn).name: fn for fn in build_activities(resources)}
    for mirror in (OPENCODE_MIRROR, ACP_MIRROR):
        for contract in (mirror.segment, mirror.reconcile):
            implementation = registered[contract.name]
            hints = typing.get_type_hints(implementation)
            arguments = tuple(hints[name] for name in inspect.signature(implementation).parameters)
            assert (arguments, hints["return"]) == (contract.arg_types, contract.result_type), contract.name
