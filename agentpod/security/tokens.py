"""Opaque bearer tokens: random, shown to the client once, stored only as a SHA-256 digest."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "apt_"  # makes leaked tokens easy to grep for in logs and secret scanners


def new_token() -> str:
    """A fresh bearer token with 256 bits of entropy."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """The hex SHA-256 stored in the database (tokens are high-entropy, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()
