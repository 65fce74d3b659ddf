"""The session restore's activities: plan it, restore one session, publish the progress.

Restoring a session = rebuild it in OpenCode's export format from our stored rows
(:mod:`agentpod.chat_mirror.restore`) and write it into OpenCode's store in the container, as the agent's
user, with the same session, message and part ids, while its server runs. The fast way is
``store_import.js`` (the rows ``opencode import`` writes, inserted by the OpenCode binary running as a plain
Bun runtime: ~50 ms, where each ``opencode import`` spends 2 CPU-seconds starting OpenCode). When the store's
tables are not the ones that script knows (another OpenCode release), ``opencode import`` itself runs: the
file goes over ``docker exec`` stdin into ``/tmp`` (a tmpfs: the root filesystem is read-only). Then the
mirror reconciles the session, which clears its ``missing_upstream_at`` flag: the chat API takes prompts
for it again, and the next prompt sends the whole earlier conversation.

Idempotent: a session OpenCode already holds whole (every message and part of ours) is not imported
again; an import interrupted half way is completed by the next attempt (the import skips what exists).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from sqlalchemy import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.resources import WorkerResources, heartbeating
from agentpod.chat_mirror.opencode import OpenCodeMirror
from agentpod.chat_mirror.opencode_mapping import EPOCH
from agentpod.chat_mirror.restore import expected_parts, restore_order, session_export, store_place, upstream_covers
from agentpod.clients.docker_engine import ContainerGone, ContainerNotRunning, DockerEngineError, ExecResult
from agentpod.clients.opencode import OpenCodeClient, OpenCodeNotFound
from agentpod.domain.chat import SyncStatus
from agentpod.domain.contracts import SESSION_RESTORE_PLAN, SESSION_RESTORE_SAVE_PROGRESS, SESSION_RESTORE_SESSION
from agentpod.domain.session_restore import (
    RestoreOutcome,
    RestoreSessionInput,
    SaveRestoreProgressInput,
    SessionRestorePlan,
    SessionRestorePlanInput,
    SessionRestoreResult,
)
from agentpod.security.sandbox_secrets import opencode_passwords
from agentpod.store.base import utcnow
from agentpod.store.chat_sync import find_session, list_sessions, load_messages
from agentpod.store.sync_state import commit_sync_status
from agentpod.store.tables import ChatSyncState, ResourceTier, Sandbox
from workflows.session_restore import SANDBOX_NOT_RUNNING

HEARTBEAT_SECONDS = 2.0
# Runs in the container (busybox sh). $$ makes the file name unique per call; the trap removes the file
# however the import ends; umask 077 keeps the conversation private to the agent's user.
IMPORT_SCRIPT = (
    'f="/tmp/agentpod-restore-$$.json"; trap \'rm -f "$f"\' EXIT; umask 077; cat > "$f" && opencode import --pure "$f"'
)
IMPORT_COMMAND = ("sh", "-c", IMPORT_SCRIPT)
# The same rows without starting OpenCode (see store_import.js); stdin: {"project": ..., "export": ...}.
STORE_IMPORT_COMMAND = (
    "env",
    "BUN_BE_BUN=1",
    "opencode",
    "-e",
    resources.files("agentpod.chat_mirror").joinpath("store_import.js").read_text(),
)
# store_import.js's exit code for tables it does not know.
UNKNOWN_STORE = 3

OpenCodeFactory = Callable[[str, Sequence[str]], OpenCodeClient]


def _stopped(message: str) -> ApplicationError:
    # Not retried: the workflow ends the whole restore, and the next reconcile starts a new one.
    return ApplicationError(message, type=SANDBOX_NOT_RUNNING, non_retryable=True)


class SessionRestoreActivities:
    """The activities of ``SessionRestoreWorkflow``."""

    def __init__(self, resources: WorkerResources) -> None:
        self._sessions = resources.sessions
        self._keys = resources.keys
        self.engine = resources.docker_engine()
        # Tests substitute fakes for the engine and for OpenCode.
        self.opencode: OpenCodeFactory = OpenCodeClient

    def all(self) -> list[Callable[..., Any]]:
        """The activities this class provides."""
        return [self.plan, self.restore_session, self.save_progress]

    @activity.defn(name=SESSION_RESTORE_PLAN.name)
    async def plan(self, data: SessionRestorePlanInput) -> SessionRestorePlan:
        """Which sessions to restore, in which order (see :func:`restore_order`)."""
        async with self._sessions() as db:
            rows = await list_sessions(db, data.sandbox_id)
            cpu_cores = await db.scalar(
                select(ResourceTier.cpu_cores)
                .join(Sandbox, Sandbox.resource_tier_id == ResourceTier.id)
                .where(Sandbox.id == data.sandbox_id)
            )
        return SessionRestorePlan(items=restore_order(rows, data.requested), cpu_cores=cpu_cores)

    @activity.defn(name=SESSION_RESTORE_SAVE_PROGRESS.name)
    async def save_progress(self, data: SaveRestoreProgressInput) -> None:
        """Put the progress into the sandbox's sync status (``GET .../chat/sync/status`` shows it)."""
        status = SyncStatus(restore=data.progress)
        await commit_sync_status(self._sessions, ChatSyncState, data.sandbox_id, status, merge=True)

    @activity.defn(name=SESSION_RESTORE_SESSION.name)
    async def restore_session(self, data: RestoreSessionInput) -> SessionRestoreResult:
        """Put one session back into the sandbox's OpenCode, unless it is there already."""
        return await heartbeating(self._restore(data), every=HEARTBEAT_SECONDS)

    async def _restore(self, data: RestoreSessionInput) -> SessionRestoreResult:
        sandbox_id, session_id = data.sandbox_id, data.session_id
        async with self._sessions() as db:
            sandbox = await db.get(Sandbox, sandbox_id)
            if sandbox is None:
                raise _stopped("the sandbox no longer exists")
            if sandbox.status != "running":
                raise _stopped(f"the sandbox is {sandbox.status}")
            url, user_id = sandbox.opencode_internal_url, sandbox.user_id
            row = await find_session(db, sandbox_id, session_id)
            if row is None or row.status == "deleted":
                return SessionRestoreResult(
                    session_id=session_id, outcome=RestoreOutcome.SKIPPED, detail="no such live session of ours"
                )
            stored = await load_messages(db, row.id)
        if not url:
            raise ApplicationError("the sandbox's OpenCode address is not known yet")  # retried
        ordered = sorted(stored.values(), key=lambda m: (m.values.upstream_created_at or EPOCH, m.id))
        contents = [message.values.content for message in ordered]
        expected = expected_parts(contents)
        mirror = OpenCodeMirror(self._sessions, sandbox_id=sandbox_id, user_id=user_id)
        async with self.opencode(url, opencode_passwords(self._keys(), sandbox_id)) as client:
            if await self._holds(client, session_id, expected):
                await mirror.reconcile_session(client, session_id)
                return SessionRestoreResult(session_id=session_id, outcome=RestoreOutcome.PRESENT)
            export = session_export(row, contents, version=await client.version() or "unknown", now=utcnow())
            place = store_place(await client.current_project(), await client.paths())
            await self._import(sandbox_id, session_id, export, place)
            if not await self._holds(client, session_id, expected):
                raise ApplicationError(f"after the import OpenCode still lacks messages of {session_id}")
            # Our rows take OpenCode's copy (same ids) and the missing-upstream flag clears.
            await mirror.reconcile_session(client, session_id)
        activity.logger.info("restored %s of %s (%d messages)", session_id, sandbox_id, len(export["messages"]))
        return SessionRestoreResult(
            session_id=session_id, outcome=RestoreOutcome.RESTORED, messages=len(export["messages"])
        )

    @staticmethod
    async def _holds(client: OpenCodeClient, session_id: str, expected: dict[str, set[str]]) -> bool:
        """OpenCode has the session with every message and part of ours."""
        try:
            return upstream_covers(expected, await client.list_messages(session_id))
        except OpenCodeNotFound:
            return False

    async def _import(self, sandbox_id: str, session_id: str, export: dict[str, Any], place: dict[str, Any]) -> None:
        """Write ``export`` into the sandbox's OpenCode store at ``place`` (:func:`store_place`): the fast
        script, else ``opencode import`` (the data goes in over stdin either way)."""
        result = await self._run(sandbox_id, session_id, STORE_IMPORT_COMMAND, {"project": place, "export": export})
        if result.exit_code == UNKNOWN_STORE:
            activity.logger.warning("OpenCode's store in %s is not the one we know: opencode import runs", sandbox_id)
            result = await self._run(sandbox_id, session_id, IMPORT_COMMAND, export)
        said = (result.stdout + result.stderr).decode(errors="replace")
        # The import reports a file it cannot read on stdout and still exits 0: check what it says.
        if result.exit_code != 0 or f"Imported session: {session_id}" not in said:
            raise ApplicationError(f"opencode import of {session_id} failed ({result.exit_code}): {said[-500:]}")

    async def _run(self, sandbox_id: str, session_id: str, command: Sequence[str], data: dict[str, Any]) -> ExecResult:
        try:
            return await asyncio.to_thread(self.engine.run_with_stdin, sandbox_id, command, _json_bytes(data))
        except (ContainerGone, ContainerNotRunning) as error:
            raise _stopped(str(error)) from error
        except DockerEngineError as error:
            raise ApplicationError(f"import of {session_id}: {error}") from error  # retried


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
