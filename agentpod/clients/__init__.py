"""Clients for the outside systems the control plane drives: the Docker engine, OpenCode, the ACP gateway.

Plain synchronous or asynchronous code with no Temporal and no database in it; activities wrap these.
"""
