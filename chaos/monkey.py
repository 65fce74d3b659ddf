"""The chaos monkey: at random moments (seeded), SIGKILL a worker, an API, the Temporal server, or
``docker kill`` a sandbox container of this run. Processes come back after a random pause, the way a
process manager restarts them; containers are left to the product's drift repair.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker

from chaos.processes import Managed, Stack

TARGETS = ("worker", "api", "temporal", "container")


@dataclass
class MonkeySettings:
    """How often and how hard the monkey strikes."""

    min_gap: float = 4.0
    max_gap: float = 16.0
    min_down: float = 0.5
    max_down: float = 4.0
    max_strikes: int = 2  # per iteration: bounds how long an iteration can be dragged out
    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TARGETS, 1.0))


class Monkey:
    """One iteration's monkey; ``events`` is the log of what it did (seconds since its start)."""

    def __init__(
        self,
        stack: Stack,
        docker_client: docker.DockerClient,
        rng: random.Random,
        settings: MonkeySettings,
        containers: Callable[[], list[str]],
    ) -> None:
        self.stack = stack
        self.docker = docker_client
        self.rng = rng
        self.settings = settings
        self.containers = containers
        self.events: list[dict[str, Any]] = []
        self._began = time.monotonic()

    def _log(self, target: str, detail: str) -> None:
        self.events.append({"t": round(time.monotonic() - self._began, 1), "target": target, "detail": detail})

    async def run(self, stop: asyncio.Event) -> None:
        """Strike at random gaps (at most ``max_strikes`` times) until ``stop`` is set; a restart in
        progress is finished first."""
        s = self.settings
        targets = [t for t in TARGETS if s.weights.get(t, 0) > 0]
        if not targets:
            return
        weights = [s.weights[t] for t in targets]
        for _ in range(s.max_strikes):
            gap = self.rng.uniform(s.min_gap, s.max_gap)
            # Drawn before waiting, so the sequence of choices depends on the seed alone.
            target = self.rng.choices(targets, weights)[0]
            down = self.rng.uniform(s.min_down, s.max_down)
            pick = self.rng.random()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), gap)
            if stop.is_set():
                return
            if target == "container":
                await self._kill_container(pick)
            else:
                await self._kill_process(target, pick, down)

    async def _kill_process(self, target: str, pick: float, down: float) -> None:
        group: list[Managed] = {
            "worker": self.stack.workers,
            "api": self.stack.apis,
            "temporal": [self.stack.temporal],
        }[target]
        process = group[int(pick * len(group))]
        self.stack.pause(process)
        try:
            await asyncio.to_thread(process.kill)
            self._log(target, f"SIGKILL {process.name}, back in {down:.1f} s")
            await asyncio.sleep(down)
            process.start()
        finally:
            self.stack.resume(process)

    async def _kill_container(self, pick: float) -> None:
        names = await asyncio.to_thread(self.containers)
        if not names:
            self._log("container", "none running: skipped")
            return
        name = names[int(pick * len(names))]
        try:
            await asyncio.to_thread(lambda: self.docker.containers.get(name).kill())
            self._log("container", f"docker kill {name}")
        except docker.errors.APIError as error:  # NotFound included: it went meanwhile
            self._log("container", f"docker kill {name} failed: {error}")
