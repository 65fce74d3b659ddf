"""The gateway follows its agents file: agents added, changed and removed while it runs, with a
scripted ACP agent (``fake_acp_agent.py``) instead of a real one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from agentpod_gateway.config import DEFAULT_AGENTS, AgentSpec
from agentpod_gateway.core import AgentChanges, Gateway
from agentpod_gateway.http import SecretSource
from agentpod_gateway.server import GatewayServer
from agentpod_gateway.watch import AgentsFileWatcher

from tests.fakes.opencode_server import free_port
from tests.gateway.conftest import HEARTBEAT, REPO_ROOT, SECRET, auth
from tests.gateway.helpers import EventStream, agent_text

FAKE_AGENT = Path(__file__).with_name("fake_acp_agent.py")
POLL = 0.05


def agents_json(state: Path, agents: dict[str, dict[str, str]]) -> str:
    """An agents file running the fake agent under each id, with that id's extra env."""
    entries = {
        agent_id: {
            "name": f"Fake {agent_id}",
            "command": sys.executable,
            "args": [str(FAKE_AGENT)],
            "env": {"FAKE_ACP_STATE": str(state), **env},
        }
        for agent_id, env in agents.items()
    }
    return json.dumps({"agents": entries})


def replace_file(path: Path, content: str) -> None:
    """Write beside, then rename over: how the control plane delivers the file."""
    incoming = path.with_name(f".{path.name}.incoming")
    incoming.write_text(content)
    os.replace(incoming, path)


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@dataclass
class Reloading:
    """An in-process gateway whose watcher follows ``agents_file`` every ``POLL`` seconds."""

    gateway: Gateway
    server: GatewayServer
    agents_file: Path
    state: Path
    root: Path

    def write(self, agents: dict[str, dict[str, str]]) -> None:
        replace_file(self.agents_file, agents_json(self.state, agents))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.server.port}", headers=auth(), timeout=30)


@pytest_asyncio.fixture
async def reloading(tmp_path: Path) -> AsyncIterator[Reloading]:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    agents_file = tmp_path / "gateway-agents.json"
    state = tmp_path / "fake-agent-state"
    replace_file(agents_file, agents_json(state, {"fake-a": {"FAKE_KEY": "old-key"}}))
    watcher = AgentsFileWatcher(agents_file, interval=POLL)
    gateway = Gateway(watcher.poll() or {}, workspace=workspace, state_dir=tmp_path / "gateway-state")
    server = GatewayServer(
        gateway, SecretSource(secret=SECRET), host="127.0.0.1", port=0, heartbeat=HEARTBEAT, log_level="warning"
    )
    await server.start()
    follow = asyncio.create_task(watcher.follow(gateway))
    try:
        yield Reloading(gateway, server, agents_file, state, tmp_path)
    finally:
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow
        await server.stop()


