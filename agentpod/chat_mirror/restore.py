"""Stored chat rows → OpenCode's own export format, so ``opencode import`` can put a lost session back.

``opencode export`` writes, and ``opencode import`` reads, one session as
``{"info": Session, "messages": [{"info": Message, "parts": [Part, ...]}, ...]}``. The mirror keeps every
message's raw ``{info, parts}`` verbatim (``ChatMessage.content``), so messages and parts go back exactly
as OpenCode had them, ids included. The Session object itself is not stored raw: it is rebuilt from our
row (id, title, parent, times) and what its messages say (directory, the last turn's agent and model,
cost and token totals); the import puts it into the server's current project itself.

Pure functions (no I/O). :func:`restore_order` decides which sessions a restore puts back and in
which order; :func:`upstream_covers` is the completeness rule both the restore and the
mirror's reconcile use: a session that reappears upstream counts as back only once it holds every
message (and part) of ours that could be restored.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from agentpod.chat_mirror.opencode_mapping import EPOCH, as_object, as_objects, dig, part_sort_key
from agentpod.domain.session_restore import SessionRestoreItem
from agentpod.store.chat_sync import SessionRow

JSON = dict[str, Any]

RESTORABLE_ROLES = frozenset({"user", "assistant"})
DEFAULT_TITLE = "Restored session"


def to_ms(value: datetime) -> int:
    """An aware datetime as OpenCode's epoch milliseconds (exact: no float arithmetic)."""
    return (value - EPOCH) // timedelta(milliseconds=1)


def _number(value: Any) -> int | float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def restorable(content: Mapping[str, Any] | None) -> bool:
    """Whether a stored message is whole enough to import: OpenCode sent its info (id, role, creation
    time). A placeholder (parts whose message info never arrived) is not."""
    info = as_object((content or {}).get("info"))
    return (
        isinstance(info.get("id"), str)
        and info.get("role") in RESTORABLE_ROLES
        and isinstance(dig(info, "time", "created"), int | float)
    )


def export_message(content: Mapping[str, Any], session_id: str) -> JSON:
    """One stored message as the import reads it (ids kept; the session id is the restored session's)."""
    info = {**as_object(content.get("info")), "sessionID": session_id}
    parts = [
        {**part, "sessionID": session_id, "messageID": info["id"]}
        for part in sorted(as_objects(content.get("parts")), key=part_sort_key)
        if part.get("id")
    ]
    return {"info": info, "parts": parts}


def _slug(session_id: str) -> str:
    # OpenCode's slugs are two words chosen at random; the original is not stored, so a stable stand-in.
    return "restored-" + session_id.removeprefix("ses_")[-8:].lower()


def session_info(session: SessionRow, messages: Sequence[JSON], *, version: str, now: datetime) -> JSON:
    """The Session object for ``session`` (``messages``: its exported messages, oldest first)."""
    infos = [m["info"] for m in messages]
    created = session.upstream_created_at or (
        None if not infos else EPOCH + timedelta(milliseconds=_number(dig(infos[0], "time", "created")))
    )
    created_ms = to_ms(created) if created else to_ms(now)
    latest = max((_number(dig(info, "time", key)) for info in infos for key in ("created", "completed")), default=0)
    updated_ms = max(created_ms, int(latest), to_ms(session.upstream_updated_at) if session.upstream_updated_at else 0)
    info: JSON = {
        "id": session.external_session_id,
        "slug": _slug(session.external_session_id),
        "version": version,
        "title": session.title or DEFAULT_TITLE,
        "time": {"created": created_ms, "updated": updated_ms},
    }
    if session.parent_external_session_id:
        info["parentID"] = session.parent_external_session_id
    assistants = [i for i in infos if i.get("role") == "assistant"]
    cwd = next((dig(i, "path", "cwd") for i in reversed(assistants) if isinstance(dig(i, "path", "cwd"), str)), None)
    if cwd:
        info["directory"] = cwd
    last_user = next((i for i in reversed(infos) if i.get("role") == "user"), None)
    if last_user is not None:
        if isinstance(last_user.get("agent"), str):
            info["agent"] = last_user["agent"]
        provider, model = dig(last_user, "model", "providerID"), dig(last_user, "model", "modelID")
        if isinstance(provider, str) and isinstance(model, str):
            info["model"] = {"id": model, "providerID": provider}
    info["cost"] = sum(_number(i.get("cost")) for i in assistants)
    info["tokens"] = {
        "input": sum(_number(dig(i, "tokens", "input")) for i in assistants),
        "output": sum(_number(dig(i, "tokens", "output")) for i in assistants),
        "reasoning": sum(_number(dig(i, "tokens", "reasoning")) for i in assistants),
        "cache": {
            "read": sum(_number(dig(i, "tokens", "cache", "read")) for i in assistants),
            "write": sum(_number(dig(i, "tokens", "cache", "write")) for i in assistants),
        },
    }
    return info


