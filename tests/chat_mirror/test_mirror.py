"""A mirror serializes its own calls: two tasks never interleave inside it, and one method may call another."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from agentpod.chat_mirror.mirror import Mirror, serialized
from agentpod.store.base import utcnow


class Probe(Mirror):
    """A mirror whose serialized methods only record when they run."""

    def __init__(self) -> None:
        super().__init__(cast(Any, None), sandbox_id="sb", user_id="u", now=utcnow)
        self.log: list[str] = []

    @serialized
    async def step(self, name: str) -> None:
        self.log.append(f"{name} in")
        await asyncio.sleep(0.01)  # another task gets the loop here: it must wait
        self.log.append(f"{name} out")

    @serialized
    async def compound(self) -> None:
        await self.step("first")
        await self.step("second")


async def test_calls_from_two_tasks_run_one_after_the_other() -> None:
    probe = Probe()
    await asyncio.gather(probe.step("a"), probe.step("b"))
    assert probe.log == ["a in", "a out", "b in", "b out"]


async def test_a_serialized_method_calls_another_as_one_step() -> None:
    probe = Probe()
    # The flusher's call, arriving while the compound step runs, waits for the whole of it.
    await asyncio.wait_for(asyncio.gather(probe.compound(), probe.step("flush")), timeout=5)
    assert probe.log == ["first in", "first out", "second in", "second out", "flush in", "flush out"]
