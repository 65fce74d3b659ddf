"""Buffers OpenCode's live event stream so a burst of streaming deltas costs a few row writes.

OpenCode sends one ``message.part.delta`` per upstream chunk, unthrottled (2,000 chunks arrive as
2,000 events in ~0.1 s). The coalescer folds them into an in-memory copy of each part and hands out
*operations* — the latest full state of each changed message, plus removals and session events in
stream order — when a flush is due:

* now, on a completion event (``message.updated`` with ``time.completed``, ``session.idle``,
  ``session.status`` idle, ``session.error``);
* when the oldest buffered change is older than ``interval`` seconds (clock injectable);
* when more than ``max_items`` events are buffered.

Per-message order is kept: every change to a message lands in that message's one open slot, and a
removal closes the slot (later changes open a new one after the removal). Pure: no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentpod.chat_mirror.opencode_mapping import as_object, dig, is_complete, part_sort_key

JSON = dict[str, Any]

DEFAULT_INTERVAL = 0.1
DEFAULT_MAX_ITEMS = 1000


@dataclass(frozen=True)
class SessionChange:
    """``session.created`` / ``session.updated`` (kind ``upsert``) or ``session.deleted`` (kind ``deleted``)."""

    kind: str
    session_id: str
    info: JSON | None


@dataclass
class MessageChange:
    """The latest known state of one message: its info (if it changed) and its changed parts."""

    session_id: str
    message_id: str
    info: JSON | None = None
    parts: dict[str, JSON] = field(default_factory=dict)

    def snapshot(self) -> MessageChange:
        # Shallow copies are enough: the coalescer only ever rewrites a part's top-level string fields.
        return MessageChange(
            self.session_id,
            self.message_id,
            dict(self.info) if self.info is not None else None,
            {key: dict(part) for key, part in sorted(self.parts.items())},
        )


@dataclass(frozen=True)
class MessageRemoved:
    """``message.removed``."""

    session_id: str
    message_id: str


@dataclass(frozen=True)
class PartRemoved:
    """``message.part.removed``."""

    session_id: str
    message_id: str
    part_id: str


@dataclass(frozen=True)
class SessionSignal:
    """``session.status`` / ``session.idle`` / ``session.error``: live state, passed through as is."""

    type: str
    session_id: str | None  # OpenCode may send a session.error that names no session
    properties: JSON


Operation = SessionChange | MessageChange | MessageRemoved | PartRemoved | SessionSignal

SESSION_SIGNALS = frozenset({"session.status", "session.idle", "session.error"})


def unwrap(event: JSON) -> tuple[str, JSON] | None:
    """``(type, properties)`` of an event from ``/event``, ``/global/event`` or ``/api/event``.

    ``/global/event`` wraps each bus event in ``payload`` and adds ``sync`` frames that duplicate
    durable ones; ``/api/event`` says ``data`` instead of ``properties``.
    """
    payload = as_object(event.get("payload")) or event
    kind = payload.get("type")
    if not isinstance(kind, str) or kind == "sync":
        return None
    return kind, as_object(payload.get("properties")) or as_object(payload.get("data"))


def is_flush_trigger(kind: str, props: JSON) -> bool:
    """Events that end a turn: what they finish must reach the database now, not in 100 ms."""
    if kind == "message.updated":
        return is_complete(as_object(props.get("info")))
    if kind == "session.status":
        return bool(dig(props, "status", "type") == "idle")
    return kind in ("session.idle", "session.error")


@dataclass
class CoalescerStats:
    """Counters for tests and status reporting."""

    events: int = 0
    flushes: int = 0
    dropped_deltas: int = 0


class Coalescer:
    """Folds live events into per-message state and emits ordered operations when a flush is due."""

    def __init__(
        self,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_items: int = DEFAULT_MAX_ITEMS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_items = max_items
        self._clock = clock
        self._ops: list[Operation] = []
        self._open: dict[str, MessageChange] = {}  # message id -> its slot in _ops, while open
        self._buffered = 0
        self._oldest: float | None = None
        self._urgent = False
        # Full copies of parts still streaming: the base each delta appends to. Kept across flushes
        # until the message completes, is removed, or its session goes idle.
        self._bases: dict[str, dict[str, dict[str, JSON]]] = {}  # session -> message -> part id -> part
        self.stats = CoalescerStats()

    def __len__(self) -> int:
        return self._buffered

    # ------------------------------------------------------------------ intake

    def add(self, event: JSON) -> bool:
        """Take one event; True when the buffer should be flushed now."""
        parsed = unwrap(event)
        if parsed is None:
            return False
        kind, props = parsed
        handler = self._HANDLERS.get(kind)
        if handler is None:
            return False  # heartbeats, plugin/catalog noise, permissions: nothing to mirror
        if not handler(self, props):
            return False
        self.stats.events += 1
        self._buffered += 1
        if self._oldest is None:
            self._oldest = self._clock()
        if is_flush_trigger(kind, props):
            self._urgent = True
        return self.due()

    def due(self) -> bool:
        """A flush is due: a turn ended, the oldest change is ``interval`` old, or the buffer is full."""
        if not self._buffered:
            return False
        if self._urgent or self._buffered > self.max_items:
            return True
        return self._oldest is not None and self._clock() - self._oldest >= self.interval

    def due_in(self) -> float | None:
        """Seconds until a flush is due (0: now); None while nothing is buffered."""
        if not self._buffered:
            return None
        if self._urgent or self._buffered > self.max_items or self._oldest is None:
            return 0.0
        return max(0.0, self._oldest + self.interval - self._clock())

    def drain(self) -> list[Operation]:
        """Everything buffered, in order, as independent copies; the buffer is empty afterwards."""
        ops = [op.snapshot() if isinstance(op, MessageChange) else op for op in self._ops]
        ops = [op for op in ops if not (isinstance(op, MessageChange) and op.info is None and not op.parts)]
        self._ops, self._open = [], {}
        self._buffered, self._oldest, self._urgent = 0, None, False
        if ops:
            self.stats.flushes += 1
        return ops

    def reset(self) -> None:
        """Forget the delta bases: the stream was interrupted, so appending to them could skip text.

        Deltas of a part whose start we did not see are dropped; its final ``message.part.updated``
        carries the full text anyway. Buffered operations are kept.
        """
        self._bases.clear()

    # ------------------------------------------------------------------ handlers

    def _slot(self, session_id: str, message_id: str) -> MessageChange:
        slot = self._open.get(message_id)
        if slot is None:
            slot = MessageChange(session_id, message_id)
            self._open[message_id] = slot
            self._ops.append(slot)
        return slot

    def _on_session(self, props: JSON) -> bool:
        info = props.get("info")
        if not isinstance(info, dict) or not info.get("id"):
            return False
        self._ops.append(SessionChange("upsert", str(info["id"]), info))
        return True

    def _on_session_deleted(self, props: JSON) -> bool:
        info = props.get("info") if isinstance(props.get("info"), dict) else None
        session_id = (info or {}).get("id") or props.get("sessionID")
        if not session_id:
            return False
        self._bases.pop(str(session_id), None)
        self._ops.append(SessionChange("deleted", str(session_id), info))
        return True

    def _on_message(self, props: JSON) -> bool:
        info = props.get("info")
        if not isinstance(info, dict) or not info.get("id") or not info.get("sessionID"):
            return False
        session_id, message_id = str(info["sessionID"]), str(info["id"])
        self._slot(session_id, message_id).info = info
        if is_complete(info):
            self._bases.get(session_id, {}).pop(message_id, None)  # nothing streams after completion
        return True

    def _on_part(self, props: JSON) -> bool:
        part = props.get("part")
        if not isinstance(part, dict) or not part.get("id") or not part.get("messageID"):
            return False
        session_id = str(part.get("sessionID") or props.get("sessionID") or "")
        if not session_id:
            return False
        message_id, part_id = str(part["messageID"]), part_sort_key(part)
        copy = dict(part)  # ours to append deltas to; the caller's event stays untouched
        self._bases.setdefault(session_id, {}).setdefault(message_id, {})[part_id] = copy
        self._slot(session_id, message_id).parts[part_id] = copy
        return True

    def _on_delta(self, props: JSON) -> bool:
        session_id, message_id = props.get("sessionID"), props.get("messageID")
        part_id, field_name, delta = props.get("partID"), props.get("field") or "text", props.get("delta")
        if not (session_id and message_id and part_id) or not isinstance(delta, str):
            return False
        base = self._bases.get(str(session_id), {}).get(str(message_id), {}).get(str(part_id))
        current = base.get(str(field_name), "") if base is not None else None
        if base is None or not isinstance(current, str):
            self.stats.dropped_deltas += 1  # no start seen (joined mid-part): wait for the final update
            return False
        base[str(field_name)] = current + delta
        self._slot(str(session_id), str(message_id)).parts[str(part_id)] = base
        return True

    def _on_message_removed(self, props: JSON) -> bool:
        session_id, message_id = props.get("sessionID"), props.get("messageID")
        if not (session_id and message_id):
            return False
        slot = self._open.pop(str(message_id), None)
        if slot is not None:
            self._ops.remove(slot)  # its buffered state is moot now
        self._bases.get(str(session_id), {}).pop(str(message_id), None)
        self._ops.append(MessageRemoved(str(session_id), str(message_id)))
        return True

    def _on_part_removed(self, props: JSON) -> bool:
        session_id, message_id, part_id = props.get("sessionID"), props.get("messageID"), props.get("partID")
        if not (session_id and message_id and part_id):
            return False
        slot = self._open.pop(str(message_id), None)  # closed: later changes must follow the removal
        if slot is not None:
            slot.parts.pop(str(part_id), None)
        self._bases.get(str(session_id), {}).get(str(message_id), {}).pop(str(part_id), None)
        self._ops.append(PartRemoved(str(session_id), str(message_id), str(part_id)))
        return True

    def _on_signal(self, kind: str, props: JSON) -> bool:
        session_id = str(props["sessionID"]) if props.get("sessionID") else None
        if session_id and (kind == "session.idle" or dig(props, "status", "type") == "idle"):
            self._bases.pop(session_id, None)  # the turn is over: nothing streams any more
        self._ops.append(SessionSignal(kind, session_id, props))
        return True

    _HANDLERS: dict[str, Callable[[Coalescer, JSON], bool]] = {
        "session.created": _on_session,
        "session.updated": _on_session,
        "session.deleted": _on_session_deleted,
        "message.updated": _on_message,
        "message.part.updated": _on_part,
        "message.part.delta": _on_delta,
        "message.removed": _on_message_removed,
        "message.part.removed": _on_part_removed,
        "session.status": lambda self, props: self._on_signal("session.status", props),
        "session.idle": lambda self, props: self._on_signal("session.idle", props),
        "session.error": lambda self, props: self._on_signal("session.error", props),
    }
