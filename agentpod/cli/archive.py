"""``agentpod archive``: the daily activity-log archival (``--now`` runs it, ``status`` shows it)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, NoReturn

import typer

from agentpod.domain.archival import ArchivalProgress, ArchivalRun, ArchivalScheduleStatus
from workflows.ids import ARCHIVAL_SCHEDULE_ID

if TYPE_CHECKING:
    from temporalio.client import Client

app = typer.Typer(help="Activity-log archival (the daily Temporal schedule).", invoke_without_command=True)

Echo = Callable[[str], None]


@app.callback()
def archive(
    ctx: typer.Context,
    now: bool = typer.Option(False, "--now", help="Run the archival now (through the schedule, even if paused)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the run until it finishes."),
) -> None:
    """Run the archival now, or see the schedule and its runs (`agentpod archive status`)."""
    if ctx.invoked_subcommand is not None:
        return
    if not now:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    _exit(asyncio.run(_with_client(lambda client: run_now(client, typer.echo, wait=wait))))


@app.command()
def status() -> None:
    """The schedule (paused? next runs?) and the running and latest runs with their progress."""
    _exit(asyncio.run(_with_client(lambda client: show_status(client, typer.echo))))


def _exit(code: int) -> NoReturn:
    # The Temporal core can abort in interpreter teardown after a clean run (sdk-python#300,
    # "PyGILState_Release"): leave without running it, as `agentpod worker` does.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _with_client(action: Callable[[Client], Awaitable[int]]) -> int:
    # Imported here: `agentpod --help` should not pay for loading the Temporal SDK.
    from agentpod import temporal
    from agentpod.settings import get_settings
    from workflows.archival_client import ScheduleMissingError

    settings = get_settings()
    try:
        client = await temporal.connect(settings)
    except RuntimeError as error:  # the SDK's "failed client connect"
        typer.echo(f"cannot reach Temporal at {settings.temporal_address}: {error}", err=True)
        return 2
    try:
        return await action(client)
    except ScheduleMissingError as error:
        typer.echo(f"{error} (`agentpod worker` creates it)", err=True)
        return 1


def describe_progress(progress: ArchivalProgress | None) -> str:
    """One line: what a run has done so far."""
    if progress is None:
        return "no progress reported yet"
    up_to = progress.position.created_at.isoformat(timespec="seconds") if progress.position else "-"
    cutoff = progress.cutoff.isoformat(timespec="seconds") if progress.cutoff else "-"
    return (
        f"archived {progress.archived}, removed {progress.deleted} in {progress.batches} batches "
        f"(cutoff {cutoff}, up to {up_to}){' - done' if progress.done else ''}"
    )


async def run_now(
    client: Client,
    echo: Echo,
    *,
    wait: bool = True,
    poll: timedelta = timedelta(seconds=2),
    schedule_id: str = ARCHIVAL_SCHEDULE_ID,
) -> int:
    """Trigger a run and (with ``wait``) print its progress until it ends. Exit code 0 when it completed."""
    from workflows.archival import ArchivalWorkflow
    from workflows.archival_client import trigger_archival

    workflow_id = await trigger_archival(client, schedule_id=schedule_id)
    echo(f"archival run {workflow_id} started (Web UI: search for this workflow id)")
    if not wait:
        return 0
    handle = client.get_workflow_handle_for(ArchivalWorkflow.run, workflow_id)
    result = asyncio.ensure_future(handle.result())
    last = ""
    while True:
        done, _ = await asyncio.wait({result}, timeout=poll.total_seconds())
        if done:
            break
        try:
            line = describe_progress(await handle.query(ArchivalWorkflow.progress))
        except Exception:
            continue  # between runs of a continue-as-new chain the query can miss; try again
        if line != last:
            echo(f"  {line}")
            last = line
    try:
        echo(describe_progress(result.result()))
    except Exception as error:
        echo(f"archival run {workflow_id} failed: {error}")
        return 1
    return 0


def render_status(status: ArchivalScheduleStatus) -> list[str]:
    """Human-readable lines for ``agentpod archive status``."""
    when = f"daily at {status.hour:02d}:00 {status.time_zone}" if status.hour is not None else status.time_zone
    state = f"PAUSED ({status.note})" if status.paused else "active"
    lines = [
        f"schedule {status.schedule_id}: {state}",
        f"  {when}; rows older than {status.retention_days or '?'} days",
        "  next runs: " + (", ".join(at.isoformat(timespec="minutes") for at in status.next_runs[:3]) or "-"),
        f"  skipped (a run was still going): {status.skipped_overlap}; "
        f"missed (Temporal down past the catch-up window): {status.missed_catchup}",
    ]
    lines += [_render_run(run) for run in status.runs] or ["  no runs yet"]
    return lines


def _render_run(run: ArchivalRun) -> str:
    started = run.started_at.isoformat(timespec="seconds") if run.started_at else "-"
    return f"  {run.status:<10} {run.workflow_id} (started {started}): {describe_progress(run.progress)}"


async def show_status(client: Client, echo: Echo, *, schedule_id: str = ARCHIVAL_SCHEDULE_ID) -> int:
    """Print the schedule's status."""
    from workflows.archival_client import archival_status

    for line in render_status(await archival_status(client, schedule_id=schedule_id)):
        echo(line)
    return 0
