"""The chat mirror: the whole path from an agent's event (OpenCode or an ACP agent) to a row in our chat tables.

``segment`` runs one stretch of a live stream (connect, read, flush, back off), ``opencode`` and ``acp``
plug their own event dispatch into it; ``coalescer``, the mappings and ``acp_transcript`` turn events
into rows; ``status`` decides when the sync status reaches the database.
"""
