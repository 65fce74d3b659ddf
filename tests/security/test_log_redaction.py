"""Credentials in URLs never reach the logs: the deletion-status id, tokens in query strings."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI

from agentpod.logging import RedactCredentials, configure_logging, install_log_redaction, redact_credentials
from api.routes import account as account_routes
from tests.helpers import sign_up

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class Lines(logging.Handler):
    """Keeps the message of every record a logger hands its handlers (what any handler would write)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_log() -> Iterator[Lines]:
    """What uvicorn's access logger writes (a handler beside the ones uvicorn configured)."""
    logger, lines = logging.getLogger("uvicorn.access"), Lines()
    logger.addHandler(lines)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)


@pytest_asyncio.fixture
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app under uvicorn on a free loopback port, logging as ``agentpod api`` does (level info, uvicorn's
    own logging configuration, access log on); yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # uvicorn applies its logging configuration here, after create_app installed the redaction.
    config = uvicorn.Config(app, lifespan="off", log_level="info", access_log=True, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@sqlite_only
async def test_polling_the_deletion_status_page_logs_the_request_but_not_its_id(
    app: FastAPI, served: str, access_log: Lines
) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        user_id = (await sign_up(client))["user"]["id"]
        deletion_id = account_routes.deletion_id(app.state.ctx.keyring, user_id)
        polls = [
            await client.get(f"/api/account/deletion/{deletion_id}"),  # Temporal is down in tests: a 503
            await client.get(f"/api/account/deletion/{deletion_id}?lang=en"),
            await client.get(f"/api/account/deletion/{deletion_id}x"),  # a wrong id is just as secret: a 404
            await client.get("/api/users/me?access_token=apt_secret-in-a-url"),
        ]
    assert [response.status_code for response in polls] == [503, 503, 404, 401]
    logged = "\n".join(access_log.lines)
    assert deletion_id not in logged and user_id not in logged and "apt_secret-in-a-url" not in logged
    # Every request is still in the access log, with its status.
    deletion_lines = [line for line in access_log.lines if "/deletion/" in line]
    expected = [("[redacted]", 503), ("[redacted]?lang=en", 503), ("[redacted]", 404)]
    assert len(deletion_lines) == len(expected), deletion_lines
    for line, (rest, status) in zip(deletion_lines, expected, strict=True):
        assert line.endswith(f'"GET /api/account/deletion/{rest} HTTP/1.1" {status}'), line
    assert any('"GET /api/users/me?access_token=[redacted] HTTP/1.1" 401' in line for line in access_log.lines)


def test_our_own_request_logs_are_redacted_too(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging()
    install_log_redaction()  # idempotent: one filter per logger however often it runs
    assert [type(f) for f in logging.getLogger("api.errors").filters].count(RedactCredentials) == 1
    with caplog.at_level(logging.ERROR, logger="api.errors"):
        # The shape of api/errors.py's line for an unexpected error.
        logging.getLogger("api.errors").error(
            "unhandled error in %s %s (request %s)", "GET", "/api/account/deletion/u1.SECRETMAC", "r1"
        )
    assert caplog.messages == ["unhandled error in GET /api/account/deletion/[redacted] (request r1)"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/api/account/deletion/u1.MAC", "/api/account/deletion/[redacted]"),
        ("/api/account/deletion/u1.MAC?x=1", "/api/account/deletion/[redacted]?x=1"),
        ("/api/account/deletion/u1.MAC/extra", "/api/account/deletion/[redacted]"),
        ("/api/users/me?token=abc&limit=5", "/api/users/me?token=[redacted]&limit=5"),
        ("/x?limit=5&access_token=abc", "/x?limit=5&access_token=[redacted]"),
        ("/api/v2/sandboxes/s1/chat/sessions?status=active", "/api/v2/sandboxes/s1/chat/sessions?status=active"),
        ("/api/account", "/api/account"),
    ],
)
def test_what_is_redacted(text: str, expected: str) -> None:
    assert redact_credentials(text) == expected
