"""Live streams per account are capped: chat and preferences streams count together; the one over the
cap gets 429 ``too_many_streams`` in the one error shape, and closing a stream frees its place. Access
of all open streams is checked together, and a lost one ends only the streams it concerns."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agentpod.settings import Settings
from agentpod.store.tables import Sandbox
from agentpod.store.users import resolve_token
from api.app import create_app
from api.live_streams import LiveStreams
from tests.api.test_chat_read import chat_url, new_sandbox, new_user
from tests.api.test_chat_stream import StatementCounter
from tests.helpers import assert_error, auth_header, eventually, sign_up
from tests.notify.servers import STREAM_PATH, serve

CAP = 3


@contextlib.asynccontextmanager
async def _stream(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> AsyncIterator[httpx.Response]:
    """A request to a stream endpoint, held open (or the error it got) until the block ends."""
    async with http.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
        yield response


async def test_a_stream_over_the_cap_gets_429_and_closing_one_lets_a_new_one_in(
    settings: Settings, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    app = create_app(settings.model_copy(update={"max_streams_per_user": CAP}))
    timeout = httpx.Timeout(10, read=None)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, trust_env=False, timeout=timeout) as http:
        headers, user = await new_user(http)
        others_headers, _ = await new_user(http)
        sandbox = await new_sandbox(sessions, user)
        chat = chat_url(sandbox, "/stream")
        async with contextlib.AsyncExitStack() as held:
            first = await held.enter_async_context(_stream(http, chat, headers))
            for path in (chat, STREAM_PATH):  # chat and preferences streams count together
                assert (await held.enter_async_context(_stream(http, path, headers))).status_code == 200
            assert first.status_code == 200

            for path in (chat, STREAM_PATH):
                async with _stream(http, path, headers) as over:
                    assert over.status_code == 429, f"stream {CAP + 1} was let in ({path})"
                    error = assert_error(over, 429, "too_many_streams")
                    assert f"at most {CAP}" in error["message"] and "close one" in error["message"]
                    assert error["details"] == {"max_streams": CAP}
            async with _stream(http, STREAM_PATH, others_headers) as someone_else:
                assert someone_else.status_code == 200  # the cap is per account

            await first.aclose()  # the phone closes one stream ...

            async def admitted() -> bool:  # ... and a new one gets in once the server noticed
                async with _stream(http, chat, headers) as again:
                    return again.status_code == 200

            await eventually(admitted, timeout=5, what="a new stream after closing one")


async def test_access_is_checked_for_all_streams_at_once_and_only_the_signed_out_token_loses_it(
    client: httpx.AsyncClient, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    email = f"streams-{uuid.uuid4().hex[:8]}@example.com"
    signed_up = await sign_up(client, email)
    user, phone_token = signed_up["user"]["id"], signed_up["token"]
    tablet_token = (
        await client.post("/api/auth/sign-in", json={"email": email, "password": "correct horse battery"})
    ).json()["token"]
    kept, deleted = await new_sandbox(sessions, user), await new_sandbox(sessions, user)
    async with sessions() as db:
        phone, tablet = [await resolve_token(db, token) for token in (phone_token, tablet_token)]
    assert phone is not None and tablet is not None

    registry = LiveStreams(sessions, max_per_user=20, recheck_seconds=3600)  # checks run only when asked here
    try:
        on_phone = [registry.open(user, phone[1].id, kept) for _ in range(5)] + [registry.open(user, phone[1].id)]
        on_tablet = [registry.open(user, tablet[1].id, sandbox) for sandbox in (kept, deleted)]
        told = []
        on_phone[0].on_revoked(lambda: told.append("phone"))
        statements = StatementCounter(engine)
        try:
            assert all(await asyncio.gather(*(stream.still_allowed() for stream in on_phone + on_tablet)))
            assert statements.count == 1  # eight streams asking at once: one query

            assert (await client.post("/api/auth/sign-out", headers=auth_header(phone_token))).status_code == 204
            async with sessions() as db:
                await db.execute(delete(Sandbox).where(Sandbox.id == deleted))
                await db.commit()
            await registry.check([*on_phone, *on_tablet])  # what the once-a-second re-check runs
        finally:
            statements.stop()
        assert all(stream.revoked for stream in on_phone) and told == ["phone"]
        assert [stream.revoked for stream in on_tablet] == [False, True]  # only the deleted sandbox's stream
        assert not await on_phone[1].still_allowed()
    finally:
        await registry.close()
