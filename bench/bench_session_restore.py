"""Session restore: 50 sessions × 200 messages put back after the container and both volumes were lost.

A sandbox whose chats we hold (50 sessions of 200 messages, generated from the recorded OpenCode 1.18 turns in
``tests/fixtures/opencode``, stored through the mirror's own reconcile) is stopped, its container and both
volumes are removed (OpenCode's store is gone), and it is started again. Measured from the start request:

* **running**: the start request returns ``status: running`` (the restore never holds it up);
* **most recent usable**: the session with the latest activity is back in OpenCode and takes prompts again
  (our row's ``missing_upstream`` cleared, which the restore does only after OpenCode holds all of it);
* **all restored**: the sync status reports the restore ``done`` with every session restored.

**Baseline:** the same stop → destroy → start of a sandbox with no chats (a fresh start), in the same run.
Two rounds: the starter tier (1 CPU) and the builder tier (2 CPUs), ``AGENTPOD_SESSION_RESTORE_CONCURRENCY`` 2
(at most the tier's CPU count at once; the most recent session first, alone). Each session goes in through the
fast import (``store_import.js``, tens of milliseconds); what remains per session is reading it back from
OpenCode to check it and reconciling our rows.

Targets (pick-up-where-you-left-off issue): most recent usable within 5 s; all 50 within 60 s.
After each round OpenCode's listing must equal our store (sessions, and the most recent one's message ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
from rich.table import Table
from sqlalchemy import select
from temporalio.service import RPCError

from agentpod.chat_mirror.opencode import OpenCodeMirror
from agentpod.clients.opencode import OpenCodeClient, OpenCodeNotFound
from agentpod.domain.sandbox import container_name, volume_names
from agentpod.security.keyring import load_keyring
from agentpod.security.sandbox_secrets import opencode_passwords
from agentpod.store.engine import create_engine, session_factory
from agentpod.store.tables import Sandbox
from bench._result import Result, console
from bench._stack import Stack, running_stack
from workflows.ids import acp_sync_workflow_id, sandbox_sync_workflow_id, sandbox_workflow_id

IMAGE = "agentpod-sandbox:dev"
SESSIONS = 50
MESSAGES = 200
# (tier, AGENTPOD_SESSION_RESTORE_CONCURRENCY): imports run at most the tier's CPU count at once.
ROUNDS = (("starter", 2), ("builder", 2))
TIER_CPUS = {"starter": 1, "builder": 2}
USABLE_TARGET_S = 5.0
ALL_TARGET_S = 60.0
POLL_SECONDS = 0.1
TIMEOUT_SECONDS = 600.0
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "opencode" / "api_snapshot.json"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
JSON = dict[str, Any]


# --------------------------------------------------------------------------- generated chats


def _id(prefix: str, ms: int, counter: int, *, descending: bool = False) -> str:
    """An OpenCode-shaped id: 12 hex of ms*4096+counter (inverted for sessions), then 14 base62."""
    value = (ms * 0x1000 + counter) & (2**48 - 1)
    if descending:
        value = ~value & (2**48 - 1)
    return f"{prefix}_{value.to_bytes(6, 'big').hex()}" + "".join(secrets.choice(BASE62) for _ in range(14))


def generated_chats(start_ms: int) -> tuple[list[JSON], dict[str, list[JSON]]]:
    """``SESSIONS`` sessions of ``MESSAGES`` messages: the recorded plain turn and tool turn, repeated."""
    fixture = json.loads(FIXTURE.read_text())
    first = fixture["sessions"][0]
    template = fixture["messages"][first["id"]][:5]  # user, reply, user, tool call, answer
    sessions: list[JSON] = []
    messages: dict[str, list[JSON]] = {}
    ms = start_ms
    for n in range(SESSIONS):
        session_id = _id("ses", ms, n, descending=True)
        created = ms
        chat: list[JSON] = []
        last_user = ""
        while len(chat) < MESSAGES:
            for original in template:
                ms += 7
                info = copy.deepcopy(original["info"])
                info.update(id=_id("msg", ms, len(chat)), sessionID=session_id)
                info["time"] = {"created": ms, **({"completed": ms + 5} if "completed" in info["time"] else {})}
                if info["role"] == "user":
                    last_user = info["id"]
                else:
                    info["parentID"] = last_user
                parts = []
                for k, part in enumerate(original["parts"]):
                    part = copy.deepcopy(part)
                    part.update(id=_id("prt", ms, k), sessionID=session_id, messageID=info["id"])
                    parts.append(part)
                chat.append({"info": info, "parts": parts})
                if len(chat) == MESSAGES:
                    break
        session = copy.deepcopy(first)
        session.update(id=session_id, title=f"Bench chat {n}", time={"created": created, "updated": ms})
        sessions.append(session)
        messages[session_id] = chat
        ms += 1000
    return sessions, messages


class Recorded:
    """An OpenCode listing to reconcile from (the read side the mirror needs)."""

    def __init__(self, sessions: list[JSON], messages: dict[str, list[JSON]]) -> None:
        self.sessions, self.messages = sessions, messages

    async def list_sessions(self) -> list[JSON]:
        return self.sessions

    async def list_messages(self, session_id: str) -> list[JSON]:
        return self.messages[session_id]

    async def session_status(self) -> dict[str, JSON]:
        return {}

    async def events(self) -> AsyncIterator[JSON]:
        return
        yield {}


# --------------------------------------------------------------------------- driving the stack


async def _wait(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Seconds on the monotonic clock when ``check`` first held."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)
    return time.monotonic()


async def _post(stack: Stack, path: str) -> JSON:
    response = await stack.client.post(path, headers=stack.headers)
    if response.status_code != 200:
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")
    body: JSON = response.json()
    return body


def _destroy(client: Any, sandbox_id: str) -> None:
    """The container and both volumes gone (the sandbox is stopped first, so nothing recreates them)."""
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(container_name(sandbox_id)).remove(force=True)
    for volume in volume_names(sandbox_id):
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(volume).remove(force=True)


async def _lose_and_start(
    stack: Stack, client: Any, sandbox_id: str, *, tier: str = "starter"
) -> tuple[float, float, JSON]:
    """Stop, destroy, (move to ``tier``,) start: (start time, running time, the sandbox)."""
    stopped = await _post(stack, f"/api/v2/sandboxes/{sandbox_id}/stop")
    if stopped["status"] != "stopped":
        raise RuntimeError(f"stop: {stopped}")
    await asyncio.to_thread(_destroy, client, sandbox_id)
    moved = await stack.client.patch(
        f"/api/v2/sandboxes/{sandbox_id}", json={"resource_tier_id": tier}, headers=stack.headers
    )
    if moved.status_code not in (200, 202):
        raise RuntimeError(f"tier {tier}: {moved.status_code} {moved.text}")
    started = time.monotonic()
    body = await _post(stack, f"/api/v2/sandboxes/{sandbox_id}/start")
    running = time.monotonic()
    if body["status"] != "running":
        raise RuntimeError(f"start: {body}")
    return started, running, body


async def _restore_round(
    stack: Stack, client: Any, sandbox_id: str, newest: tuple[str, str], tier: str, concurrency: int
) -> dict[str, float]:
    stack.settings.session_restore_concurrency = concurrency
    ours, upstream = newest
    chat = f"/api/v2/sandboxes/{sandbox_id}/chat"
    wall_started = time.time()
    started, running, body = await _lose_and_start(stack, client, sandbox_id, tier=tier)

    port = urlsplit(str(body["opencode_url"])).port
    agent = OpenCodeClient(f"http://127.0.0.1:{port}", opencode_passwords(load_keyring(stack.settings), sandbox_id))

    async def newest_usable() -> bool:
        # Back in OpenCode, whole, and taking prompts through our API again (the flag cleared).
        try:
            await agent.get_session(upstream)
        except OpenCodeNotFound:
            return False
        if len(await agent.list_messages(upstream)) < MESSAGES:
            return False
        response = await stack.client.get(f"{chat}/sessions/{ours}", headers=stack.headers)
        return response.status_code == 200 and response.json()["session"]["missing_upstream"] is False

    async def all_restored() -> bool:
        response = await stack.client.get(f"{chat}/sync/status", headers=stack.headers)
        restore = response.json()["sync"]["restore"]
        return bool(
            restore
            and restore["state"] == "done"
            and restore["finished_at"]
            and restore["restored"] + restore["present"] >= SESSIONS
            and _epoch(restore["started_at"]) >= wall_started  # this round's restore, not the last one
        )

    async with agent:
        usable = await _wait(newest_usable, "the most recent session to be usable")
        everything = await _wait(all_restored, "every session to be restored")
        # OpenCode now holds what we hold: every session, and the newest one message for message.
        listed = {s["id"] for s in await agent.list_sessions()}
        theirs = [m["info"]["id"] for m in await agent.list_messages(upstream)]
    status = (await stack.client.get(f"{chat}/sync/status", headers=stack.headers)).json()["sync"]["restore"]
    page = await stack.client.get(f"{chat}/sessions/{ours}/messages", params={"limit": 200}, headers=stack.headers)
    mine = [m["external_message_id"] for m in page.json()["messages"]]
    if len(listed) < SESSIONS or theirs != mine or len(mine) != MESSAGES:
        raise RuntimeError(f"OpenCode differs after the restore: {len(listed)} sessions, {len(theirs)} vs {len(mine)}")
    return {
        "running_s": running - started,
        "usable_s": usable - started,
        "all_s": everything - started,
        "failed": float(status["failed"]),
    }


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _end_workflows(stack: Stack, sandbox_ids: list[str]) -> None:
    for sandbox_id in sandbox_ids:
        for workflow_id in (
            sandbox_workflow_id(sandbox_id),
            sandbox_sync_workflow_id(sandbox_id),
            acp_sync_workflow_id(sandbox_id),
        ):
            with contextlib.suppress(RPCError):
                await stack.temporal.client.get_workflow_handle(workflow_id).terminate("benchmark finished")


async def run() -> list[Result]:
    client = docker.from_env()
    client.images.get(IMAGE)
    sandbox_ids: list[str] = []
    async with running_stack(sandbox_image=IMAGE) as stack:
        try:
            # A fresh start: a sandbox with no chats, through the same stop → destroy → start.
            fresh = await stack.create_sandbox(auto_start=True)
            sandbox_ids.append(fresh["id"])
            started, running, _ = await _lose_and_start(stack, client, fresh["id"])
            fresh_running = running - started

            held = await stack.create_sandbox(auto_start=True)
            sandbox_ids.append(held["id"])
            await _post(stack, f"/api/v2/sandboxes/{held['id']}/stop")
            console.print(f"seeding {SESSIONS} sessions × {MESSAGES} messages …")
            sessions, messages = generated_chats(int(time.time() * 1000) - 86_400_000)
            engine = create_engine(stack.settings.resolved_database_url)
            try:
                db_sessions = session_factory(engine)
                async with db_sessions() as db:
                    user_id = await db.scalar(select(Sandbox.user_id).where(Sandbox.id == held["id"]))
                assert user_id is not None
                mirror = OpenCodeMirror(db_sessions, sandbox_id=held["id"], user_id=user_id)
                await mirror.reconcile(Recorded(sessions, messages))
            finally:
                await engine.dispose()
            listed = (
                await stack.client.get(
                    f"/api/v2/sandboxes/{held['id']}/chat/sessions", params={"limit": 1}, headers=stack.headers
                )
            ).json()["sessions"]
            newest = (listed[0]["id"], listed[0]["opencode_session_id"])
            if newest[1] != sessions[-1]["id"]:
                raise RuntimeError(f"the newest session should be {sessions[-1]['id']}, not {newest[1]}")

            rounds: dict[str, dict[str, float]] = {}
            for tier, concurrency in ROUNDS:
                console.print(f"restore on the {tier} tier, concurrency {concurrency} …")
                rounds[tier] = await _restore_round(stack, client, held["id"], newest, tier, concurrency)
                console.print(f"  {rounds[tier]}")
        finally:
            await _end_workflows(stack, sandbox_ids)
            for sandbox_id in sandbox_ids:
                await asyncio.to_thread(_destroy, client, sandbox_id)

    table = Table(title=f"Session restore: {SESSIONS} sessions × {MESSAGES} messages, from the start request")
    for column in ("tier (imports at once)", "running", "most recent usable", "all restored", "failed"):
        table.add_column(column, justify="right")
    table.add_row("fresh start (no chats)", f"{fresh_running:.1f} s", "-", "-", "-")
    for (tier, concurrency), figures in zip(ROUNDS, rounds.values(), strict=True):
        table.add_row(
            f"{tier} ({min(concurrency, TIER_CPUS[tier])})",
            f"{figures['running_s']:.1f} s",
            f"{figures['usable_s']:.1f} s",
            f"{figures['all_s']:.1f} s",
            f"{figures['failed']:.0f}",
        )
    console.print(table)

    default = rounds["starter"]
    details = {"fresh_running_s": fresh_running, "rounds": rounds}
    return [
        Result(
            "restore: running (starter)",
            default["running_s"] * 1000,
            "ms",
            baseline=fresh_running * 1000,
            target="≈ fresh start",
            passed=None,
            details=details,
        ),
        Result(
            "restore: most recent usable after running (starter)",
            (default["usable_s"] - default["running_s"]) * 1000,
            "ms",
            target=f"≤ {USABLE_TARGET_S:g} s",
            passed=default["usable_s"] - default["running_s"] <= USABLE_TARGET_S,
        ),
        *(
            Result(
                f"restore: all {SESSIONS} ({tier})",
                figures["all_s"] * 1000,
                "ms",
                baseline=fresh_running * 1000,
                target=f"≤ {ALL_TARGET_S:g} s",
                passed=figures["all_s"] <= ALL_TARGET_S,
            )
            for tier, figures in rounds.items()
        ),
    ]
