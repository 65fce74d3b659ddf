"""Property-based fuzzing of every operation in the app's OpenAPI document (schemathesis + Hypothesis).

For each operation, Hypothesis draws requests from the schema three ways: valid data with random ids,
invalid data (wrong types, missing fields, bad headers, no token), and valid data aimed at the
caller's real resources (a created and a "running" sandbox, a chat session, a file, a provider).
Every answer must be:

* never a server error: no 500, and a 502/503 only as an honest "dependency down" in the error shape
  (``temporal_unavailable``: this suite runs without Temporal; ``opencode_unavailable``: the "running"
  sandbox's agent is unreachable on purpose). ``GET /api/health`` is the one route documented to
  answer 503 with its own body when Temporal is down;
* every 4xx in the one error shape, its ``request_id`` the ``X-Request-ID`` header;
* every 2xx JSON body valid against the operation's documented response schema.

Event streams are read for a fraction of a second, then the client disconnects (bounded, never hangs).
Generation is derandomized: CI draws the same examples every run. ``AGENTPOD_FUZZ_EXAMPLES`` (default
12 per operation and way) raises the budget for a longer local run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.helpers import assert_error
from tests.security.conftest import (
    HEALTH,
    Reply,
    Seeded,
    api_endpoints,
    asgi_call,
    build_request,
    error_shape_problem,
    fresh_token,
    seed_account,
    server_error_problem,
)

log = logging.getLogger(__name__)

Operation = APIOperation[Any, Any, Any, Any]

EXAMPLES = int(os.environ.get("AGENTPOD_FUZZ_EXAMPLES", "12"))


def _path_variants(operation: Operation, owner: Seeded) -> list[dict[str, Any]]:
    """Path parameters pointing at the caller's own resources (the fuzz then reaches the handlers)."""
    names = {param.name for param in operation.path_parameters}
    if not names:
        return []
    known: dict[str, list[Any]] = {
        "sandbox_id": [owner.sandbox_id, owner.running_sandbox_id],
        "session_id": [owner.chat_session_id, owner.acp_chat_session_id],
        "file_id": [owner.file_id],
        "provider_id": [owner.provider_id],
        "version": [1, owner.preferences_version],
        "entity_type": ["sandbox"],
        "entity_id": [owner.sandbox_id],
        "deletion_id": [owner.deletion_id],
    }
    variants: list[dict[str, Any]] = [{}]
    for name in sorted(names):
        values = known.get(name)
        if values is None:
            continue  # a parameter this suite does not know yet: left to the generator
        variants = [{**variant, name: value} for variant in variants for value in values]
    return [variant for variant in variants if variant]


def _check(operation: Operation, case: Any, reply: Reply) -> list[str]:
    problems: list[str] = []
    key = f"{operation.method.upper()} {operation.path}"
    server = server_error_problem(reply, key)
    if server:
        problems.append(server)
    json_answer = reply.headers.get("content-type", "").startswith("application/json")
    if reply.status >= 400 and not (key == HEALTH and not server):
        shape = error_shape_problem(reply)
        if shape:
            problems.append(shape)
    elif 200 <= reply.status < 300 and not reply.streamed and reply.body and json_answer:
        try:
            reply.json()
        except ValueError:
            problems.append(f"{reply.status} with a body that is not JSON: {reply.text[:200]!r}")
        else:
            problems.extend(_schema_problems(operation, case, reply))
    return problems


def _schema_problems(operation: Operation, case: Any, reply: Reply) -> list[str]:
    response = httpx.Response(
        reply.status, headers=reply.headers, content=reply.body, request=httpx.Request("GET", "http://testserver/")
    )
    response.elapsed = timedelta(0)
    try:
        operation.validate_response(response, case=case)
    except (AssertionError, BaseExceptionGroup) as failure:  # a group holds every failed check
        return [f"{reply.status} answer does not match the documented operation: {str(failure)[:600]}"]
    return []


def _run_operation(
    operation: Operation,
    strategy: Any,
    send: Callable[[dict[str, Any]], Reply],
    failures: dict[tuple[str, str], str],
    statuses: Counter[int],
) -> int:
    """Draw ``EXAMPLES`` requests from ``strategy``; returns how many were sent."""
    sent = 0
    key = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def probe(case: Any) -> None:
        nonlocal sent
        kwargs = case.as_transport_kwargs(base_url="http://testserver")
        reply = send(kwargs)
        sent += 1
        statuses[reply.status] += 1
        for problem in _check(operation, case, reply):
            # One example per operation and kind of problem is enough to act on.
            failures.setdefault((key, problem[:60]), f"{key}: {problem}\n    request: {_describe(kwargs)}")

    try:
        probe()
    except Unsatisfiable:
        # No input of this kind exists (invalid data for an operation that takes no parameters).
        assert sent == 0
    return sent


