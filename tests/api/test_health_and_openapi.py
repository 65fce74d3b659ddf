"""Health reporting, and the committed OpenAPI document the mobile app builds its client from."""

from __future__ import annotations

import json

import httpx
from fastapi import FastAPI

from api.openapi_export import OPENAPI_PATH, openapi_document, render


async def test_health_reports_temporal_down_with_503(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"] == {"ok": True, "detail": None}
    assert body["temporal"]["ok"] is False and body["temporal"]["detail"].startswith("unreachable (")
    # Public endpoint: no host, port or driver message in the answer (the log has them).
    assert ":" not in body["temporal"]["detail"]


async def test_catalog_is_public_and_complete(client: httpx.AsyncClient) -> None:
    tiers = (await client.get("/api/catalog/tiers")).json()
    assert [t["id"] for t in tiers] == ["micro", "starter", "builder", "creator", "power"]
    assert [t["id"] for t in tiers if t["is_default"]] == ["starter"]
    flavors = (await client.get("/api/catalog/flavors")).json()
    assert [f["id"] for f in flavors if f["is_default"]] == ["fullstack"]
    addons = (await client.get("/api/catalog/addons")).json()
    assert {a["id"]: a["port"] for a in addons} == {"code-server": 8080, "vnc": 6080}


async def test_docs_are_served(client: httpx.AsyncClient, app: FastAPI) -> None:
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/openapi.json")).json()["info"]["title"] == app.title


def test_committed_openapi_document_is_current() -> None:
    committed = OPENAPI_PATH.read_text() if OPENAPI_PATH.exists() else ""
    assert committed == render(openapi_document()), "docs/openapi.json is stale: run `make openapi`"


def test_openapi_documents_the_error_shape_on_every_operation() -> None:
    document = openapi_document()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path == "/api/health":
                continue
            assert "422" in operation["responses"] or method == "get", (path, method)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = json.dumps(response.get("content", {}))
                    assert "ErrorResponse" in schema, (path, method, status)
