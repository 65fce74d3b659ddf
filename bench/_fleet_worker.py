"""``agentpod worker`` with more activity slots, for ``bench_fleet``: ``python -m bench._fleet_worker <slots>``.

The worker process is the project's own (``worker.run_worker``: settings from the environment, schema
check, Temporal client, archival schedule, ``build_worker``, SIGTERM handling). The one difference:
``temporalio.worker.Worker`` defaults to 100 concurrent activities, and every sync loop holds one
activity for its whole 5-minute segment, so a stock worker streams at most 100 sandboxes. Here the
``Worker`` that ``build_worker`` constructs gets ``max_concurrent_activities=<slots>`` instead.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from temporalio.worker import Worker

import worker as worker_module


def main(slots: int) -> None:
    def with_slots(*args: Any, **kwargs: Any) -> Worker:
        kwargs.setdefault("max_concurrent_activities", slots)
        return Worker(*args, **kwargs)

    vars(worker_module)["Worker"] = with_slots  # the name build_worker calls
    asyncio.run(worker_module.run_worker())


if __name__ == "__main__":
    main(int(sys.argv[1]))
