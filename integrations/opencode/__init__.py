"""OpenCode, as seen from the control plane: its HTTP API and SSE stream (``client``), and the mirror
that turns its sessions, messages and events into our chat rows (``mirror``)."""
