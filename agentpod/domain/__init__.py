"""Plain pydantic types shared by the API, workflows and activities.

Workflow modules may import only the standard library, ``temporalio`` and this package,
so nothing here may import SQLAlchemy, httpx, docker or any other I/O library.
"""
