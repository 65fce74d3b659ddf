"""Temporal workflows: pure orchestration. Modules here import only the standard library,
``temporalio`` and ``domain`` (never SQLAlchemy, httpx or docker: I/O belongs in ``activities``).

The worker registers ``workflows.registry.ALL_WORKFLOWS``. This file imports nothing: the sandbox
runs it again for every workflow it starts.
"""
