"""Request and response bodies of ``/api/users/me/opencode``: settings, AGENTS.md, agent/command files."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints

from agentpod.store.opencode_config import SECRET_SECTIONS
from api.schemas.base import RequestBody, ResponseBody

MAX_SETTINGS_BYTES = 64 * 1024
MAX_SETTINGS_DEPTH = 32
MAX_TEXT_CHARS = 64 * 1024
FileType = Literal["agent", "command"]
# A file name becomes `<name>.md` in the agent's config dir: no paths, no hidden files.
FileName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


def _too_deep(value: Any, limit: int) -> bool:
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:  # a loop: the input may be nested far deeper than Python's recursion limit
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _valid_settings(settings: dict[str, Any]) -> dict[str, Any]:
    # Deeper than any real opencode.json; far deeper was stored, then failed every read (serializer limit).
    if _too_deep(settings, MAX_SETTINGS_DEPTH):
        raise ValueError(f"settings must nest at most {MAX_SETTINGS_DEPTH} levels deep")
    if len(json.dumps(settings, ensure_ascii=False).encode()) > MAX_SETTINGS_BYTES:
        raise ValueError(f"settings must be at most {MAX_SETTINGS_BYTES} bytes as JSON")
    mcp = settings.get("mcp", {})
    if not isinstance(mcp, dict) or not all(isinstance(server, dict) for server in mcp.values()):
        raise ValueError("mcp must map server names to objects")
    for server in mcp.values():
        for section in SECRET_SECTIONS:
            values = server.get(section, {})
            # Every value here is encrypted at rest; only strings are meaningful to OpenCode anyway.
            if not isinstance(values, dict) or not all(isinstance(value, str) for value in values.values()):
                raise ValueError(f"mcp.<server>.{section} must map names to strings")
    return settings


class OpencodeConfigIn(RequestBody):
    """The whole config: ``opencode.json`` settings and AGENTS.md (a PUT replaces both)."""

    settings: Annotated[dict[str, Any], AfterValidator(_valid_settings)] = Field(
        default_factory=dict,
        description="opencode.json as a JSON object. Values under `mcp.<server>.environment` and "
        "`mcp.<server>.headers` are stored encrypted; send a masked value from a read back unchanged "
        "to keep the stored secret.",
    )
    agents_md: Text | None = Field(None, description="AGENTS.md: instructions every agent of the user follows.")


class OpencodeConfigOut(ResponseBody):
    """The stored config; secrets show as `****` plus their last four characters."""

    settings: dict[str, Any]
    agents_md: str | None
    updated_at: datetime | None


class OpencodeFileIn(RequestBody):
    """A new custom agent or command (markdown, as OpenCode reads it from its config dir)."""

    type: FileType
    name: FileName
    content: Text


class OpencodeFileUpdate(RequestBody):
    """Rename and/or rewrite a file (the type stays)."""

    name: FileName
    content: Text


class OpencodeFileSummary(ResponseBody):
    """A file without its content (for lists)."""

    id: str
    type: str
    name: str
    extension: str
    size: int = Field(description="Length of the content in characters.")
    created_at: datetime
    updated_at: datetime


class OpencodeFileOut(OpencodeFileSummary):
    """A file with its content."""

    content: str


class OpencodeFileList(ResponseBody):
    """The caller's custom agents and commands."""

    files: list[OpencodeFileSummary]
