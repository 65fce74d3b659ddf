"""The sandbox image runs the gateway on 4097 next to OpenCode, secret from the tmpfs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.clients import SANDBOX_IMAGE, docker_client
from tests.gateway.conftest import SECRET, auth

pytestmark = pytest.mark.docker


@pytest.fixture
def container() -> Iterator[Any]:
    client = docker_client()
    box = client.containers.run(
        SANDBOX_IMAGE,
        name=f"agentpod-gateway-test-{uuid.uuid4().hex[:10]}",
        detach=True,
        # The control plane's handshake: it writes the secrets into this tmpfs, then touches `ready`
        # (OpenCode's server password included: the entrypoint starts no open agent server).
        tmpfs={"/run/agentpod": "size=1m,mode=0700"},
        environment={"AGENTPOD_CONFIG_WAIT": "30"},
        ports={"4097/tcp": ("127.0.0.1", None)},
    )
    try:
        yield box
    finally:
        box.remove(force=True)
        client.close()


def test_image_serves_the_gateway_on_4097(container: Any) -> None:
    command = (
        f"umask 077 && printf %s {SECRET} > /run/agentpod/gateway-secret"
        " && printf %s opencode-password > /run/agentpod/opencode-password && touch /run/agentpod/ready"
    )
    exit_code, output = container.exec_run(["sh", "-c", command])
    assert exit_code == 0, output
    container.reload()
    port = container.attrs["NetworkSettings"]["Ports"]["4097/tcp"][0]["HostPort"]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, container.logs().decode(errors="replace")
            time.sleep(0.1)
        assert http.get("/agents").status_code == 401
        assert http.get("/agents", headers=auth("wrong")).status_code == 401
        agents = http.get("/agents", headers=auth()).json()["agents"]
        assert [a["id"] for a in agents] == ["opencode"]
        # The frozen gateway starts `opencode acp` inside the image and gets an ACP session from it.
        created = http.post("/sessions", json={"agent_id": "opencode"}, headers=auth(), timeout=60)
        assert created.status_code == 201, created.text
        assert created.json()["session_id"].startswith("ses_") and created.json()["cwd"] == "/workspace"
        assert http.get("/agents", headers=auth()).json()["agents"][0]["state"] == "running"
