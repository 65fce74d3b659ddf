"""Folding ACP ``session/update`` notifications into chat messages (pure: no I/O).

The live stream and a replayed history (``session/load``) must give the *same* rows, so message keys
are a function of the update sequence alone:

* a conversation is a series of turns; turn *n* starts with the *n*-th user message (live: the
  gateway's ``turn_start``; history: a run of ``user_message_chunk``);
* turn *n* has one user message ``t<n>-0-user`` and at most one assistant message ``t<n>-1-agent``
  holding, in order, its text (``agent_message_chunk``, grouped by ``messageId``), its thoughts
  (``agent_thought_chunk`` → thinking) and its tool calls (``tool_call`` / ``tool_call_update``, merged
  by ``toolCallId``) — the way a chat screen shows an agent's turn.

The zero-padded turn number keeps keys in conversation order. ``content`` keeps the ACP blocks
(``source: acp_gateway``) so the normalized columns can always be derived again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

JSON = dict[str, Any]
SOURCE = "acp_gateway"
# Turn-end reasons from the gateway, as message statuses.
END_STATUS = {"complete": "complete", "cancelled": "cancelled", "error": "error"}
FINAL_STATUSES = frozenset({"complete", "cancelled", "error", "interrupted"})


def user_key(turn: int) -> str:
    """Key of turn ``turn``'s user message."""
    return f"t{turn:06d}-0-user"


def agent_key(turn: int) -> str:
    """Key of turn ``turn``'s assistant message."""
    return f"t{turn:06d}-1-agent"


def turn_of(key: str) -> int | None:
    """The turn number in a key made here (None for anything else)."""
    if len(key) > 7 and key[0] == "t" and key[1:7].isdigit():
        return int(key[1:7])
    return None


@dataclass
class Draft:
    """A message being assembled: its key, role and ACP content (``blocks``, ``status``, ``usage``...)."""

    key: str
    role: str
    content: JSON = field(default_factory=dict)

    @property
    def blocks(self) -> list[JSON]:
        blocks: list[JSON] = self.content.setdefault("blocks", [])
        return blocks

    @property
    def status(self) -> str:
        return str(self.content.get("status") or ("complete" if self.role == "user" else "streaming"))


def new_draft(key: str, role: str) -> Draft:
    """An empty message of ``role``."""
    status = "complete" if role == "user" else "streaming"
    return Draft(key, role, {"source": SOURCE, "role": role, "blocks": [], "status": status})


def _text_of(block: Any) -> str:
    if isinstance(block, dict) and block.get("type") == "text":
        return str(block.get("text") or "")
    return ""


@dataclass
class Conversation:
    """Where one session's conversation stands, and the messages touched since the last write.

    ``turn`` counts user messages so far; ``last_kind`` tells whether the previous update was a user
    chunk (a history's user message may come in several chunks).
    """

    turn: int = 0
    last_kind: str | None = None
    drafts: dict[str, Draft] = field(default_factory=dict)
    touched: list[str] = field(default_factory=list)

    def _touch(self, key: str) -> None:
        if key not in self.touched:
            self.touched.append(key)

    def draft(self, key: str, role: str) -> Draft:
        """The draft ``key`` (created empty when unknown)."""
        found = self.drafts.get(key)
        if found is None:
            found = self.drafts[key] = new_draft(key, role)
        self._touch(key)
        return found

    # --- user messages --------------------------------------------------------------------------

    def start_turn(self, prompt: list[Any]) -> Draft:
        """The live ``turn_start``: the user's message opens a new turn."""
        self.turn += 1
        self.last_kind = "user"
        draft = self.draft(user_key(self.turn), "user")
        draft.blocks[:] = [block for block in prompt if isinstance(block, dict)]
        return draft

    def _user_chunk(self, update: JSON) -> None:
        if self.last_kind != "user":
            self.turn += 1
        draft = self.draft(user_key(self.turn), "user")
        content = update.get("content")
        if isinstance(content, dict):
            draft.blocks.append(content)

    # --- the agent's side -----------------------------------------------------------------------

    def agent(self) -> Draft:
        """This turn's assistant message."""
        return self.draft(agent_key(self.turn), "assistant")

    def _chunk(self, kind: str, update: JSON) -> None:
        draft = self.agent()
        text = _text_of(update.get("content"))
        message_id = update.get("messageId") if kind == "text" else None
        last = draft.blocks[-1] if draft.blocks else None
        if last is not None and last.get("type") == kind and last.get("message_id") == message_id:
            last["text"] = str(last.get("text") or "") + text
            return
        block: JSON = {"type": kind, "text": text}
        if message_id:
            block["message_id"] = message_id
        draft.blocks.append(block)

    def _tool(self, update: JSON) -> None:
        draft = self.agent()
        call_id = update.get("toolCallId")
        block = next((b for b in draft.blocks if b.get("type") == "tool_call" and b.get("toolCallId") == call_id), None)
        if block is None:
            block = {"type": "tool_call", "toolCallId": call_id}
            draft.blocks.append(block)
        for name, value in update.items():
            if name != "sessionUpdate" and value is not None:
                block[name] = value

    def apply(self, update: JSON) -> None:
        """One ``session/update`` (live or replayed)."""
        kind = update.get("sessionUpdate")
        if kind == "user_message_chunk":
            self._user_chunk(update)
        elif kind == "agent_message_chunk":
            self._chunk("text", update)
        elif kind == "agent_thought_chunk":
            self._chunk("thought", update)
        elif kind in ("tool_call", "tool_call_update"):
            self._tool(update)
        elif kind == "plan":
            self.agent().content["plan"] = update.get("entries")
        elif kind == "usage_update":
            # Context-window use after the turn: kept with the turn's reply, never a new message.
            self.agent().content["context"] = {k: v for k, v in update.items() if k != "sessionUpdate"}
        else:
            return  # available_commands_update, mode changes...: session state, not conversation
        self.last_kind = "user" if kind == "user_message_chunk" else "agent"

    def end_turn(self, data: JSON) -> Draft:
        """The gateway's ``session_end_turn``: the reply's final status, stop reason and token usage."""
        draft = self.agent()
        draft.content["status"] = END_STATUS.get(str(data.get("reason")), "error")
        draft.content["stop_reason"] = data.get("stop_reason")
        if isinstance(data.get("usage"), dict):
            draft.content["usage"] = data["usage"]
        if data.get("error"):
            draft.content["error"] = str(data["error"])[:2000]
        self.last_kind = "agent"
        return draft

    def take_touched(self) -> list[Draft]:
        """The drafts changed since the last call, in conversation order."""
        keys, self.touched = self.touched, []
        return [self.drafts[key] for key in sorted(keys)]


