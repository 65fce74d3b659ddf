"""The chat mirror: the whole path from an agent's event (OpenCode or an ACP agent) to a row in our chat tables.

``segment`` runs one stretch of a live stream (connect, read, flush, back off) for any source;
``opencode`` and ``acp`` are the two mirrors and the sources that plug their connect, event dispatch
and reconcile into it; ``mirror`` is what both mirrors share (their lock, how a message row is
written); ``coalescer``, the mappings and ``acp_transcript`` turn events into rows; ``status`` decides
when the sync status reaches the database.
"""
