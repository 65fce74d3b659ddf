"""The HTTP surface without a running agent: auth, the secret file, 404s, validation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest_asyncio
from agentpod_gateway.config import AgentSpec
from agentpod_gateway.core import Gateway
from agentpod_gateway.http import SecretSource
from agentpod_gateway.server import GatewayServer

from tests.gateway.conftest import SECRET, auth

# Never started by these tests: every request here is answered before an agent is needed.
IDLE_AGENTS = {"opencode": AgentSpec(id="opencode", command="/nonexistent/opencode", args=("acp",))}


@pytest_asyncio.fixture
async def secret_file(tmp_path: Path) -> Path:
    return tmp_path / "gateway-secret"


@pytest_asyncio.fixture
async def base_url(tmp_path: Path, secret_file: Path) -> AsyncIterator[str]:
    gateway = Gateway(IDLE_AGENTS, workspace=tmp_path, state_dir=tmp_path / "state")
    server = GatewayServer(gateway, SecretSource(path=secret_file), host="127.0.0.1", port=0, log_level="warning")
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


async def test_secret_file_gates_every_route_but_health(base_url: str, secret_file: Path) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        health = await http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        # Before the control plane wrote the secret nothing is open, not even with a guess.
        assert (await http.get("/agents", headers=auth())).status_code == 503

        secret_file.write_text(SECRET + "\n")  # trailing newline as `echo` writes it
        for headers in ({}, auth("wrong"), {"Authorization": SECRET}, {"Authorization": f"Basic {SECRET}"}):
            for method, path in (("GET", "/agents"), ("GET", "/events"), ("POST", "/sessions"), ("GET", "/sessions")):
                response = await http.request(method, path, headers=headers)
                assert response.status_code == 401, (headers, path)
                assert response.headers["www-authenticate"] == "Bearer"
        agents = await http.get("/agents", headers=auth())
        assert agents.status_code == 200
        assert agents.json()["agents"] == [
            {
                "id": "opencode",
                "name": "opencode",
                "state": "stopped",
                "error": None,
                "agent_info": None,
                # Unknown until the agent initialized once.
                "load_session": None,
                "resume": None,
                "restart_pending": False,
            }
        ]

        # The file is re-read when it changes (a rotated secret replaces the old one).
        secret_file.write_text("rotated-secret")
        assert (await http.get("/agents", headers=auth())).status_code == 401
        assert (await http.get("/agents", headers=auth("rotated-secret"))).status_code == 200


async def test_unknown_ids_and_bad_bodies(base_url: str, secret_file: Path) -> None:
    secret_file.write_text(SECRET)
    async with httpx.AsyncClient(base_url=base_url, headers=auth(), timeout=10) as http:
        for method, path, body in (
            ("GET", "/sessions/ses_unknown", None),
            ("POST", "/sessions/ses_unknown/prompt", {"text": "hi"}),
            ("POST", "/sessions/ses_unknown/cancel", None),
            ("GET", "/sessions/ses_unknown/history", None),
            ("POST", "/permissions/perm_unknown", {"option_id": "once"}),
        ):
            response = await http.request(method, path, json=body)
            assert response.status_code == 404, path
            assert "error" in response.json()
        assert (await http.post("/sessions", json={"agent_id": "nope"})).status_code == 404
        assert (await http.post("/sessions", json={"agent_id": "opencode", "cwd": "relative"})).status_code == 422
        assert (await http.post("/sessions", json={"agent_id": "opencode", "cwd": "/nonexistent"})).status_code == 422
        assert (await http.post("/sessions", json={})).status_code == 422
        assert (await http.post("/sessions", content=b"{not json")).status_code == 400
        assert (await http.get("/sessions")).json() == {"sessions": []}
        assert (await http.get("/permissions")).json() == {"permissions": []}
        # The agent's command does not exist: a clear 502, and the agent shows why.
        failed = await http.post("/sessions", json={"agent_id": "opencode"})
        assert failed.status_code == 502 and "cannot start" in failed.json()["error"]
        (agent,) = (await http.get("/agents")).json()["agents"]
        assert agent["state"] == "failed" and "cannot start" in agent["error"]
