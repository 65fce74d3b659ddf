"""The four things that must be zero after every iteration, each read from its own source of truth.

* **lost messages**: OpenCode's own store in the container (its REST API) and the messages the journey
  got a 202 for, against what *our* API serves for that sandbox.
* **orphans**: containers and volumes labelled for one of this run's users whose sandbox row or user is gone.
* **stuck workflows**: open workflows that should have finished (an account deletion still running, a
  sandbox workflow whose row is gone or that sits in a transition, a chat mirror of a sandbox that no
  longer runs), and sandbox rows left in ``starting`` / ``stopping``.
* **leftover user data**: rows of deleted users in any table (found from the live schema, not from a
  list: a table added later is covered), and the user's marker text anywhere outside the activity log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import docker
from sqlalchemy import JSON, MetaData, String, Text, cast, false, func, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from agentpod.chat_mirror.opencode_mapping import is_final, message_status
from agentpod.clients.opencode import OpenCodeClient, OpenCodeError
from agentpod.domain.sandbox import ACP_GATEWAY_PORT, OPENCODE_PORT
from agentpod.security.keyring import Keyring
from agentpod.security.sandbox_secrets import opencode_passwords
from chaos.client import ApiClient, GaveUp
from chaos.journey import SANDBOXES, Account

LABEL_MANAGED = "agentpod.managed"
LABEL_USER = "agentpod.sandbox.user"
LABEL_SANDBOX = "agentpod.sandbox.id"
ACTIVITY_TABLES = {"activity_log", "activity_log_archive"}
TRANSITIONAL = {"starting", "stopping"}


@dataclass
class CheckResult:
    """One pass of every check. ``details`` says what exactly was found."""

    lost_messages: int = 0
    orphans: int = 0
    stuck_workflows: int = 0
    leftover_rows: int = 0
    # Not part of the target, but reported:
    unverifiable_sandboxes: int = 0  # a live sandbox whose agent could not be read (not running)
    stale_messages: int = 0  # ours differs from a finished upstream message (status)
    agent_dropped: int = 0  # a prompt we got a 202 for that OpenCode itself does not have
    failed_workflows: int = 0  # closed as failed / timed out / terminated since the run began
    marker_in_activity: int = 0  # anonymized activity rows that still carry a deleted user's marker text
    isolation_breaches: int = 0  # a sandbox reached another sandbox's agent port (must stay 0, whatever breaks)
    details: dict[str, list[str]] = field(default_factory=dict)

    def note(self, key: str, text: str) -> None:
        self.details.setdefault(key, []).append(text)

    @property
    def clean(self) -> bool:
        return not (self.lost_messages or self.orphans or self.stuck_workflows or self.leftover_rows) and not (
            self.unverifiable_sandboxes or self.stale_messages or self.isolation_breaches
        )

    def counts(self) -> dict[str, int]:
        return {
            "lost_messages": self.lost_messages,
            "orphans": self.orphans,
            "stuck_workflows": self.stuck_workflows,
            "leftover_rows": self.leftover_rows,
            "unverifiable_sandboxes": self.unverifiable_sandboxes,
            "stale_messages": self.stale_messages,
            "agent_dropped": self.agent_dropped,
            "failed_workflows": self.failed_workflows,
            "marker_in_activity": self.marker_in_activity,
            "isolation_breaches": self.isolation_breaches,
        }

    def as_json(self) -> dict[str, Any]:
        return {**self.counts(), "details": {k: v[:50] for k, v in self.details.items()}}


class Checker:
    """Reads the database, Docker, Temporal, the API and every sandbox's OpenCode."""

    def __init__(self, engine: AsyncEngine, temporal_address: str, api_urls: list[str], keyring: Keyring) -> None:
        self.engine = engine
        self.keyring = keyring
        self.temporal_address = temporal_address
        self.api_urls = api_urls
        self.docker = docker.from_env()
        self.known_sandboxes: set[str] = set()
        self._temporal: Client | None = None
        self._metadata: MetaData | None = None

    async def close(self) -> None:
        self.docker.close()

    async def temporal(self) -> Client:
        if self._temporal is None:
            self._temporal = await Client.connect(self.temporal_address, data_converter=pydantic_data_converter)
        return self._temporal

    async def run(
        self, live: list[tuple[Account, ApiClient]], deleted: list[Account], everyone: list[Account]
    ) -> CheckResult:
        """Every check once. ``live``: accounts whose chats are compared; ``deleted``: deletion requested."""
        result = CheckResult()
        for account in everyone:
            self.known_sandboxes |= account.sandbox_ids
        rows = await self._sandbox_rows()
        users = await self._user_ids()
        self.known_sandboxes |= {sid for sid, (uid, _) in rows.items() if uid in {a.user_id for a in everyone}}
        for account, client in live:
            await self._lost_messages(account, client, result)
        await asyncio.to_thread(self._orphans, everyone, rows, users, result)
        await self._stuck(rows, {a.user_id for a in everyone if a.user_id}, result)
        for account in deleted:
            await self._leftovers(account, result)
        await asyncio.to_thread(self._isolation, everyone, result)
        return result

    # ------------------------------------------------------------------ tenant isolation

    def _isolation(self, everyone: list[Account], result: CheckResult) -> None:
        """From inside each running sandbox (as its agent, ``docker exec``), try every other running
        sandbox's OpenCode and ACP gateway ports by container address: none may accept, whatever the
        monkey did to workers, Temporal or containers."""
        containers = []
        for name in self.our_container_names(everyone):
            with contextlib.suppress(docker.errors.NotFound):  # removed by the monkey since the listing
                containers.append(self.docker.containers.get(name))
        addresses = {
            c.name: [
                net.get("IPAddress") for net in c.attrs["NetworkSettings"]["Networks"].values() if net.get("IPAddress")
            ]
            for c in containers
        }
        for attacker in containers:
            targets = [(name, ip) for name, ips in addresses.items() if name != attacker.name for ip in ips]
            for name, ip in targets[:4]:  # a few neighbours per sandbox keep a pass short
                for port in (OPENCODE_PORT, ACP_GATEWAY_PORT):
                    try:
                        probe = attacker.exec_run(["sh", "-c", f"nc -w 2 {ip} {port} -e /bin/true"])
                    except docker.errors.APIError:
                        continue  # the attacker stopped meanwhile (the monkey): nothing was reached
                    if probe.exit_code == 0:
                        result.isolation_breaches += 1
                        result.note("isolation", f"{attacker.name} reached {name} at {ip}:{port}")

    # ------------------------------------------------------------------ database

    async def _sandbox_rows(self) -> dict[str, tuple[str, str]]:
        meta = await self.metadata()
        table = meta.tables["sandboxes"]
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(table.c.id, table.c.user_id, table.c.status))).all()
        return {str(r[0]): (str(r[1]), str(r[2])) for r in found}

    async def _user_ids(self) -> set[str]:
        meta = await self.metadata()
        table = meta.tables["user"]
        async with self.engine.connect() as conn:
            return {str(r[0]) for r in (await conn.execute(select(table.c.id))).all()}

    async def metadata(self) -> MetaData:
        """The live schema, reflected (so the leftover scan covers tables nobody told it about)."""
        if self._metadata is None:
            meta = MetaData()
            async with self.engine.connect() as conn:
                await conn.run_sync(meta.reflect)
            self._metadata = meta
        return self._metadata

    # ------------------------------------------------------------------ lost messages

    async def _lost_messages(self, account: Account, client: ApiClient, result: CheckResult) -> None:
        if account.sandbox_id is None or account.token is None:
            return
        who = account.label
        try:
            response = await client.call("GET", f"{SANDBOXES}/{account.sandbox_id}", budget=20)
        except GaveUp as error:
            result.unverifiable_sandboxes += 1
            result.note("unverifiable", f"{who}: {error}")
            return
        sandbox = response.json() if response.status_code == 200 else {}
        port = urlsplit(str(sandbox.get("opencode_url") or "")).port
        if sandbox.get("status") != "running" or not port:
            result.unverifiable_sandboxes += 1
            result.note("unverifiable", f"{who}: sandbox {sandbox.get('status', response.status_code)}")
            return
        try:
            passwords = opencode_passwords(self.keyring, account.sandbox_id)
            upstream, busy = await _upstream(f"http://127.0.0.1:{port}", passwords)
            ours = await _ours(client, account.sandbox_id)
        except (OpenCodeError, GaveUp, OSError) as error:
            result.unverifiable_sandboxes += 1
            result.note("unverifiable", f"{who}: {type(error).__name__}: {error}")
            return
        our_ids = {mid for messages in ours.values() for mid in messages}
        upstream_ids: set[str] = set()
        for session_id, messages in upstream.items():
            mine = ours.get(session_id)
            if mine is None:
                result.note("lost", f"{who}: session {session_id} ({len(messages)} messages) not served by our API")
            if mine is not None and _is_acp(mine):
                # Mirrored through the gateway: one user and one agent message per turn, keyed by turn, so
                # what must match OpenCode's store is the number of turns (the user's messages).
                missing = sum(1 for info in messages if info.get("role") == "user") - sum(
                    1 for key in mine if key.endswith("-0-user")
                )
                if missing > 0:
                    result.lost_messages += missing
                    result.note("lost", f"{who}: ACP session {session_id} lacks {missing} of OpenCode's turns")
                continue
            for info in messages:
                mid = str(info["id"])
                upstream_ids.add(mid)
                if mid not in our_ids:
                    continue
                expected = _expected_status(info, busy=session_id in busy)
                got = (mine or {}).get(mid)
                if expected is not None and got != expected:
                    result.stale_messages += 1
                    result.note("stale", f"{who}: {mid} ours {got} != upstream {expected}")
        lost = (upstream_ids | set(account.sent)) - our_ids
        result.lost_messages += len(lost)
        for mid in sorted(lost):
            where = "OpenCode has it" if mid in upstream_ids else "202 answered, OpenCode lacks it too"
            result.note("lost", f"{who}: {mid} missing from our API ({where})")
        dropped = set(account.sent) - upstream_ids
        result.agent_dropped += len(dropped)
        for mid in sorted(dropped):
            result.note("agent_dropped", f"{who}: {mid} accepted (202) but not in OpenCode's store")

    # ------------------------------------------------------------------ orphans

    def _orphans(
        self, everyone: list[Account], rows: dict[str, tuple[str, str]], users: set[str], result: CheckResult
    ) -> None:
        ours = {a.user_id for a in everyone if a.user_id}
        for container in self.docker.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=true"}):
            labels = container.labels or {}
            sandbox_id, user_id = labels.get(LABEL_SANDBOX, ""), labels.get(LABEL_USER, "")
            if user_id not in ours and sandbox_id not in self.known_sandboxes:
                continue  # someone else's (another run or a test on the same engine)
            self.known_sandboxes.add(sandbox_id)
            why = None
            if sandbox_id not in rows:
                why = "its sandbox row is gone"
            elif user_id not in users:
                why = "its user is deleted"
            if why:
                result.orphans += 1
                result.note("orphans", f"container {container.name} ({container.status}): {why}")
        for volume in self.docker.volumes.list(filters={"label": f"{LABEL_MANAGED}=true"}):
            sandbox_id = (volume.attrs.get("Labels") or {}).get(LABEL_SANDBOX, "")
            if sandbox_id in self.known_sandboxes and sandbox_id not in rows:
                result.orphans += 1
                result.note("orphans", f"volume {volume.name}: its sandbox row is gone")

    def our_container_names(self, everyone: list[Account], *, running_only: bool = True) -> list[str]:
        """Containers of this run's users (the monkey's targets; also the final cleanup)."""
        ours = {a.user_id for a in everyone if a.user_id}
        found = self.docker.containers.list(all=not running_only, filters={"label": f"{LABEL_MANAGED}=true"})
        return sorted(
            str(c.name)
            for c in found
            if (c.labels or {}).get(LABEL_USER) in ours or (c.labels or {}).get(LABEL_SANDBOX) in self.known_sandboxes
        )

    def remove_ours(self, everyone: list[Account]) -> list[str]:
        """Remove every container and volume of this run (after the figures are taken)."""
        removed = []
        for name in self.our_container_names(everyone, running_only=False):
            with contextlib.suppress(docker.errors.NotFound):
                self.docker.containers.get(name).remove(force=True)
                removed.append(name)
        for volume in self.docker.volumes.list(filters={"label": f"{LABEL_MANAGED}=true"}):
            if (volume.attrs.get("Labels") or {}).get(LABEL_SANDBOX) in self.known_sandboxes:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    volume.remove(force=True)
                    removed.append(str(volume.name))
        return removed

    # ------------------------------------------------------------------ stuck workflows

    async def _stuck(self, rows: dict[str, tuple[str, str]], ours: set[str], result: CheckResult) -> None:
        client = await self.temporal()
        async for wf in client.list_workflows('ExecutionStatus="Running"'):
            wid = wf.id
            if wid.startswith("account-deletion-"):
                result.stuck_workflows += 1
                result.note("stuck", f"{wid}: deletion still running (started {wf.start_time:%H:%M:%S})")
            elif wid.startswith(("sandbox-sync-", "acp-sync-")):
                sandbox_id = wid.removeprefix("sandbox-sync-").removeprefix("acp-sync-")
                status = rows.get(sandbox_id, ("", "deleted"))[1]
                if status != "running":
                    result.stuck_workflows += 1
                    result.note("stuck", f"{wid}: chat mirror still open, sandbox is {status}")
            elif wid.startswith("sandbox-"):
                sandbox_id = wid.removeprefix("sandbox-")
                if sandbox_id not in rows:
                    result.stuck_workflows += 1
                    result.note("stuck", f"{wid}: open, but its sandbox row is gone")
                    continue
                state = await _describe(client, wid)
                if state is None:
                    result.stuck_workflows += 1
                    result.note("stuck", f"{wid}: does not answer the describe query")
                elif state.get("in_progress") or state.get("status") in TRANSITIONAL:
                    result.stuck_workflows += 1
                    result.note("stuck", f"{wid}: in transition {state.get('in_progress')} / {state.get('status')}")
        for sandbox_id, (user_id, status) in rows.items():
            if user_id in ours and status in TRANSITIONAL:
                result.stuck_workflows += 1
                result.note("stuck", f"sandbox row {sandbox_id} left {status}")
        closed = 'ExecutionStatus="Failed" OR ExecutionStatus="TimedOut" OR ExecutionStatus="Terminated"'
        async for wf in client.list_workflows(closed):
            result.failed_workflows += 1
            result.note("failed_workflows", f"{wf.id}: {wf.status.name if wf.status else '?'}")

    # ------------------------------------------------------------------ leftovers

    async def _leftovers(self, account: Account, result: CheckResult) -> None:
        if account.user_id is None:
            return
        meta = await self.metadata()
        async with self.engine.connect() as conn:
            for table in meta.sorted_tables:
                conditions = list(_references(table, account))
                if conditions:
                    count = await conn.scalar(select(func.count()).select_from(table).where(or_(*conditions)))
                    if count:
                        result.leftover_rows += int(count)
                        result.note("leftovers", f"{account.label}: {table.name}: {count} row(s) reference the user")
                texts = [c for c in table.c if isinstance(c.type, String | Text | JSON)]
                if not texts:
                    continue
                marked = or_(*(cast(c, Text).like(f"%{account.marker}%") for c in texts))
                hits = list(conditions)  # rows already counted above are not counted twice
                # NULL-safe: a row whose user_id is NULL does not reference the user (NOT NULL would drop it).
                where = marked if not hits else marked & not_(func.coalesce(or_(*hits), false()))
                count = int(await conn.scalar(select(func.count()).select_from(table).where(where)) or 0)
                if not count:
                    continue
                if table.name in ACTIVITY_TABLES:
                    result.marker_in_activity += count
                    result.note("marker_in_activity", f"{account.label}: {table.name}: {count} row(s)")
                else:
                    result.leftover_rows += count
                    result.note("leftovers", f"{account.label}: {table.name}: {count} row(s) hold the user's text")


