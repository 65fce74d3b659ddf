"""OpenCode JSON → chat row values, and the rules that decide which of two upstream states is newer.

Pure functions (no I/O, no clock). The raw upstream objects are kept verbatim in
``ChatMessage.content`` (``{"info": Message, "parts": [Part, ...]}``, parts ordered by part id); the
normalized columns are projections of that content, so re-deriving them is always possible.

Ordering rule ("newer upstream state wins", never insert time): OpenCode gives no version number
per message or part, but its states only move forward. A message info with ``time.completed``
beats one without; a part's progress is ranked by :func:`part_progress` (a finished part beats an
unfinished one, a tool moves pending → running → completed/error, an unfinished text only grows).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from agentpod.store.chat_sync import MessageValues, SessionValues

JSON = dict[str, Any]

SOURCE = "opencode"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# OpenCode's error name for a turn stopped by the user (POST /session/{id}/abort).
ABORT_ERRORS = frozenset({"MessageAbortedError"})
ROLES = frozenset({"user", "assistant", "system"})
# Parts seen before their message: only assistant turns stream parts over time, and the message's
# own ``message.updated`` corrects the role when it arrives.
PLACEHOLDER_ROLE = "assistant"
COST_QUANTUM = Decimal("0.000001")  # the column is NUMERIC(14, 6)

# column -> path inside OpenCode's ``tokens`` object (assistant info and step-finish parts alike)
TOKEN_PATHS: dict[str, tuple[str, ...]] = {
    "input_tokens": ("input",),
    "output_tokens": ("output",),
    "reasoning_tokens": ("reasoning",),
    "cache_read_tokens": ("cache", "read"),
    "cache_write_tokens": ("cache", "write"),
}
TOOL_PROGRESS = {"pending": 0, "running": 1, "completed": 2, "error": 2}


# --------------------------------------------------------------------------- small readers


def dig(obj: Any, *path: str) -> Any:
    """``obj[path[0]][path[1]]...`` or None when any step is missing or not an object."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def as_object(value: Any) -> JSON:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_objects(value: Any) -> list[JSON]:
    """The JSON objects in ``value`` if it is an array, else none."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def ms_to_datetime(value: Any) -> datetime | None:
    """OpenCode's epoch milliseconds as an aware UTC datetime (exact: no float division)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return EPOCH + timedelta(milliseconds=value)


def canonical(value: Any) -> Any:
    """The same JSON with object keys sorted, so equal content always serializes to equal text.

    PostgreSQL's JSONB compares semantically anyway; SQLite stores JSON as text, where key order
    would otherwise make an unchanged message look changed.
    """
    return json.loads(json.dumps(value, sort_keys=True))


def part_sort_key(part: Mapping[str, Any]) -> str:
    """Parts are ordered by their id: OpenCode ids are time-ordered (ascending)."""
    return str(part.get("id") or "")


# --------------------------------------------------------------------------- sessions


def session_values(info: JSON) -> SessionValues:
    """Row values of an OpenCode Session object."""
    return SessionValues(
        source=SOURCE,
        external_session_id=str(info["id"]),
        title=_str(info.get("title")),
        parent_external_session_id=_str(info.get("parentID")),
        upstream_created_at=ms_to_datetime(dig(info, "time", "created")),
        upstream_updated_at=ms_to_datetime(dig(info, "time", "updated")),
    )


# --------------------------------------------------------------------------- messages


def is_complete(info: Mapping[str, Any]) -> bool:
    """The message's turn has ended upstream (OpenCode stamps ``time.completed``)."""
    return ms_to_datetime(dig(info, "time", "completed")) is not None


def is_final(info: Mapping[str, Any]) -> bool:
    """Upstream will not change this message any more except by explicit edits or removals.

    User messages are created whole; assistant messages are final once completed or failed.
    """
    return info.get("role") == "user" or is_complete(info) or bool(info.get("error"))


def message_status(info: Mapping[str, Any]) -> tuple[str, str | None]:
    """``(status, error_message)`` of a message info."""
    error = info.get("error")
    if isinstance(error, dict) and error:
        if error.get("name") in ABORT_ERRORS:
            return "cancelled", None
        return "error", _str(dig(error, "data", "message")) or _str(error.get("name")) or "error"
    if info.get("role", PLACEHOLDER_ROLE) != "assistant" or is_complete(info):
        return "complete", None
    return "streaming", None


@dataclass
class _Projection:
    """What the parts of one message add up to."""

    texts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    tool_calls: list[JSON] = field(default_factory=list)
    tool_results: list[JSON] = field(default_factory=list)
    step_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_PATHS, 0))
    step_cost: Decimal = Decimal(0)


def _project_text(part: JSON, acc: _Projection) -> None:
    # Synthetic / ignored text is context OpenCode injected (file contents, reminders), not what was said.
    if not part.get("synthetic") and not part.get("ignored"):
        acc.texts.append(str(part.get("text") or ""))


def _project_reasoning(part: JSON, acc: _Projection) -> None:
    acc.thoughts.append(str(part.get("text") or ""))


def _project_tool(part: JSON, acc: _Projection) -> None:
    state = as_object(part.get("state"))
    status = state.get("status")
    ref = {"id": part.get("id"), "call_id": part.get("callID"), "tool": part.get("tool")}
    acc.tool_calls.append({**ref, "input": state.get("input"), "status": status})
    if status in ("completed", "error"):
        acc.tool_results.append(
            {
                **ref,
                "status": status,
                "output": state.get("output"),
                "error": state.get("error"),
                "title": state.get("title"),
            }
        )


def _project_step_finish(part: JSON, acc: _Projection) -> None:
    for column, path in TOKEN_PATHS.items():
        acc.step_tokens[column] += _int(dig(part.get("tokens"), *path))
    acc.step_cost += _cost(part.get("cost"))


