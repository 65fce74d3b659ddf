"""The mirror reconciler's pass: running sandboxes whose chat mirrors are not running get them back.

One pass costs one database query (the running sandboxes with their internal addresses) and one
Temporal visibility listing (the running sync workflows), whatever the fleet's size; only sandboxes
missing a mirror cost more: a start each, through ``sync_ensure_started``'s own code
(:meth:`activities.opencode_sync.OpenCodeSyncActivities.ensure_sync`), so a mirror starts exactly as
the sandbox workflow starts it. A running row without an internal address (imported from Docker
labels) gets it from the container's published ports.

A sandbox may stop while the pass starts its mirror. Each started sandbox's row is therefore read
again after its start: one that is no longer running has the mirror just started finished again, one
that moved to another address is pointed at the new one. The sandbox workflow writes the row before
it starts or finishes mirrors, so whichever of the two acts last acts on the current state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from temporalio import activity

from activities.opencode_sync import OpenCodeSyncActivities
from activities.resources import WorkerResources, heartbeating
from agentpod.clients.docker_engine import DockerEngine, DockerEngineError
from agentpod.domain.chat import SyncTarget
from agentpod.domain.contracts import MIRROR_RECONCILE_PASS
from agentpod.domain.mirror_reconciler import REPORT_SAMPLE, MirrorReconcileInput, MirrorReconcileReport
from agentpod.domain.sandbox import ACP_GATEWAY_PORT, OPENCODE_PORT
from agentpod.store.tables import Sandbox
from workflows.acp_sync import AcpSyncWorkflow
from workflows.ids import acp_sync_workflow_id, sandbox_sync_workflow_id
from workflows.opencode_sync import OpenCodeSyncWorkflow

# Statuses in which the sandbox workflow keeps a started mirror (it retargets or finishes it itself).
_MIRRORED_STATUSES = ("running", "starting", "error")
_CHUNK = 500  # ids per re-read query

_MIRROR_TYPES = ", ".join(f"'{workflow.__name__}'" for workflow in (OpenCodeSyncWorkflow, AcpSyncWorkflow))
# Every running chat mirror of the namespace, in one visibility listing.
RUNNING_MIRRORS_QUERY = f"ExecutionStatus = 'Running' AND WorkflowType IN ({_MIRROR_TYPES})"


@dataclass(slots=True)
class _Row:
    """A running sandbox as the pass sees it (its internal addresses)."""

    sandbox_id: str
    user_id: str
    opencode_url: str | None
    acp_url: str | None

    def target(self) -> SyncTarget | None:
        if not self.opencode_url:
            return None
        return SyncTarget(
            sandbox_id=self.sandbox_id, user_id=self.user_id, opencode_url=self.opencode_url, acp_url=self.acp_url
        )


class MirrorReconcilerActivities:
    """The reconciler's one activity."""

    def __init__(self, resources: WorkerResources) -> None:
        self._resources = resources
        self._sessions = resources.sessions
        self._sync = OpenCodeSyncActivities(resources)

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [self.reconcile_pass]

    @activity.defn(name=MIRROR_RECONCILE_PASS.name)
    async def reconcile_pass(self, data: MirrorReconcileInput) -> MirrorReconcileReport:
        """Start the missing mirrors of every running sandbox; idempotent (a start joins a running mirror)."""
        rows = await self._running_rows()
        running = await self._running_mirrors()
        report = MirrorReconcileReport(checked=len(rows))
        missing = [row for row in rows if not _mirrored(row, running)]
        report.already_mirrored = len(rows) - len(missing)
        activity.heartbeat(f"checked {len(rows)}, {len(missing)} without a running mirror")

        docker: list[DockerEngine] = []  # opened on first need: most passes never ask Docker
        started: dict[str, SyncTarget] = {}
        gate = asyncio.Semaphore(data.starts_at_once)

        async def start(row: _Row) -> None:
            async with gate:
                target = row.target() or await self._from_container(row, docker, report)
                if target is None:
                    report.no_address += 1
                    return
                try:
                    await self._sync.ensure_sync(target)
                except Exception as error:  # counted and reported; the next pass tries again
                    report.failed += 1
                    _note(report, f"{row.sandbox_id}: the mirror did not start: {error}")
                    return
                started[row.sandbox_id] = target
                activity.heartbeat(f"started {len(started)} of {len(missing)}")

        try:
            await asyncio.gather(*(start(row) for row in missing))
        finally:
            for engine in docker:
                await asyncio.to_thread(engine.close)
        await self._settle(started, report)
        report.started = len(started)
        report.started_sandboxes = sorted(started)[:REPORT_SAMPLE]
        activity.logger.info(
            "mirror reconcile: checked %d, started %d, no address %d, failed %d",
            report.checked,
            report.started,
            report.no_address,
            report.failed,
        )
        return report

    async def _running_rows(self) -> list[_Row]:
        async with self._sessions() as db:
            result = await db.execute(
                select(Sandbox.id, Sandbox.user_id, Sandbox.opencode_internal_url, Sandbox.acp_internal_url).where(
                    Sandbox.status == "running"
                )
            )
            return [_Row(*row) for row in result.all()]

    async def _running_mirrors(self) -> set[str]:
        """Ids of every running sync workflow: one visibility listing, paged by the server."""
        client = self._resources.temporal
        if client is None:
            raise RuntimeError("the worker was built without a Temporal client")
        return {execution.id async for execution in client.list_workflows(RUNNING_MIRRORS_QUERY)}

    async def _from_container(
        self, row: _Row, docker: list[DockerEngine], report: MirrorReconcileReport
    ) -> SyncTarget | None:
        """The addresses of a row that has none (imported from Docker labels): the container's published ports."""
        if not docker:
            docker.append(self._resources.docker_engine())
        try:
            state = await heartbeating(asyncio.to_thread(docker[0].inspect, row.sandbox_id), every=10)
        except DockerEngineError as error:
            _note(report, f"{row.sandbox_id}: no address stored and Docker did not answer: {error}")
            return None
        opencode_port = state.host_ports.get(OPENCODE_PORT)
        if not state.running or opencode_port is None:
            _note(report, f"{row.sandbox_id}: no address stored and no running container publishing OpenCode")
            return None
        acp_port = state.host_ports.get(ACP_GATEWAY_PORT)
        row.opencode_url = f"http://127.0.0.1:{opencode_port}"
        row.acp_url = f"http://127.0.0.1:{acp_port}" if acp_port else None
        return row.target()

    async def _settle(self, started: dict[str, SyncTarget], report: MirrorReconcileReport) -> None:
        """Re-read the started sandboxes: finish mirrors of those that stopped meanwhile, retarget moved ones."""
        current = await self._current_rows(list(started))
        for sandbox_id, target in list(started.items()):
            status, row = current.get(sandbox_id, (None, None))
            if status not in _MIRRORED_STATUSES:
                await self._sync.finish_sync(sandbox_id)
                del started[sandbox_id]
                report.finished_again += 1
                continue
            fresh = row.target() if row is not None else None
            if status == "running" and fresh is not None and fresh != target:
                try:
                    await self._sync.ensure_sync(fresh)
                except Exception as error:  # reported; the sandbox workflow retargets it at its next start
                    _note(report, f"{sandbox_id}: the mirror could not follow the new address: {error}")

    async def _current_rows(self, sandbox_ids: Sequence[str]) -> dict[str, tuple[str, _Row]]:
        found: dict[str, tuple[str, _Row]] = {}
        for first in range(0, len(sandbox_ids), _CHUNK):
            chunk = sandbox_ids[first : first + _CHUNK]
            async with self._sessions() as db:
                result = await db.execute(
                    select(
                        Sandbox.id,
                        Sandbox.user_id,
                        Sandbox.opencode_internal_url,
                        Sandbox.acp_internal_url,
                        Sandbox.status,
                    ).where(Sandbox.id.in_(chunk))
                )
                for sandbox_id, user_id, opencode_url, acp_url, status in result.all():
                    found[sandbox_id] = (status, _Row(sandbox_id, user_id, opencode_url, acp_url))
        return found


def _mirrored(row: _Row, running: set[str]) -> bool:
    """Every mirror the sandbox needs runs (its ACP one only when it has a gateway address)."""
    if sandbox_sync_workflow_id(row.sandbox_id) not in running:
        return False
    return not row.acp_url or acp_sync_workflow_id(row.sandbox_id) in running


def _note(report: MirrorReconcileReport, problem: str) -> None:
    if len(report.problems) < REPORT_SAMPLE:
        report.problems.append(problem)
