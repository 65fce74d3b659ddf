"""Clients for the outside systems the control plane drives (the Docker engine, ...).

Plain synchronous or asynchronous code with no Temporal in it; activities wrap these.
"""
