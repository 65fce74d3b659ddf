"""Base classes for API bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _has_nul(value: Any) -> bool:
    # A loop, not recursion: JSON nested ~1,000 deep parses fine and must not end in a RecursionError (a 500).
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


class RequestBody(BaseModel):
    """Incoming JSON: unknown fields are an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_nul(cls, data: Any) -> Any:
        # PostgreSQL text cannot hold U+0000 (SQLite can): refuse it up front so both behave alike.
        if _has_nul(data):
            raise ValueError("text must not contain NUL (U+0000) characters")
        return data


class ResponseBody(BaseModel):
    """Outgoing JSON, built from ORM rows."""

    model_config = ConfigDict(from_attributes=True)