async def agents(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/agents")
    assert response.status_code == 200
    return {agent["id"]: agent for agent in response.json()["agents"]}


async def new_session(client: httpx.AsyncClient, agent_id: str) -> str:
    response = await client.post("/sessions", json={"agent_id": agent_id})
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


async def ask(client: httpx.AsyncClient, stream: EventStream, session_id: str, text: str) -> str:
    """One complete turn; its reply text."""
    mark = stream.mark()
    response = await client.post(f"/sessions/{session_id}/prompt", json={"text": text})
    assert response.status_code == 202, response.text
    end = await stream.wait_event("session_end_turn", session_id, since=mark)
    assert end.data["reason"] == "complete", end.data
    return agent_text(stream.of_session(session_id, since=mark))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_update_agents_reports_changes_and_keeps_the_builtin(tmp_path: Path) -> None:
    spec_a = AgentSpec(id="a", command="/nonexistent/a")
    gateway = Gateway({**DEFAULT_AGENTS, "a": spec_a}, workspace=tmp_path, state_dir=tmp_path / "state")
    new_a = spec_a.model_copy(update={"env": {"KEY": "v2"}})
    changes = gateway.update_agents({"a": new_a, "b": AgentSpec(id="b", command="/nonexistent/b")})
    # `opencode` is missing from the new specs: it stays, with its built-in spec (so: unchanged).
    assert changes == AgentChanges(added=("b",), changed=("a",), removed=())
    assert str(changes) == "added b; changed a"
    assert not gateway.update_agents({"a": new_a, "b": AgentSpec(id="b", command="/nonexistent/b")})
    assert gateway.update_agents({}) == AgentChanges(removed=("a", "b"))
    assert [agent["id"] for agent in gateway.agents()] == ["opencode"]


async def test_agents_file_change_adds_an_agent(reloading: Reloading) -> None:
    async with reloading.client() as client:
        listed = await agents(client)
        assert list(listed) == ["opencode", "fake-a"]
        assert {k: listed["fake-a"][k] for k in ("state", "load_session", "resume", "restart_pending")} == {
            "state": "stopped",
            "load_session": None,  # not known before the agent initialized once
            "resume": None,
            "restart_pending": False,
        }

        reloading.write({"fake-a": {"FAKE_KEY": "old-key"}, "fake-b": {}})

        async def listed_b() -> bool:
            return "fake-b" in await agents(client)

        await wait_until(listed_b)
        session_id = await new_session(client, "fake-b")
        async with EventStream(client) as stream:
            assert await ask(client, stream, session_id, "hello") == "echo: hello"
        agent_b = (await agents(client))["fake-b"]
        assert (agent_b["name"], agent_b["state"]) == ("Fake fake-b", "running")
        assert (agent_b["load_session"], agent_b["resume"]) == (True, False)
        assert agent_b["agent_info"]["name"] == "fake-acp-agent"


async def test_env_change_waits_for_the_running_turn_then_restarts_the_agent(
    reloading: Reloading, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentpod_gateway")
    release = reloading.root / "release"
    async with reloading.client() as client, EventStream(client) as stream:
        session_id = await new_session(client, "fake-a")
        assert await ask(client, stream, session_id, "env FAKE_KEY") == "FAKE_KEY=old-key"
        old_pid = int(await ask(client, stream, session_id, "pid"))

        mark = stream.mark()
        await client.post(f"/sessions/{session_id}/prompt", json={"text": f"wait {release}"})
        await stream.wait_for(lambda f: agent_text([f]) == "waiting ", since=mark)
        reloading.write({"fake-a": {"FAKE_KEY": "new-secret-key"}})

        async def pending() -> bool:
            return bool((await agents(client))["fake-a"]["restart_pending"])

        await wait_until(pending)
        # The change is known, but the turn still runs in the old process.
        assert (await agents(client))["fake-a"]["state"] == "running" and alive(old_pid)
        assert (await client.get(f"/sessions/{session_id}")).json()["running"] is True

        release.touch()
        end = await stream.wait_event("session_end_turn", session_id, since=mark)
        assert end.data["reason"] == "complete"
        assert agent_text(stream.of_session(session_id, since=mark)) == "waiting done"

        async def replaced() -> bool:
            agent = (await agents(client))["fake-a"]
            return agent["state"] == "stopped" and not agent["restart_pending"] and not alive(old_pid)

        # Idle now: stopped without waiting for the next prompt.
        await wait_until(replaced)
        mark = stream.mark()
        # The next prompt starts a new process with the new env; the session is re-attached in it
        # (the fake agent refuses prompts for sessions it did not load).
        assert await ask(client, stream, session_id, "env FAKE_KEY") == "FAKE_KEY=new-secret-key"
        assert int(await ask(client, stream, session_id, "pid")) != old_pid
        # Re-attaching replayed nothing into the stream, and an intended stop is no error.
        kinds = [f.data["update"]["sessionUpdate"] for f in stream.events[mark:] if f.event == "session_update"]
        assert "user_message_chunk" not in kinds
        assert not [f for f in stream.events if f.event == "error"]

    applied = [r.getMessage() for r in caplog.records if "applied" in r.getMessage()]
    assert applied == [f"agents file {reloading.agents_file} applied: changed fake-a"]
    assert "new-secret-key" not in caplog.text and "old-key" not in caplog.text


async def test_removed_agent_answers_404_and_stops_once_its_turn_ends(reloading: Reloading) -> None:
    release = reloading.root / "release"
    reloading.write({"fake-a": {}, "fake-b": {}})
    async with reloading.client() as client:

        async def listed_b() -> bool:
            return "fake-b" in await agents(client)

        await wait_until(listed_b)
        async with EventStream(client) as stream:
            busy, idle = await new_session(client, "fake-b"), await new_session(client, "fake-b")
            pid = int(await ask(client, stream, busy, "pid"))
            mark = stream.mark()
            await client.post(f"/sessions/{busy}/prompt", json={"text": f"wait {release}"})
            await stream.wait_for(lambda f: agent_text([f]) == "waiting ", since=mark)

            # The file names neither fake-b nor opencode: fake-b goes, the built-in opencode stays.
            replace_file(reloading.agents_file, agents_json(reloading.state, {"fake-a": {}}))

            async def removed() -> bool:
                return list(await agents(client)) == ["opencode", "fake-a"]

            await wait_until(removed)
            assert (await client.post("/sessions", json={"agent_id": "fake-b"})).status_code == 404
            assert (await client.post(f"/sessions/{idle}/prompt", json={"text": "hi"})).status_code == 404
            assert (await client.get(f"/sessions/{idle}/history")).status_code == 404
            assert alive(pid)  # its turn still runs, and can still be cancelled
            assert (await client.post(f"/sessions/{busy}/cancel")).status_code == 202
            end = await stream.wait_event("session_end_turn", busy, since=mark)
            assert end.data["reason"] == "cancelled"

            async def stopped() -> bool:
                return not alive(pid)

            await wait_until(stopped)

            # Added back: its sessions work again, in a new process.
            reloading.write({"fake-a": {}, "fake-b": {}})
            await wait_until(listed_b)
            assert await ask(client, stream, idle, "hi") == "echo: hi"


async def test_broken_agents_file_keeps_the_current_agents(
    reloading: Reloading, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentpod_gateway")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    async def warning_after(change: Callable[[], object]) -> str:
        count = len(warnings())
        change()

        async def warned() -> bool:
            return len(warnings()) > count

        await wait_until(warned)
        return warnings()[-1]

    async with reloading.client() as client:
        before = await agents(client)
        valid = agents_json(reloading.state, {"fake-a": {"FAKE_KEY": "sk-truncated-secret"}, "fake-b": {}})
        cut_short = await warning_after(lambda: replace_file(reloading.agents_file, valid[: len(valid) // 2]))
        assert "not applied (invalid JSON at line 1" in cut_short
        assert await agents(client) == before
        wrong_type = {"agents": {"fake-b": {"command": "x", "env": {"FAKE_KEY": ["sk-listed-secret"]}}}}
        invalid = await warning_after(lambda: replace_file(reloading.agents_file, json.dumps(wrong_type)))
        assert "agents.fake-b.env.FAKE_KEY: Input should be a valid string" in invalid
        assert await agents(client) == before
        assert "secret" not in caplog.text

        # Gone: the current agents stay too; the next version that loads applies.
        assert "not found" in await warning_after(reloading.agents_file.unlink)
        assert await agents(client) == before
        reloading.write({"fake-c": {}})

        async def applied() -> bool:
            return list(await agents(client)) == ["opencode", "fake-c"]

        await wait_until(applied)


async def test_gateway_process_follows_an_agents_file_that_appears_later(tmp_path: Path) -> None:
    agents_file = tmp_path / "gateway-agents.json"  # not there yet when the gateway starts
    secret_file = tmp_path / "gateway-secret"
    secret_file.write_text(SECRET)
    (tmp_path / "workspace").mkdir()
    port = free_port()
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agentpod_gateway",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--secret-file={secret_file}",
            f"--agents={agents_file}",
            f"--agents-poll={POLL}",
            f"--state-dir={tmp_path / 'state'}",
            f"--workspace={tmp_path / 'workspace'}",
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth(), timeout=5) as client:

            async def ids() -> list[str]:
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get("/agents")
                    if response.status_code == 200:
                        return [agent["id"] for agent in response.json()["agents"]]
                assert proc.returncode is None, log_path.read_text()
                return []

            async def builtin_only() -> bool:
                return await ids() == ["opencode"]

            await wait_until(builtin_only, timeout=30)
            replace_file(agents_file, agents_json(tmp_path / "fake-state", {"fake-a": {}}))

            async def followed() -> bool:
                return await ids() == ["opencode", "fake-a"]

            await wait_until(followed)
        assert "fake-a" in log_path.read_text()  # the one line naming what changed
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)


async def test_history_is_replayed_once_per_change_and_a_crowded_agent_is_restarted_when_idle(
    reloading: Reloading,
) -> None:
    """Some agents keep a whole process for every session they open, also for each replay of one (Claude
    Code: ~230 MB each): a history nothing changed is not replayed again, and an idle agent that opened
    more than ``max_open_sessions`` is restarted."""
    entries = json.loads(agents_json(reloading.state, {"fake-a": {}}))
    entries["agents"]["fake-a"]["max_open_sessions"] = 2
    replace_file(reloading.agents_file, json.dumps(entries))

    async with reloading.client() as client, EventStream(client) as stream:

        async def limited() -> bool:
            agent = reloading.gateway._agents["fake-a"]
            return agent.spec.max_open_sessions == 2

        await wait_until(limited)
        session_id = await new_session(client, "fake-a")  # opened: 1
        first_pid = int(await ask(client, stream, session_id, "pid"))

        async def history() -> list[Any]:
            response = await client.get(f"/sessions/{session_id}/history")
            assert response.status_code == 200, response.text
            updates: list[Any] = response.json()["updates"]
            return updates

        replayed = await history()  # a replay: opened 2, within the limit
        assert await history() == replayed  # nothing changed: not replayed again (opened still 2)
        assert int(await ask(client, stream, session_id, "pid")) == first_pid

        assert len(await history()) > len(replayed)  # the turn changed it: replayed (opened 3 > 2) ...
        agent = reloading.gateway._agents["fake-a"]

        async def restarted() -> bool:
            return agent.pid is None  # ... so the idle process went

        await wait_until(restarted)
        assert not alive(first_pid)
        # The next turn starts a fresh process, which reopens the session it needs.
        assert int(await ask(client, stream, session_id, "pid")) != first_pid
