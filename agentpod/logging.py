"""Logging setup shared by every process."""

from __future__ import annotations

import logging
import os


def configure_logging() -> None:
    """Plain, timestamped lines at ``AGENTPOD_LOG_LEVEL`` (default INFO)."""
    logging.basicConfig(
        level=os.environ.get("AGENTPOD_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
