"""Export the OpenAPI document the mobile app generates its client from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentpod.settings import Settings

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (built without starting the app: no database or Temporal needed)."""
    from api.app import create_app

    return create_app(Settings(dev_mode=True)).openapi()


def render(document: dict[str, Any]) -> str:
    """Stable text form, so the committed file diffs cleanly."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write(path: Path = OPENAPI_PATH) -> Path:
    """Write the document to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(openapi_document()))
    return path