# part type -> projection into the normalized columns; other types (step-start, patch, file,
# snapshot, agent, ...) live only in the raw content.
PART_PROJECTIONS: dict[str, Callable[[JSON, _Projection], None]] = {
    "text": _project_text,
    "reasoning": _project_reasoning,
    "tool": _project_tool,
    "step-finish": _project_step_finish,
}


def _cost(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return Decimal(0)
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return Decimal(0)


def _model(info: JSON) -> tuple[str | None, str | None]:
    # Assistant messages carry providerID/modelID at the top; user messages inside ``model``.
    provider = _str(info.get("providerID")) or _str(dig(info, "model", "providerID"))
    model = _str(info.get("modelID")) or _str(dig(info, "model", "modelID"))
    return provider, model


def message_values(info: JSON, parts: Sequence[JSON]) -> MessageValues:
    """Normalized row values of one message (``info`` may be ``{}`` when only parts are known yet)."""
    ordered = sorted(parts, key=part_sort_key)
    acc = _Projection()
    for part in ordered:
        project = PART_PROJECTIONS.get(str(part.get("type")))
        if project is not None:
            project(part, acc)

    role = info.get("role") if info.get("role") in ROLES else PLACEHOLDER_ROLE
    own_tokens = {column: _int(dig(info.get("tokens"), *path)) for column, path in TOKEN_PATHS.items()}
    own_cost = _cost(info.get("cost"))
    # The message's own totals once it has any; mid-turn, the sum of the steps finished so far.
    use_own = any(own_tokens.values()) or own_cost != 0
    tokens = own_tokens if use_own else acc.step_tokens
    cost = own_cost if use_own else acc.step_cost
    status, error_message = message_status(info)
    provider, model = _model(info)
    message_id = info.get("id") or next((p.get("messageID") for p in ordered if p.get("messageID")), None)
    if not message_id:
        raise ValueError("an OpenCode message needs an id (info.id or part.messageID)")
    return MessageValues(
        external_message_id=str(message_id),
        source=SOURCE,
        role=str(role),
        content=canonical({"info": info, "parts": ordered}),
        text="\n\n".join(acc.texts) if acc.texts else None,
        thinking="\n\n".join(acc.thoughts) if acc.thoughts else None,
        tool_calls=acc.tool_calls or None,
        tool_results=acc.tool_results or None,
        model_provider=provider,
        model_id=model,
        agent_id=_str(info.get("agent")) or _str(info.get("mode")),
        input_tokens=tokens["input_tokens"],
        output_tokens=tokens["output_tokens"],
        reasoning_tokens=tokens["reasoning_tokens"],
        cache_read_tokens=tokens["cache_read_tokens"],
        cache_write_tokens=tokens["cache_write_tokens"],
        cost=cost.quantize(COST_QUANTUM),
        status=status,
        error_message=error_message,
        upstream_created_at=ms_to_datetime(dig(info, "time", "created")),
        upstream_completed_at=ms_to_datetime(dig(info, "time", "completed")),
    )


def content_values(content: Mapping[str, Any]) -> MessageValues:
    """Row values re-derived from a stored ``content`` (after a part was removed, say)."""
    return message_values(*stored_info_parts(content))


# --------------------------------------------------------------------------- merging two states


def part_progress(part: Mapping[str, Any]) -> tuple[int, int]:
    """How far a part has got upstream; a higher value is a newer state of the same part.

    Finished text/reasoning (``time.end``) beats unfinished; between two unfinished copies the longer
    text is newer (streaming only appends). Tools go pending → running → completed/error. Other part
    types are written once.
    """
    kind = part.get("type")
    if kind in ("text", "reasoning"):
        if dig(part, "time", "end") is not None:
            return (1, 0)
        return (0, len(str(part.get("text") or "")))
    if kind == "tool":
        return (TOOL_PROGRESS.get(str(dig(part, "state", "status")), 0), 0)
    return (1, 0)


def merge_info(stored: JSON, incoming: JSON | None) -> JSON:
    """The newer of two infos of one message: incoming, unless it would undo a completion."""
    if not incoming:
        return stored
    if is_complete(stored) and not is_complete(incoming):
        return stored
    return incoming


def merge_parts(stored: Iterable[JSON], incoming: Iterable[JSON]) -> list[JSON]:
    """Parts of one message, by id: each incoming part replaces the stored one unless it is older."""
    merged = {part_sort_key(p): p for p in stored}
    for part in incoming:
        key = part_sort_key(part)
        old = merged.get(key)
        if old is None or part_progress(part) >= part_progress(old):
            merged[key] = part
    return sorted(merged.values(), key=part_sort_key)


def stored_info_parts(content: Mapping[str, Any] | None) -> tuple[JSON, list[JSON]]:
    """``(info, parts)`` of a stored ``content`` (empty for a message we have not stored yet)."""
    if not content:
        return {}, []
    return as_object(content.get("info")), as_objects(content.get("parts"))


def reconciled_message(stored: Mapping[str, Any] | None, upstream: JSON) -> tuple[JSON, list[JSON]]:
    """What to store for a message listed by ``GET /session/{id}/message``.

    A final upstream message is authoritative (parts missing from it were removed upstream). An
    unfinished one is merged: OpenCode persists streaming text only when the part ends, so the live
    copy we already hold may be further along than the listing.
    """
    info, parts = as_object(upstream.get("info")), as_objects(upstream.get("parts"))
    if is_final(info):
        return info, sorted(parts, key=part_sort_key)
    old_info, old_parts = stored_info_parts(stored)
    return merge_info(old_info, info), merge_parts(old_parts, parts)