def _references(table: Any, account: Account) -> Iterable[Any]:
    """Conditions matching rows of ``table`` that belong to the account (by id, email or sandbox)."""
    columns = table.c
    if "user_id" in columns:
        yield columns["user_id"] == account.user_id
    if table.name == "user":
        yield columns["id"] == account.user_id
        if "email" in columns:
            yield columns["email"] == account.email
    if table.name in ACTIVITY_TABLES:
        if "entity_id" in columns:
            yield columns["entity_id"] == account.user_id
        return  # sandbox ids in anonymized activity are allowed (the trail of what happened)
    if "sandbox_id" in columns and account.sandbox_ids:
        yield columns["sandbox_id"].in_(sorted(account.sandbox_ids))


def _expected_status(info: dict[str, Any], *, busy: bool) -> str | None:
    """What our row of a finished upstream message must say; None when it may still change."""
    if is_final(info):
        return message_status(info)[0]
    return None if busy else "interrupted"


async def _upstream(base_url: str, passwords: list[str]) -> tuple[dict[str, list[dict[str, Any]]], set[str]]:
    """Every session's message infos in OpenCode's store, and the sessions busy right now."""
    async with OpenCodeClient(base_url, passwords, timeout=15) as agent:
        sessions = await agent.list_sessions()
        busy = set(await agent.session_status())
        found = {}
        for session in sessions:
            messages = await agent.list_messages(str(session["id"]))
            found[str(session["id"])] = [m["info"] for m in messages]
    return found, busy


