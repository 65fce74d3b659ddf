"""Scripted user journeys over HTTP, as the mobile app would drive them.

A journey has two halves. ``live``: sign up, change preferences, create a sandbox that starts, open a chat
session and send prompts, each waiting for its reply, hold one conversation through the ACP gateway, and
change preferences again. ``delete``: delete
the account and wait until the deletion says it is done (run one iteration later, so the chat can be
compared with OpenCode's store first, and so deletions also run under chaos).

Transient failures are retried by :class:`chaos.client.ApiClient`; anything else that is not what the
app expects is recorded in ``failures`` and counted, never swallowed.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from agentpod.clients.opencode import OpenCodeClient, OpenCodeError
from agentpod.security.keyring import Keyring
from agentpod.security.sandbox_secrets import opencode_passwords
from chaos.client import ApiClient, GaveUp

SANDBOXES = "/api/v2/sandboxes"
PREFERENCES = "/api/users/me/preferences"
DELETION_PHRASE = "DELETE MY ACCOUNT"
PASSWORD = "correct horse battery staple"
FINAL_STATUSES = {"complete", "error", "cancelled", "interrupted"}
# Keywords of tests/fakes/fake_llm.py: a plain reply, a tool call and its result, reasoning, a long stream.
PROMPTS = ("hello", "TOOL please", "REASON about it", "LONG story", "hello again")


class JourneyFailed(Exception):
    """A step could not go on (recorded in the account's failures)."""


@dataclass
class Account:
    """One user of the run and everything its journey knows about it."""

    label: str  # "i3.j1"
    marker: str  # unique text in email, name, sandbox name and prompts: any copy left after deletion is found
    email: str
    user_id: str | None = None
    token: str | None = None
    sandbox_id: str | None = None
    sandbox_ids: set[str] = field(default_factory=set)  # every id seen (a resent create may make a second one)
    chat_session_ids: list[str] = field(default_factory=list)
    upstream_session_ids: dict[str, str] = field(default_factory=dict)  # our chat session id -> OpenCode's
    acp_session_ids: list[str] = field(default_factory=list)  # our ids of the sessions made through ACP
    sent: dict[str, str] = field(default_factory=dict)  # message id (202 received) -> our chat session id
    replies: Counter[str] = field(default_factory=Counter)  # complete / error / interrupted / cancelled / timeout
    user_restarts: int = 0  # times the user had to press start again (sandbox in error or stopped)
    deletion: str = "not requested"  # requested / completed / failed / answer lost / not requested
    failures: list[str] = field(default_factory=list)
    steps_done: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "user_id": self.user_id,
            "sandbox_ids": sorted(self.sandbox_ids),
            "chat_sessions": len(self.chat_session_ids),
            "acp_sessions": len(self.acp_session_ids),
            "sent": len(self.sent),
            "replies": dict(self.replies),
            "user_restarts": self.user_restarts,
            "deletion": self.deletion,
            "steps_done": self.steps_done,
            "failures": self.failures,
        }


