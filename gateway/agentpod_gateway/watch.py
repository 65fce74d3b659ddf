"""Following the agents file while the gateway runs.

The control plane rewrites the file (``/run/agentpod/gateway-agents.json``) whenever the user's keys
or agent settings change; :class:`AgentsFileWatcher` polls it and hands every new version to
:meth:`Gateway.update_agents`. The file holds API keys: nothing here ever logs its content.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from pydantic import ValidationError

from agentpod_gateway.config import AgentSpec, load_agents
from agentpod_gateway.core import AgentChanges, Gateway

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 1.0

# (inode, mtime, ctime, size). The control plane unpacks the file from a tar archive, which sets a
# whole-second mtime, then renames it into place: the inode tells two writes within one second apart.
_Stamp = tuple[int, int, int, int]
_MISSING: _Stamp = (-1, -1, -1, -1)


def describe_load_error(exc: Exception) -> str:
    """Why a file did not load, without any of its values (they may be API keys)."""
    if isinstance(exc, ValidationError):
        problems = exc.errors(include_url=False, include_context=False, include_input=False)
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in problems)
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno} column {exc.colno}"  # exc.doc is the content
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


class AgentsFileWatcher:
    """Polls the agents file's stamp every ``interval`` seconds and applies each new version.

    A file that is missing or does not parse changes nothing: the gateway keeps the agents it has
    (a warning says why), and the next version that parses applies.
    """

    def __init__(self, path: Path, *, interval: float = DEFAULT_POLL_SECONDS) -> None:
        self.path = path
        self.interval = interval
        self._stamp: _Stamp | None = None

    def _current_stamp(self) -> _Stamp:
        try:
            st = os.stat(self.path)
        except OSError:
            return _MISSING
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def poll(self) -> dict[str, AgentSpec] | None:
        """The agents (built-in ones included) if the file changed since the last poll and loads."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return None
        # Taken before the read: a write during the read changes the stamp again, so it is read next time.
        self._stamp = stamp
        if stamp == _MISSING:
            log.warning("agents file %s not found; keeping the current agents until it appears", self.path)
            return None
        try:
            return load_agents(self.path)
        except (OSError, ValueError) as exc:  # ValidationError and JSONDecodeError are ValueErrors
            log.warning(
                "agents file %s not applied (%s); keeping the current agents", self.path, describe_load_error(exc)
            )
            return None

    def apply(self, gateway: Gateway) -> AgentChanges | None:
        """One poll: hands a changed file to the gateway and logs which agent ids it changed."""
        specs = self.poll()
        if specs is None:
            return None
        changes = gateway.update_agents(specs)
        if changes:
            log.info("agents file %s applied: %s", self.path, changes)
        return changes

    async def follow(self, gateway: Gateway) -> None:
        """Apply every change until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.apply(gateway)
            except Exception:
                # A bug, not the file's content (that never gets here): keep watching.
                log.exception("applying agents file %s failed", self.path)