def fold_history(updates: list[JSON]) -> list[Draft]:
    """A whole replayed history as messages, in conversation order."""
    conversation = Conversation()
    for update in updates:
        if isinstance(update, dict):
            conversation.apply(update)
    return [conversation.drafts[key] for key in sorted(conversation.drafts)]


# --- normalized columns --------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """What a draft means for the message row's normalized columns."""

    text: str | None
    thinking: str | None
    tool_calls: list[Any] | None
    tool_results: list[Any] | None
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost: Decimal
    error_message: str | None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _text(draft: Draft) -> str | None:
    if draft.role != "assistant":
        return "".join(_text_of(block) for block in draft.blocks) or None
    # The agent's messages within one turn, each one's chunks joined, separated by a blank line.
    groups: list[tuple[Any, str]] = []
    for block in draft.blocks:
        if block.get("type") != "text":
            continue
        if groups and groups[-1][0] == block.get("message_id"):
            groups[-1] = (groups[-1][0], groups[-1][1] + _text_of(block))
        else:
            groups.append((block.get("message_id"), _text_of(block)))
    return "\n\n".join(text for _, text in groups if text) or None


def columns(draft: Draft) -> Columns:
    """Text, thinking, tool calls and results, usage and error of a draft."""
    text = _text(draft)
    thoughts = [str(b.get("text") or "") for b in draft.blocks if b.get("type") == "thought"]
    calls = [b for b in draft.blocks if b.get("type") == "tool_call"]
    call_fields = ("toolCallId", "title", "kind", "status", "rawInput", "locations")
    tool_calls = [{k: b.get(k) for k in call_fields if b.get(k) is not None} for b in calls]
    tool_results = [
        {k: b.get(k) for k in ("toolCallId", "status", "content", "rawOutput") if b.get(k) is not None}
        for b in calls
        if b.get("status") in ("completed", "failed")
    ]
    usage = draft.content.get("usage") if isinstance(draft.content.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    cost = draft.content.get("context", {}).get("cost") if isinstance(draft.content.get("context"), dict) else None
    amount = cost.get("amount") if isinstance(cost, dict) else None
    return Columns(
        text=text,
        thinking="".join(thoughts) or None,
        tool_calls=tool_calls or None,
        tool_results=tool_results or None,
        input_tokens=_int(usage.get("inputTokens")),
        output_tokens=_int(usage.get("outputTokens")),
        reasoning_tokens=_int(usage.get("thoughtTokens")),
        cache_read_tokens=_int(usage.get("cachedReadTokens")),
        cache_write_tokens=_int(usage.get("cachedWriteTokens")),
        cost=Decimal(str(amount)) if isinstance(amount, int | float) and not isinstance(amount, bool) else Decimal(0),
        error_message=str(draft.content["error"]) if draft.content.get("error") else None,
    )
