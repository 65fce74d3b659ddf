"""Logging setup shared by every process, and the redaction of credentials carried in URLs."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

REDACTED = "[redacted]"

# The id in ``/api/account/deletion/<id>`` is the only credential of the public deletion-status page.
# Everything after the prefix up to the query string goes: a suffix such as ``/<id>/x`` hides it too.
_DELETION_PATH = re.compile(r"(/account/deletion/)[^?#\s\"]+", re.IGNORECASE)
# Query parameters that carry a credential when a client puts one in a URL (none of our routes takes
# one: a client that sends it anyway must not have it written to the log).
_SECRET_QUERY = re.compile(
    r"([?&](?:access_token|token|api_key|apikey|key|password|secret|deletion_id)=)[^&#\s\"]*", re.IGNORECASE
)

# uvicorn's access log (one line per request, path and query string included) and every log of ours
# that names a request's path.
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error", "api.errors")


def configure_logging() -> None:
    """Plain, timestamped lines at ``AGENTPOD_LOG_LEVEL`` (default INFO)."""
    logging.basicConfig(
        level=os.environ.get("AGENTPOD_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()


def redact_credentials(text: str) -> str:
    """``text`` with deletion ids and credential query values replaced by ``[redacted]``."""
    if "/" not in text and "=" not in text:
        return text  # the common case for log arguments: nothing to look at
    text = _DELETION_PATH.sub(rf"\g<1>{REDACTED}", text)
    return _SECRET_QUERY.sub(rf"\g<1>{REDACTED}", text)


class RedactCredentials(logging.Filter):
    """Rewrites a record's message and string arguments through :func:`redact_credentials`; drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact in place (the record is this call's own) and keep the record."""
        if isinstance(record.msg, str):
            record.msg = redact_credentials(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_credentials(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: redact_credentials(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactCredentials` to the loggers that write request paths (idempotent).

    On the loggers, not on handlers: uvicorn's logging configuration replaces handlers but keeps
    filters, so the redaction holds whichever handlers a deployment configures.
    """
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactCredentials) for existing in logger.filters):
            logger.addFilter(RedactCredentials())
