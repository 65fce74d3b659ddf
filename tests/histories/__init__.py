"""Saved workflow histories, replayed in CI so a change that breaks determinism fails a test.

Refresh them with ``AGENTPOD_SAVE_HISTORIES=1 make test PYTEST_ARGS='-k full_life'`` when a workflow
changes *on purpose* (and guard the change with ``workflow.patched`` if old runs may still be open).
"""

from __future__ import annotations

import os
from pathlib import Path

from temporalio.client import WorkflowHistory

HISTORIES_DIR = Path(__file__).parent


def save_history_if_asked(name: str, history: WorkflowHistory) -> None:
    """Write ``history`` as ``<name>.json`` when AGENTPOD_SAVE_HISTORIES is set."""
    if os.environ.get("AGENTPOD_SAVE_HISTORIES"):
        (HISTORIES_DIR / f"{name}.json").write_text(history.to_json())
