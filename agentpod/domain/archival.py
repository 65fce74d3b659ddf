"""Activity-log archival types shared by the archival workflow, its activity, the worker and the CLI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

# None: the database's own best size (store.archival.BATCH_SIZES).
BatchSize = Annotated[int | None, Field(ge=1, le=100_000)]


class ArchivePosition(BaseModel):
    """Keyset position in ``(created_at, id)`` order: everything up to here has been archived."""

    created_at: datetime
    id: str


class ArchivalInput(BaseModel):
    """Argument of ``ArchivalWorkflow``: the schedule sets the retention; the run fills in the rest and
    carries it across continue-as-new."""

    retention_days: int = Field(90, ge=1)
    batch_size: BatchSize = None
    # Continue-as-new after this many batches even if Temporal does not suggest it yet (bounds history).
    max_batches_per_run: int = Field(500, ge=1)
    cutoff: datetime | None = None  # fixed at the start of the first run, never recomputed
    position: ArchivePosition | None = None
    archived: int = 0
    deleted: int = 0
    batches: int = 0


class ArchiveBatchInput(BaseModel):
    """One transactional batch: rows created before ``cutoff``, after ``after``, at most ``limit``."""

    cutoff: datetime
    after: ArchivePosition | None = None
    limit: BatchSize = None


class ArchiveBatchResult(BaseModel):
    """What one batch moved. ``last`` is the newest row it took (None when nothing was left)."""

    deleted: int  # rows removed from the hot table
    archived: int  # rows newly written to the archive (an id already there is not written twice)
    last: ArchivePosition | None = None
    exhausted: bool = False  # fewer rows than the limit: nothing older than the cutoff is left


class ArchivalProgress(BaseModel):
    """Where a run is (the ``progress`` query, the Web UI's current details, the CLI)."""

    cutoff: datetime | None = None
    position: ArchivePosition | None = None
    archived: int = 0
    deleted: int = 0
    batches: int = 0
    done: bool = False


class ArchivalRun(BaseModel):
    """One run the schedule started (or an operator triggered)."""

    workflow_id: str
    status: str  # Temporal's execution status: RUNNING, COMPLETED, FAILED, ...
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    progress: ArchivalProgress | None = None


class ArchivalScheduleStatus(BaseModel):
    """What ``agentpod archive status`` shows."""

    schedule_id: str
    paused: bool
    note: str
    hour: int | None
    time_zone: str
    retention_days: int | None
    next_runs: list[datetime]
    runs: list[ArchivalRun]  # running first, then the most recent
    skipped_overlap: int
    missed_catchup: int