def session_export(session: SessionRow, contents: Iterable[Mapping[str, Any]], *, version: str, now: datetime) -> JSON:
    """``{"info": Session, "messages": [...]}`` of one stored session, for ``opencode import``.

    ``contents``: the stored ``content`` of its messages in reading order (upstream time, then id);
    placeholders are left out (see :func:`restorable`). ``version``: the OpenCode version to record.
    """
    session_id = session.external_session_id
    messages = [export_message(content, session_id) for content in contents if restorable(content)]
    return {"info": session_info(session, messages, version=version, now=now), "messages": messages}


def store_place(project: Mapping[str, Any], paths: Mapping[str, Any]) -> JSON:
    """Where a restored session belongs in the running server's store, as ``opencode import`` (run in the
    server's directory) puts it: the server's project, its directory, and that directory relative to the
    project's worktree (``""`` when they are the same)."""
    directory = str(paths.get("directory") or "")
    worktree = str(project.get("worktree") or paths.get("worktree") or directory)
    relative = posixpath.relpath(directory, worktree) if directory and worktree else ""
    path = "" if relative == "." else relative
    return {"id": str(project.get("id") or "global"), "directory": directory, "path": path}


def expected_parts(contents: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Message id → part ids, of the stored messages that can be restored."""
    expected: dict[str, set[str]] = {}
    for content in contents:
        if restorable(content):
            parts = as_objects(content.get("parts"))
            expected[str(as_object(content.get("info"))["id"])] = {str(p["id"]) for p in parts if p.get("id")}
    return expected


def upstream_covers(ours: Mapping[str, set[str]], upstream_messages: Iterable[Mapping[str, Any]]) -> bool:
    """Whether OpenCode's listing of a session holds every message and part in ``ours``
    (:func:`expected_parts`): more is fine (the conversation went on), less means a restore is missing
    or still under way."""
    listed = {
        str(as_object(m.get("info")).get("id")): {str(p.get("id")) for p in as_objects(m.get("parts"))}
        for m in upstream_messages
    }
    return all(message_id in listed and parts <= listed[message_id] for message_id, parts in ours.items())


def _recency(row: SessionRow) -> datetime:
    return row.upstream_updated_at or row.upstream_created_at or row.created_at


def restore_order(rows: Mapping[str, SessionRow], requested: Iterable[str] = ()) -> list[SessionRestoreItem]:
    """The sessions to restore, in order: every live session flagged missing upstream plus the
    ``requested`` ones, grouped in families (a session with its descendants), the family with the most
    recent activity first, each parent before its children (newest child first).

    ``rows``: the sandbox's OpenCode session rows by upstream id (``store.chat_sync.list_sessions``).
    """
    live = {key: row for key, row in rows.items() if row.status != "deleted"}
    wanted = {key for key, row in live.items() if row.missing_upstream_at is not None}
    wanted |= {key for key in requested if key in live}
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for key in wanted:
        parent = live[key].parent_external_session_id
        if parent in wanted and parent != key:
            children.setdefault(parent, []).append(key)
        else:
            roots.append(key)

    def newest_first(keys: Iterable[str], latest: Mapping[str, datetime]) -> list[str]:
        return sorted(keys, key=lambda key: (latest[key], key), reverse=True)

    # Latest activity in each subtree (iterative: no recursion limit, and a cycle in bad data ends).
    latest: dict[str, datetime] = {}

    def subtree_latest(root: str) -> datetime:
        stack, order, seen = [root], [], set()
        while stack:
            key = stack.pop()
            if key in seen:
                continue
            seen.add(key)
            order.append(key)
            stack.extend(children.get(key, []))
        for key in reversed(order):
            latest[key] = max([_recency(live[key]), *(latest.get(c, _recency(live[c])) for c in children.get(key, []))])
        return latest[root]

    for root in roots:
        subtree_latest(root)
    ordered: list[SessionRestoreItem] = []
    placed: set[str] = set()
    for root in newest_first(roots, latest):
        stack = [root]
        while stack:
            key = stack.pop()
            if key in placed:
                continue
            placed.add(key)
            ordered.append(SessionRestoreItem(session_id=key, parent_id=live[key].parent_external_session_id))
            # Pushed oldest first, so the newest child comes out next.
            stack.extend(reversed(newest_first(children.get(key, []), latest)))
    # Only a parent cycle (bad data) leaves sessions unplaced: they come last, newest first.
    stray = [key for key in wanted if key not in placed]
    for key in sorted(stray, key=lambda key: (_recency(live[key]), key), reverse=True):
        ordered.append(SessionRestoreItem(session_id=key, parent_id=None))
    return ordered