def _may_revoke(method: str, url: str) -> bool:
    path = httpx.URL(url).path
    return path.startswith("/api/auth/") or (method.upper() == "DELETE" and path == "/api/account")


def _describe(kwargs: dict[str, Any]) -> str:
    shown = {name: kwargs.get(name) for name in ("method", "url", "params", "json") if kwargs.get(name) is not None}
    if "data" in kwargs:
        shown["data"] = kwargs["data"]
    headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "authorization"}
    return repr({**shown, "headers": headers})[:800]


async def test_every_operation_survives_fuzzing(app: FastAPI, sessions: async_sessionmaker[AsyncSession]) -> None:
    owner = await seed_account(app, sessions, label="fuzz")
    loop = asyncio.get_running_loop()
    schema = schemathesis.openapi.from_dict(app.openapi())
    operations: list[Operation] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # an operation schemathesis cannot read is a broken document
        operations.append(result.ok())
    # The document lists what the app mounts: nothing routed escapes the fuzzer.
    documented = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {endpoint.key for endpoint in api_endpoints(app)} <= documented

    token = owner.token

    def send(kwargs: dict[str, Any]) -> Reply:
        async def call() -> Reply:
            nonlocal token
            headers = dict(kwargs.get("headers") or {})
            if "Authorization" in headers or "authorization" in headers:
                # Every drawn request that carries a token gets a valid one.
                headers.pop("authorization", None)
                headers["Authorization"] = f"Bearer {token}"
            if _may_revoke(kwargs["method"], kwargs["url"]):
                # A fuzzed sign-out, refresh or account deletion must not turn the rest of the run into 401s.
                token = await fresh_token(sessions, owner.user_id)
            try:
                request = build_request(
                    kwargs["method"],
                    kwargs["url"],
                    headers=headers,
                    params=kwargs.get("params"),
                    json_body=kwargs.get("json"),
                    content=kwargs.get("data") if isinstance(kwargs.get("data"), bytes | str) else None,
                )
            except (UnicodeEncodeError, ValueError, TypeError) as exc:
                log.warning("unsendable %s: %r", _describe(kwargs), exc)
                return Reply(status=-1, headers={}, body=b"")  # not sendable over HTTP at all
            return await asgi_call(app, request, stream_grace=0.1, timeout=30)

        reply = asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=60)
        if reply.status == -1:
            reject()
        return reply

    failures: dict[tuple[str, str], str] = {}
    statuses: Counter[int] = Counter()
    started = time.monotonic()

    def fuzz_all() -> int:
        count = 0
        for operation in operations:
            strategies = [
                operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
            ]
            variants = _path_variants(operation, owner)
            if variants:
                strategies.append(
                    st.one_of(
                        [
                            operation.as_strategy(generation_mode=GenerationMode.POSITIVE, path_parameters=variant)
                            for variant in variants
                        ]
                    )
                )
            for strategy in strategies:
                count += _run_operation(operation, strategy, send, failures, statuses)
        return count

    total = await asyncio.to_thread(fuzz_all)
    log.info(
        "fuzzed %d operations with %d requests in %.1fs; statuses %s",
        len(operations),
        total,
        time.monotonic() - started,
        dict(sorted(statuses.items())),
    )
    assert not failures, f"{len(failures)} problems found by fuzzing:\n" + "\n".join(sorted(failures.values()))
    # The budget really ran, and reached past authentication and validation.
    assert total >= 2 * len(operations)
    assert statuses[422] and statuses[404] and statuses[401]


async def test_sandbox_transitions_without_temporal_answer_503_not_500(
    app: FastAPI, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Found by the fuzzer: start/stop/delete/reconfigure raised an unhandled connect error (500)."""
    owner = await seed_account(app, sessions, label="transit")
    base = f"/api/v2/sandboxes/{owner.sandbox_id}"
    for method, url, body in [
        ("POST", f"{base}/start", None),
        ("POST", f"{base}/stop", None),
        ("DELETE", base, None),
        ("POST", "/api/v2/sandboxes", {"name": "auto", "repo_name": "auto", "auto_start": True}),
    ]:
        reply = await asgi_call(app, build_request(method, url, headers=owner.headers, json_body=body))
        assert reply.status == 503, (method, url, reply.text)
        assert error_shape_problem(reply) is None
        assert reply.json()["error"]["code"] == "temporal_unavailable"
    # Nothing was deleted on the way.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        still = await client.get(base, headers=owner.headers)
        assert still.status_code == 200 and still.json()["status"] == "created"
        assert_error(await client.get(f"{base}/nope", headers=owner.headers), 404)
