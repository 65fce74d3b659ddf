"""Base classes for API bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
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