class Journey:
    """Drives one :class:`Account` through the API."""

    def __init__(
        self,
        account: Account,
        client: ApiClient,
        rng: random.Random,
        *,
        prompts: int,
        reply_timeout: float,
        keyring: Keyring | None = None,
    ) -> None:
        self.account = account
        self.keyring = keyring  # to read OpenCode's own store when diagnosing a timeout
        self.client = client
        self.rng = rng
        self.prompts = prompts
        self.reply_timeout = reply_timeout

    def _fail(self, step: str, why: str) -> JourneyFailed:
        self.account.failures.append(f"{step}: {why}")
        return JourneyFailed(f"{self.account.label} {step}: {why}")

    @staticmethod
    def _describe(response: httpx.Response) -> str:
        return f"{response.status_code} {response.text[:300]}"

    # ------------------------------------------------------------------ first half

    async def live(self) -> None:
        """Sign up, preferences, sandbox, chat, preferences. Stops at the first step that cannot go on."""
        try:
            await self._step("sign_up", self.sign_up())
            await self._step("preferences", self.change_preferences(), required=False)
            await self._step("sandbox", self.create_sandbox())
            await self._step("chat_session", self.open_chat())
            for n in range(self.prompts):
                await self._step(f"prompt_{n + 1}", self.prompt(n), required=False)
            await self._step("acp_chat", self.acp_chat(), required=False)
            await self._step("preferences_again", self.change_preferences(), required=False)
        except JourneyFailed:
            pass

    async def _step(self, name: str, work: Any, *, required: bool = True) -> None:
        try:
            await work
        except JourneyFailed:
            if required:
                raise
            return
        except GaveUp as error:
            self.account.failures.append(f"{name}: {error}")
            if required:
                raise JourneyFailed(str(error)) from None
            return
        self.account.steps_done.append(name)

    async def sign_up(self) -> None:
        body = {"email": self.account.email, "password": PASSWORD, "name": f"Chaos {self.account.marker}"}
        response = await self.client.call("POST", "/api/auth/sign-up", json=body, auth=False)
        if response.status_code == 409:
            # Our earlier attempt got through but its answer was lost: sign in instead, as the app would.
            response = await self.client.call("POST", "/api/auth/sign-in", json=body | {"name": None}, auth=False)
        if response.status_code not in (200, 201):
            raise self._fail("sign_up", self._describe(response))
        data = response.json()
        self.account.token = self.client.token = data["token"]
        self.account.user_id = data["user"]["id"]

    async def change_preferences(self) -> None:
        wanted = {
            "theme_mode": self.rng.choice(["light", "dark", "system"]),
            "auto_refresh_interval": self.rng.randrange(5, 300),
        }
        for _ in range(3):
            current = await self.client.call("GET", PREFERENCES)
            if current.status_code != 200:
                raise self._fail("preferences", f"read: {self._describe(current)}")
            if all(current.json().get(k) == v for k, v in wanted.items()):
                return  # an earlier attempt whose answer was lost already applied it
            etag = current.headers.get("etag", "*")
            response = await self.client.call("PATCH", PREFERENCES, json=wanted, headers={"If-Match": etag})
            if response.status_code == 412:
                continue  # our own resent write, or another device: read again
            if response.status_code != 200:
                raise self._fail("preferences", f"write: {self._describe(response)}")
            if any(response.json().get(k) != v for k, v in wanted.items()):
                raise self._fail("preferences", f"answer does not hold what was written: {response.text[:300]}")
            check = await self.client.call("GET", PREFERENCES)
            if check.status_code != 200 or any(check.json().get(k) != v for k, v in wanted.items()):
                raise self._fail("preferences", f"not kept: {self._describe(check)}")
            return
        raise self._fail("preferences", "412 three times in a row")

    async def create_sandbox(self) -> None:
        name = f"sb {self.account.marker}"
        body = {"name": name, "repo_name": "demo", "auto_start": True}
        response = await self.client.call("POST", SANDBOXES, json=body)
        if response.status_code == 409 and "duplicate_name" in response.text:
            # Our earlier create went through: find it, as the app would after a reload.
            listed = await self.client.call("GET", SANDBOXES)
            found = [s for s in listed.json().get("sandboxes", []) if s["name"] == name] if listed.is_success else []
            if not found:
                raise self._fail("sandbox", f"duplicate name but not listed: {self._describe(listed)}")
            sandbox = found[0]
        elif response.status_code in (201, 202):
            sandbox = response.json()
        else:
            raise self._fail("sandbox", self._describe(response))
        self.account.sandbox_id = sandbox["id"]
        self.account.sandbox_ids.add(sandbox["id"])
        await self.ensure_running()

    async def ensure_running(self, timeout: float = 240.0) -> dict[str, Any]:
        """Wait until the sandbox runs, pressing start when it is stopped or in error (as a user would)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        path = f"{SANDBOXES}/{self.account.sandbox_id}"
        last = "-"
        while loop.time() < deadline:
            response = await self.client.call("GET", path)
            if response.status_code != 200:
                raise self._fail("sandbox", f"read: {self._describe(response)}")
            sandbox: dict[str, Any] = response.json()
            status = sandbox["status"]
            last = f"{status} {sandbox.get('error_message') or ''}".strip()
            if status == "running":
                return sandbox
            if status in ("created", "stopped", "error"):
                if status != "created":
                    self.account.user_restarts += 1
                started = await self.client.call("POST", f"{path}/start", retry_statuses=frozenset({409}), budget=150)
                if started.status_code not in (200, 202):
                    raise self._fail("sandbox", f"start: {self._describe(started)}")
                if started.status_code == 200 and started.json()["status"] == "running":
                    return dict(started.json())
            await asyncio.sleep(1.0)
        raise self._fail("sandbox", f"not running after {timeout:.0f} s (last: {last})")

    async def open_chat(self) -> None:
        path = f"{SANDBOXES}/{self.account.sandbox_id}/chat/sessions"
        for _ in range(5):
            response = await self.client.call("POST", path, json={"title": f"chat {self.account.marker}"})
            if response.status_code == 201:
                created = response.json()
                self.account.chat_session_ids.append(created["id"])
                self.account.upstream_session_ids[created["id"]] = str(created["opencode_session_id"])
                return
            if response.status_code == 409 and "sandbox_not_running" in response.text:
                await self.ensure_running()
                continue
            raise self._fail("chat_session", self._describe(response))
        raise self._fail("chat_session", "sandbox kept stopping")

    async def prompt(self, n: int) -> None:
        session_id = self.account.chat_session_ids[-1]
        text = f"{self.rng.choice(PROMPTS)} [{self.account.marker} #{n + 1}]"
        path = f"{SANDBOXES}/{self.account.sandbox_id}/chat/sessions/{session_id}/messages"
        for _ in range(5):
            response = await self.client.call("POST", path, json={"text": text})
            if response.status_code == 202:
                message_id = str(response.json()["message_id"])
                self.account.sent[message_id] = session_id
                outcome = await self._await_reply(path, message_id)
                if outcome == "timeout":
                    upstream = await self._upstream_turn(session_id, message_id)
                    if upstream == "no reply upstream":
                        # The agent itself never answered (killed right after taking the prompt; OpenCode
                        # does not resume a turn): nothing for the control plane to deliver. Reported.
                        outcome = "agent never replied"
                    else:
                        self.account.replies[outcome] += 1
                        raise self._fail(
                            f"prompt_{n + 1}",
                            f"no finished reply to {message_id} in {self.reply_timeout:.0f} s; OpenCode: {upstream}",
                        )
                self.account.replies[outcome] += 1
                return
            if response.status_code == 409 and "sandbox_not_running" in response.text:
                await self.ensure_running()
                continue
            raise self._fail(f"prompt_{n + 1}", self._describe(response))
        raise self._fail(f"prompt_{n + 1}", "sandbox kept stopping")

    async def acp_chat(self) -> None:
        """One conversation through the sandbox's ACP gateway: its reply must be mirrored like any other."""
        base = f"{SANDBOXES}/{self.account.sandbox_id}/acp"
        for _ in range(5):
            created = await self.client.call("POST", f"{base}/sessions", json={"agent_id": "opencode"})
            if created.status_code == 201:
                break
            if created.status_code == 409 and "sandbox_not_running" in created.text:
                await self.ensure_running()
                continue
            raise self._fail("acp_chat", f"create: {self._describe(created)}")
        else:
            raise self._fail("acp_chat", "sandbox kept stopping")
        session_id = str(created.json()["id"])
        self.account.acp_session_ids.append(session_id)
        text = f"hello [{self.account.marker} acp]"
        prompted = await self.client.call("POST", f"{base}/sessions/{session_id}/prompt", json={"text": text})
        # 409 acp_busy after a resend: our first attempt started the turn, its answer was lost.
        if prompted.status_code != 202 and not (prompted.status_code == 409 and "acp_busy" in prompted.text):
            raise self._fail("acp_chat", f"prompt: {self._describe(prompted)}")
        outcome = await self._await_acp_reply(session_id)
        self.account.replies[f"acp {outcome}"] += 1
        if outcome == "timeout":
            raise self._fail("acp_chat", f"no finished reply mirrored in {self.reply_timeout:.0f} s")

    async def _await_acp_reply(self, session_id: str) -> str:
        """The status of the ACP session's reply once final (``timeout`` otherwise)."""
        path = f"{SANDBOXES}/{self.account.sandbox_id}/chat/sessions/{session_id}/messages"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout
        while loop.time() < deadline:
            try:
                response = await self.client.call("GET", path, params={"limit": 50}, budget=30)
            except GaveUp:
                continue
            if response.status_code == 200:
                replies = [m for m in response.json()["messages"] if m["role"] == "assistant"]
                if replies and replies[-1]["status"] in FINAL_STATUSES:
                    return str(replies[-1]["status"])
            await asyncio.sleep(0.5)
        return "timeout"

    async def _await_reply(self, path: str, message_id: str) -> str:
        """The status of the first assistant message after ours, once final; ``timeout`` otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout
        while loop.time() < deadline:
            try:
                params = {"limit": 200, "include_raw": "true"}
                response = await self.client.call("GET", path, params=params, budget=30)
            except GaveUp:
                continue
            if response.status_code == 200:
                messages = response.json()["messages"]
                ids = [m["external_message_id"] for m in messages]
                if message_id in ids:
                    after = messages[ids.index(message_id) + 1 :]
                    replies = [m for m in after if m["role"] == "assistant"]
                    # The turn is over when the last assistant message is final (a tool call adds a second one).
                    if replies and replies[-1]["status"] in FINAL_STATUSES and replies[-1]["status"] != "complete":
                        return str(replies[-1]["status"])
                    if replies and all(m["status"] == "complete" for m in replies) and _turn_done(replies[-1]):
                        return "complete"
            await asyncio.sleep(0.5)
        return "timeout"

    async def _upstream_turn(self, session_id: str, message_id: str) -> str:
        """What OpenCode's own store says about the turn after ``message_id`` (diagnosis of a timeout)."""
        upstream_session = self.account.upstream_session_ids.get(session_id)
        try:
            sandbox = await self.client.call("GET", f"{SANDBOXES}/{self.account.sandbox_id}", budget=20)
            port = urlsplit(str(sandbox.json().get("opencode_url") or "")).port
            if not port or not upstream_session:
                return f"not readable (sandbox {sandbox.json().get('status')})"
            sandbox_id = self.account.sandbox_id
            passwords = opencode_passwords(self.keyring, sandbox_id) if self.keyring and sandbox_id else None
            async with OpenCodeClient(f"http://127.0.0.1:{port}", passwords, timeout=15) as agent:
                messages = [m["info"] for m in await agent.list_messages(upstream_session)]
                busy = upstream_session in await agent.session_status()
        except (GaveUp, OpenCodeError, OSError, ValueError) as error:
            return f"not readable ({type(error).__name__}: {error})"
        ids = [str(m["id"]) for m in messages]
        if message_id not in ids:
            return f"prompt not in OpenCode's store ({len(ids)} messages, busy={busy})"
        after = [m for m in messages[ids.index(message_id) + 1 :] if m.get("role") == "assistant"]
        if not after:
            return "still busy, no reply yet" if busy else "no reply upstream"
        last = after[-1]
        done = bool((last.get("time") or {}).get("completed")) or bool(last.get("error"))
        return f"{len(after)} assistant message(s), last {'final' if done else 'unfinished'}, busy={busy}"

    # ------------------------------------------------------------------ second half

    async def delete(self, timeout: float) -> None:
        """Delete the account and wait for the deletion to finish; then the credentials must be dead."""
        if self.account.user_id is None:
            return
        try:
            await self._delete(timeout)
        except GaveUp as error:
            self.account.failures.append(f"delete: {error}")
        except JourneyFailed:
            pass

    async def _delete(self, timeout: float) -> None:
        self.account.deletion = "requested"
        response = await self.client.call("DELETE", "/api/account", json={"confirmation": DELETION_PHRASE})
        if response.status_code == 401 and response.extensions.get("chaos_resent"):
            # The first attempt reached the server (its lock step revoked our token) but the answer was
            # lost; the app has no deletion id then. The checks still verify that it completes.
            self.account.deletion = "answer lost"
            return
        if response.status_code != 202:
            self.account.deletion = "failed"
            raise self._fail("delete", self._describe(response))
        status_url = str(response.json()["status_url"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        state = "-"
        while loop.time() < deadline:
            polled = await self.client.call("GET", status_url, auth=False)
            if polled.status_code != 200:
                raise self._fail("delete", f"status: {self._describe(polled)}")
            state = polled.json()["state"]
            if state == "completed":
                self.account.deletion = "completed"
                break
            if state in ("failed", "cancelled"):
                self.account.deletion = "failed"
                raise self._fail("delete", f"deletion {state}: {polled.text[:300]}")
            await asyncio.sleep(1.0)
        else:
            raise self._fail("delete", f"still {state} after {timeout:.0f} s")
        me = await self.client.call("GET", "/api/users/me")
        if me.status_code != 401:
            raise self._fail("delete", f"token still accepted after deletion: {self._describe(me)}")
        body = {"email": self.account.email, "password": PASSWORD}
        signed_in = await self.client.call("POST", "/api/auth/sign-in", json=body, auth=False)
        if signed_in.status_code != 401:
            raise self._fail("delete", f"sign-in after deletion: {self._describe(signed_in)}")
        self.account.steps_done.append("delete")


def _turn_done(message: dict[str, Any]) -> bool:
    """A completed assistant message that did not end in a tool call (else another message follows)."""
    info = (message.get("content") or {}).get("info") or {}
    return info.get("finish") not in ("tool-calls", "tool_calls")
