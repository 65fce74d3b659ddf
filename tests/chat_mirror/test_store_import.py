"""The fast session import (``store_import.js``) against the real OpenCode of the sandbox image: a session it
writes reads back through OpenCode's API exactly like one ``opencode import`` wrote. When a new OpenCode
release changes its store, this is the test that says so (the restore then falls back by itself)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from activities.session_restore import IMPORT_COMMAND, STORE_IMPORT_COMMAND
from agentpod.chat_mirror.restore import store_place
from agentpod.clients.docker_engine import DockerEngine
from agentpod.clients.opencode import OpenCodeClient
from agentpod.domain.sandbox import OPENCODE_PORT, container_name
from tests.clients import SANDBOX_IMAGE, docker_client, new_sandbox_id, wait_healthy

pytestmark = pytest.mark.docker

SNAPSHOT = Path(__file__).parent.parent / "fixtures" / "opencode" / "api_snapshot.json"
JSON = dict[str, Any]


def exports() -> list[JSON]:
    """The recorded sessions (a parent and its child) in ``opencode export``'s shape, parent first."""
    data: JSON = json.loads(SNAPSHOT.read_text())
    return [{"info": session, "messages": data["messages"][session["id"]]} for session in data["sessions"]]


@pytest.fixture
def agents() -> Iterator[list[tuple[str, str]]]:
    """Two bare OpenCode servers from the sandbox image (no password, empty stores): (sandbox id, URL)."""
    client = docker_client()
    started: list[tuple[str, str]] = []
    try:
        for _ in range(2):
            sandbox_id = new_sandbox_id()
            container = client.containers.run(
                SANDBOX_IMAGE,
                name=container_name(sandbox_id),
                detach=True,
                user="1000:1000",
                read_only=True,
                tmpfs={"/data": "uid=1000", "/tmp": "uid=1000", "/workspace": "uid=1000"},
                environment={"AGENTPOD_GATEWAY": "0"},
                ports={f"{OPENCODE_PORT}/tcp": ("127.0.0.1", None)},
            )
            container.reload()
            port = int(container.ports[f"{OPENCODE_PORT}/tcp"][0]["HostPort"])
            started.append((sandbox_id, f"http://127.0.0.1:{port}"))
        for _, url in started:
            wait_healthy(int(url.rsplit(":", 1)[1]))  # no password set: the one sent is ignored
        yield started
    finally:
        for sandbox_id, _ in started:
            client.containers.get(container_name(sandbox_id)).remove(force=True)
        client.close()


async def test_the_fast_import_reads_back_like_opencode_import(agents: list[tuple[str, str]]) -> None:
    (slow_id, slow_url), (fast_id, fast_url) = agents
    engine = DockerEngine()
    async with OpenCodeClient(slow_url, []) as slow, OpenCodeClient(fast_url, []) as fast:
        place = store_place(await fast.current_project(), await fast.paths())
        for export in exports():
            session_id = export["info"]["id"]
            said = engine.run_with_stdin(slow_id, IMPORT_COMMAND, json.dumps(export).encode())
            assert said.exit_code == 0 and f"Imported session: {session_id}".encode() in said.stdout, said
            for _ in range(2):  # the second time changes nothing: what exists is kept
                body = json.dumps({"project": place, "export": export}).encode()
                said = engine.run_with_stdin(fast_id, STORE_IMPORT_COMMAND, body)
                assert said.exit_code == 0 and f"Imported session: {session_id}".encode() in said.stdout, said

        assert await fast.list_sessions() == await slow.list_sessions()
        for export in exports():
            session_id = export["info"]["id"]
            assert await fast.get_session(session_id) == await slow.get_session(session_id)
            messages = await fast.list_messages(session_id)
            assert messages == await slow.list_messages(session_id)
            assert [m["info"]["id"] for m in messages] == [m["info"]["id"] for m in export["messages"]]
    engine.close()