def _is_acp(messages: dict[str, str]) -> bool:
    """Messages keyed the way the ACP mirror keys them (``t<turn>-<n>-<role>``), not by OpenCode ids."""
    return bool(messages) and all(key.startswith("t") and key[1:7].isdigit() for key in messages)


async def _ours(client: ApiClient, sandbox_id: str) -> dict[str, dict[str, str]]:
    """Per upstream session id: our messages (external id -> status), every page, as the app reads them."""
    base = f"{SANDBOXES}/{sandbox_id}/chat/sessions"
    found: dict[str, dict[str, str]] = {}
    for status in ("active", "archived", "deleted"):
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"status": status, "include_children": "true", "limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = await client.call("GET", base, params=params, budget=30)
            if page.status_code != 200:
                raise GaveUp(f"session list: {page.status_code} {page.text[:200]}")
            body = page.json()
            for session in body["sessions"]:
                # ACP sessions (source acp_gateway) are in OpenCode's store too, under the same id.
                upstream_id = session["opencode_session_id"] or session["acp_session_id"]
                found[str(upstream_id)] = await _messages(client, f"{base}/{session['id']}/messages")
            cursor = body.get("next_cursor")
            if not cursor:
                break
    return found


async def _messages(client: ApiClient, path: str) -> dict[str, str]:
    messages: dict[str, str] = {}
    before: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if before:
            params["before"] = before
        page = await client.call("GET", path, params=params, budget=30)
        if page.status_code != 200:
            raise GaveUp(f"messages: {page.status_code} {page.text[:200]}")
        body = page.json()
        for message in body["messages"]:
            messages[str(message["external_message_id"])] = str(message["status"])
        if not body["has_older"]:
            return messages
        before = body["older_cursor"]


async def _describe(client: Client, workflow_id: str) -> dict[str, Any] | None:
    with contextlib.suppress(Exception):
        handle = client.get_workflow_handle(workflow_id)
        state = await asyncio.wait_for(handle.query("describe", rpc_timeout=timedelta(seconds=10)), 15)
        return dict(state) if isinstance(state, dict) else None
    return None
