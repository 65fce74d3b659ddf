"""The sessions this gateway created, kept in a small JSON file so they outlive a restart.

The agents keep the conversations themselves (OpenCode in its SQLite store on the data volume); the
gateway only remembers which agent and directory each ACP session id belongs to, so that after a
restart it can re-attach a session (``session/resume`` or ``session/load``) and still answer 404 for
ids it never handed out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

INDEX_FILE = "sessions.json"


class SessionRecord(BaseModel):
    """One ACP session handed out by this gateway."""

    session_id: str
    agent_id: str
    cwd: str
    created_at: datetime


class _Index(BaseModel):
    version: int = 1
    sessions: list[SessionRecord]


def now() -> datetime:
    return datetime.now(UTC)


class SessionStore:
    """Session records in memory, written through to ``<state_dir>/sessions.json`` when a dir is set."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / INDEX_FILE if state_dir is not None else None
        self._records: dict[str, SessionRecord] = {}
        if self.path is not None and self.path.exists():
            self._records = {r.session_id: r for r in self._read(self.path)}

    @staticmethod
    def _read(path: Path) -> list[SessionRecord]:
        try:
            return _Index.model_validate_json(path.read_bytes()).sessions
        except (OSError, ValidationError, ValueError) as exc:
            # Keep the unreadable file for inspection rather than overwrite it on the next save.
            broken = path.with_name(f"{path.name}.broken-{now():%Y%m%dT%H%M%S}")
            log.error("session index %s is unreadable (%s); moved to %s, starting empty", path, exc, broken)
            os.replace(path, broken)
            return []

    def get(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    def all(self) -> list[SessionRecord]:
        return sorted(self._records.values(), key=lambda r: r.created_at)

    def add(self, record: SessionRecord) -> None:
        self._records[record.session_id] = record
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = _Index(sessions=self.all()).model_dump_json(indent=1)
        # Write a temp file and rename it: a crash mid-write never leaves a truncated index.
        fd, tmp = tempfile.mkstemp(prefix=".sessions-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
