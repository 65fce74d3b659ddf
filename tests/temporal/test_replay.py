"""Every saved history replays against the current workflow code."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.histories import HISTORIES_DIR
from workflows.registry import ALL_WORKFLOWS

HISTORIES = sorted(HISTORIES_DIR.glob("*.json"))


def test_there_are_saved_histories() -> None:
    assert HISTORIES, "no saved histories: see tests/histories/__init__.py"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_saved_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await Replayer(workflows=ALL_WORKFLOWS, data_converter=pydantic_data_converter).replay_workflow(history)
