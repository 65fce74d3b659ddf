"""``SessionRestoreWorkflow`` (id ``session-restore-<sandbox id>``): put back the sessions a sandbox's OpenCode lost.

A new container, or a lost ``/data`` volume, leaves OpenCode without sessions we still hold: the mirror
keeps them flagged ``missing_upstream_at``, and a prompt to one would fail. The OpenCode stream's
reconcile notices them and starts this workflow (signal-with-start ``restore``; a running one re-plans);
``POST .../chat/sessions/{id}/restore`` asks for one session through the ``restore_session`` update.
The sandbox is ``running`` meanwhile: nothing waits for the restore.

Steps: plan (one activity: which sessions, in which order: requested ones, then families by their latest
activity, newest first, each parent before its children), then one idempotent activity per session (it
checks OpenCode first: a session already there whole is not imported again): the first alone, then a
few at a time (``concurrency``, at most the sandbox's CPUs: each import is a CPU-bound process in the
container), a child never before its parent. A crash resumes by replay: the loop goes on over the
remaining sessions. A sandbox that stops ends the restore (``stopped``); the next reconcile starts it again.

Progress: the Web UI's current details (every change), the ``progress`` query, memo ``progress`` and the
``AgentpodStatus`` search attribute (at start and end), and the sandbox's sync status
(``SyncStatus.restore``, written by an activity after each session). The caller side is
:mod:`workflows.session_restore_client`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.activity_options import ActivityOptions, execute

with workflow.unsafe.imports_passed_through():
    from agentpod.domain.contracts import (
        SESSION_RESTORE_PLAN,
        SESSION_RESTORE_SAVE_PROGRESS,
        SESSION_RESTORE_SESSION,
    )
    from agentpod.domain.session_restore import (
        RestoreOutcome,
        RestoreSessionInput,
        SaveRestoreProgressInput,
        SessionRestoreInput,
        SessionRestoreItem,
        SessionRestorePlanInput,
        SessionRestoreProgress,
        SessionRestoreRequest,
        SessionRestoreResult,
    )

PROGRESS_MEMO = "progress"
STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("AgentpodStatus")
# The session activity's error type when the sandbox is not running (or gone): the whole restore stops.
SANDBOX_NOT_RUNNING = "SandboxNotRunning"
MAX_CONCURRENCY = 8

_DB = ActivityOptions(timedelta(seconds=60), RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=10)))
# An import is one `opencode import` in the container (a second or two); a session that still fails after
# three tries is reported failed and the others go on.
_RESTORE = ActivityOptions(
    timedelta(minutes=5),
    RetryPolicy(
        initial_interval=timedelta(seconds=2), maximum_attempts=3, non_retryable_error_types=[SANDBOX_NOT_RUNNING]
    ),
    heartbeat=timedelta(seconds=30),
)


@workflow.defn
class SessionRestoreWorkflow:
    """Restore one sandbox's lost OpenCode sessions into its OpenCode, newest first."""

    @workflow.init
    def __init__(self, data: SessionRestoreInput) -> None:
        self._sandbox_id = data.sandbox_id
        self._concurrency = max(1, min(MAX_CONCURRENCY, data.concurrency))
        self._cpu_cores: int | None = None
        self._queue: list[SessionRestoreItem] = list(data.queue)
        # dicts, not sets: insertion order keeps every iteration deterministic
        self._attempted: dict[str, None] = dict.fromkeys(data.attempted)
        self._progress = data.progress.model_copy(deep=True) if data.progress else SessionRestoreProgress()
        self._requested: list[str] = []
        self._plan_wanted = True
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        self._results: dict[str, SessionRestoreResult] = {}
        self._stopped: str | None = None
        self._changed = False
        self._dirty = False
        self._saving: asyncio.Future[None] | None = None

    @workflow.run
    async def run(self, data: SessionRestoreInput) -> SessionRestoreProgress:
        """Restore until nothing is left (or the sandbox stops); returns the final progress."""
        progress = self._progress
        if progress.started_at is None:
            progress.started_at = workflow.now()
        progress.state = "restoring"
        self._announce()
        while True:
            await self._work()
            progress.state = "stopped" if self._stopped is not None else "done"
            progress.current = []
            progress.finished_at = progress.updated_at = workflow.now()
            await self._save()
            if self._plan_wanted and self._stopped is None:
                # Asked for more while the last progress was being written: go on.
                progress.state, progress.finished_at = "restoring", None
                continue
            break
        self._announce()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return progress

    # ------------------------------------------------------------------ requests

    @workflow.signal
    def restore(self, request: SessionRestoreRequest) -> None:
        """Restore these sessions first; with none, look again for missing sessions (a reconcile found some)."""
        if self._stopped is not None:
            return  # the next reconcile starts a new restore once the sandbox runs again
        self._requested += [session_id for session_id in request.session_ids if session_id not in self._requested]
        self._plan_wanted = True

    @workflow.update
    async def restore_session(self, session_id: str) -> SessionRestoreResult:
        """Restore one session now (ahead of the others) and answer with its outcome."""
        if session_id not in self._in_flight:
            self._results.pop(session_id, None)
            if session_id not in self._requested:
                self._requested.append(session_id)
            self._plan_wanted = True
        await workflow.wait_condition(lambda: session_id in self._results)
        return self._results[session_id]

    @restore_session.validator
    def _validate_restore_session(self, session_id: str) -> None:
        if self._stopped is not None:
            raise ApplicationError(f"the restore stopped: {self._stopped}", type=SANDBOX_NOT_RUNNING)

    @workflow.query
    def progress(self) -> SessionRestoreProgress:
        """Where the restore stands."""
        return self._progress

    # ------------------------------------------------------------------ the loop

    async def _work(self) -> None:
        """Plan, launch and collect until nothing is queued, running or being written."""
        while True:
            if self._plan_wanted and self._stopped is None:
                await self._plan()
                continue
            if self._continue_as_new_due():
                if not self._in_flight and not self._saving_now():
                    await self._save()
                    workflow.continue_as_new(
                        SessionRestoreInput(
                            sandbox_id=self._sandbox_id,
                            concurrency=self._concurrency,
                            queue=self._queue,
                            attempted=list(self._attempted),
                            progress=self._progress,
                        )
                    )
            else:
                self._launch()
            self._save_soon()
            planning = self._plan_wanted and self._stopped is None
            idle = not self._in_flight and (not self._queue or self._stopped is not None)
            if idle and not self._saving_now() and not planning:
                return
            await workflow.wait_condition(lambda: self._changed or (self._plan_wanted and self._stopped is None))
            self._changed = False

    def _continue_as_new_due(self) -> bool:
        # Only with work left, and not while an update waits for a queued session (it gets its answer here).
        return (
            bool(self._queue)
            and workflow.info().is_continue_as_new_suggested()
            and workflow.all_handlers_finished()
            and not self._requested
            and self._stopped is None
        )

    async def _plan(self) -> None:
        self._plan_wanted = False
        requested, self._requested = self._requested, []
        plan = await execute(
            SESSION_RESTORE_PLAN,
            SessionRestorePlanInput(sandbox_id=self._sandbox_id, requested=requested),
            options=_DB,
        )
        self._cpu_cores = plan.cpu_cores
        planned = {item.session_id: item for item in plan.items}
        queued = {item.session_id: item for item in self._queue}
        # Requested sessions go first, each after its lost ancestors (the plan lists them too).
        first: dict[str, SessionRestoreItem] = {}
        for session_id in requested:
            chain: list[SessionRestoreItem] = []
            item = planned.get(session_id)
            while item is not None and item.session_id not in first and item not in chain:
                chain.append(item)
                item = planned.get(item.parent_id) if item.parent_id else None
            for ancestor in reversed(chain):
                if ancestor.session_id not in self._in_flight:
                    first[ancestor.session_id] = ancestor
        for item in plan.items:
            if item.session_id in first or item.session_id in self._in_flight:
                queued.pop(item.session_id, None)
            elif item.session_id not in queued and item.session_id not in self._attempted:
                queued[item.session_id] = item
        self._queue = [*first.values(), *(item for key, item in queued.items() if key not in first)]
        for session_id in requested:
            if session_id not in planned and session_id not in self._in_flight:
                self._finish_one(
                    SessionRestoreResult(
                        session_id=session_id,
                        outcome=RestoreOutcome.SKIPPED,
                        detail="not an OpenCode session of this sandbox that we hold",
                    )
                )
        self._recount()
        self._changed = True

    def _next_ready(self) -> SessionRestoreItem | None:
        """The first queued session whose parent is neither running nor queued ahead of it."""
        ahead = set(self._in_flight)
        for item in self._queue:
            if item.parent_id is None or item.parent_id not in ahead:
                return item
            ahead.add(item.session_id)
        return None

    def _limit(self) -> int:
        """Imports at once: the setting, at most the sandbox's CPUs (more would only compete for them), and
        the very first alone (the most recent session is usable soonest)."""
        if self._progress.finished == 0:
            return 1
        return max(1, min(self._concurrency, self._cpu_cores or self._concurrency))

    def _launch(self) -> None:
        if self._stopped is not None:
            return
        while len(self._in_flight) < self._limit():
            item = self._next_ready()
            if item is None:
                break
            self._queue.remove(item)
            self._attempted[item.session_id] = None
            self._in_flight[item.session_id] = asyncio.ensure_future(self._restore_one(item))
        self._recount()

    async def _restore_one(self, item: SessionRestoreItem) -> None:
        try:
            result = await execute(
                SESSION_RESTORE_SESSION,
                RestoreSessionInput(sandbox_id=self._sandbox_id, session_id=item.session_id),
                options=_RESTORE,
            )
        except ActivityError as error:
            cause = error.cause
            detail = cause.message if isinstance(cause, ApplicationError) else str(cause or error)
            if isinstance(cause, ApplicationError) and cause.type == SANDBOX_NOT_RUNNING:
                self._stop(detail)
            failed = RestoreOutcome.FAILED
            result = SessionRestoreResult(session_id=item.session_id, outcome=failed, detail=detail[:500])
        self._in_flight.pop(item.session_id, None)
        self._finish_one(result)

    def _finish_one(self, result: SessionRestoreResult) -> None:
        self._results[result.session_id] = result
        self._progress.count(result)
        self._recount()
        self._dirty = self._changed = True

    def _stop(self, reason: str) -> None:
        """The sandbox stopped: nothing more is launched; whoever waits for a queued session is answered."""
        if self._stopped is not None:
            return
        self._stopped = reason
        self._progress.last_error = reason
        waiting = [item.session_id for item in self._queue] + self._requested
        self._queue, self._requested = [], []
        for session_id in waiting:
            self._results[session_id] = SessionRestoreResult(
                session_id=session_id, outcome=RestoreOutcome.FAILED, detail=f"not restored: {reason}"
            )

    def _recount(self) -> None:
        progress = self._progress
        progress.current = list(self._in_flight)
        progress.total = progress.finished + len(self._in_flight) + len(self._queue)
        progress.updated_at = workflow.now()
        self._show()

    # ------------------------------------------------------------------ progress

    def _saving_now(self) -> bool:
        return self._saving is not None and not self._saving.done()

    def _save_soon(self) -> None:
        """Write the progress into the sync status when it changed (one write at a time)."""
        if self._dirty and not self._saving_now():
            self._dirty = False
            self._saving = asyncio.ensure_future(self._save_and_wake())

    async def _save_and_wake(self) -> None:
        await self._save()
        self._changed = True

    async def _save(self) -> None:
        progress = self._progress.model_copy(deep=True)
        await execute(
            SESSION_RESTORE_SAVE_PROGRESS,
            SaveRestoreProgressInput(sandbox_id=self._sandbox_id, progress=progress),
            options=_DB,
        )

    def _announce(self) -> None:
        """Memo and search attribute (each change is a history event, so only at start and end)."""
        progress = self._progress
        workflow.upsert_memo({PROGRESS_MEMO: progress})
        status = "restoring sessions" if progress.state == "restoring" else f"restore {progress.state}"
        workflow.upsert_search_attributes([STATUS_ATTRIBUTE.value_set(status)])
        self._show()

    def _show(self) -> None:
        """The Web UI's current details (free: no history event)."""
        p = self._progress
        lines = [
            f"**Sessions of sandbox {self._sandbox_id}:** {p.finished} of {p.total} done ({p.state})",
            f"restored {p.restored} · already there {p.present} · skipped {p.skipped} · failed {p.failed}",
        ]
        if p.current:
            lines.append("**Now:** " + ", ".join(p.current))
        if p.last_error:
            lines.append(f"**Last error:** {p.last_error}")
        workflow.set_current_details("\n\n".join(lines))
