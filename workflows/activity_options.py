"""How workflows call activities: :class:`ActivityOptions` (timeouts, retries, heartbeat) and
:func:`execute`, the one typed call every workflow makes.

Workflows never import activity code (it does I/O): they call an activity through its contract
(:mod:`agentpod.domain.contracts`), which names it and types its arguments and result. Each workflow
declares the options of its kinds of activities beside its code, as ``ActivityOptions`` constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar, TypeVarTuple

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from agentpod.domain.contracts import ActivityContract

R = TypeVar("R")
Args = TypeVarTuple("Args")


@dataclass(frozen=True)
class ActivityOptions:
    """Timeouts and retries for one kind of activity."""

    start_to_close: timedelta
    retry: RetryPolicy
    # Set for activities that heartbeat: a worker that died mid-call is noticed after this, not at the
    # end of ``start_to_close``.
    heartbeat: timedelta | None = None


async def execute(contract: ActivityContract[*Args, R], *args: *Args, options: ActivityOptions) -> R:
    """Run ``contract``'s activity with ``args`` and return its result (decoded as the contract says)."""
    result: R = await workflow.execute_activity(
        contract.name,
        args=args,
        result_type=contract.result_type,
        start_to_close_timeout=options.start_to_close,
        heartbeat_timeout=options.heartbeat,
        retry_policy=options.retry,
    )
    return result
