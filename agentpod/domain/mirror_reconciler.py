"""The mirror reconciler's input and report: one pass over running sandboxes whose chat mirrors are not running.

A running sandbox normally has its mirrors (``sandbox-sync-<id>``, ``acp-sync-<id>``) because its workflow
starts them. One imported from Docker labels, or whose mirror an operator terminated, has none until it is
restarted; a pass finds those and starts their mirrors the way the sandbox workflow does.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

# How many sandbox ids and problems a report lists (the counts are always complete).
REPORT_SAMPLE = 20


class MirrorReconcileInput(BaseModel):
    """One pass; the defaults are what the schedule and the worker start use."""

    # Mirrors started at once (each start is one Temporal request).
    starts_at_once: int = Field(8, ge=1)


class MirrorReconcileReport(BaseModel):
    """What one pass found and did."""

    checked: int = 0  # sandboxes running in the database
    already_mirrored: int = 0  # every mirror they need was running
    started: int = 0  # sandboxes whose missing mirror(s) were started
    no_address: int = 0  # running in the database, but no OpenCode address (no published port either)
    failed: int = 0  # Temporal refused the start: tried again at the next pass
    finished_again: int = 0  # stopped while the pass started their mirror: that mirror was finished again
    started_sandboxes: list[str] = Field(default_factory=list)  # the first REPORT_SAMPLE started
    problems: list[str] = Field(default_factory=list)  # the first REPORT_SAMPLE problems
