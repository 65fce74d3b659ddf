"""The chat mirrors' activity contracts: what each sync workflow's stream segment and reconcile take and return.

Each mirror (OpenCode, ACP) runs the same two kinds of activity, so a sync workflow names its pair
(:class:`MirrorContracts`) and the activities register under the same names. The argument and result
types live in :mod:`agentpod.domain.chat` (the chat API shows them too). Names are in saved histories:
never rename one.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentpod.domain.chat import ReconcileReport, StreamSegmentInput, StreamSegmentResult, SyncTarget
from agentpod.domain.contracts import ActivityContract, contract


@dataclass(frozen=True)
class MirrorContracts:
    """The activities of one mirror's sync workflow."""

    segment: ActivityContract[StreamSegmentInput, StreamSegmentResult]  # one bounded stretch of the live stream
    reconcile: ActivityContract[SyncTarget, ReconcileReport]  # one full reconcile ("sync now", the last one)


OPENCODE_MIRROR = MirrorContracts(
    segment=contract("opencode_stream_segment", StreamSegmentInput, returns=StreamSegmentResult),
    reconcile=contract("opencode_reconcile", SyncTarget, returns=ReconcileReport),
)
ACP_MIRROR = MirrorContracts(
    segment=contract("acp_stream_segment", StreamSegmentInput, returns=StreamSegmentResult),
    reconcile=contract("acp_reconcile", SyncTarget, returns=ReconcileReport),
)
