"""Change notifications: publish on a channel, every subscriber of it receives the payload.

In-process on SQLite (one API process), PostgreSQL ``LISTEN``/``NOTIFY`` across API processes.
Features push to devices with :func:`notify.sse.versioned_stream`.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url

from agentpod.notify.base import MAX_PAYLOAD_BYTES, Notifier, NotifierClosedError, Subscription
from agentpod.notify.local import LocalNotifier
from agentpod.notify.postgres import PostgresNotifier

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "LocalNotifier",
    "Notifier",
    "NotifierClosedError",
    "PostgresNotifier",
    "Subscription",
    "create_notifier",
]


def create_notifier(database_url: str) -> Notifier:
    """The notifier that fits the database: processes sharing a PostgreSQL database share notifications."""
    backend = make_url(database_url).get_backend_name()
    if backend == "sqlite":
        return LocalNotifier()
    if backend == "postgresql":
        return PostgresNotifier(database_url)
    raise ValueError(f"no notifier for database backend {backend!r}")
