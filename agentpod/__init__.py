"""The AgentPod control plane's library: what `api`, `workflows`, `activities` and `worker.py` use.

Imports nothing on purpose: Temporal's workflow sandbox re-runs package ``__init__`` modules for every
workflow run, and ``workflows`` import ``agentpod.domain`` (plain types only).

| package | holds |
| --- | --- |
| ``settings``, ``logging``, ``temporal``, ``heap`` | configuration, logs, the Temporal client, heap tuning |
| ``domain`` | plain pydantic types shared by the API, workflows and activities |
| ``store`` | tables, migrations and one query module per feature |
| ``security`` | passwords, tokens, the encryption keyring, the gateway secret |
| ``notify`` | change notifications (in-process, PostgreSQL LISTEN/NOTIFY) and SSE streams |
| ``clients`` | talk to the outside: Docker engine, OpenCode, the ACP gateway (no database) |
| ``chat_mirror`` | the whole path from an agent's event to a chat row |
| ``cli`` | the ``agentpod`` command |
"""
