"""Sandbox start: ``POST /api/v2/sandboxes/{id}/start`` until running, against plain ``docker run``.

The API figure is what a user waits for: the request goes through the API, Temporal (update-with-start
of the sandbox's workflow) and the worker's activities (load spec, ensure container, start, endpoints,
wait until OpenCode is healthy, push credentials, status writes, audit record) and returns once
OpenCode answers ``/global/health``. The baseline starts the same image with the plain docker SDK
(``containers.run`` with the same published ports, limits, tmpfs and named volumes the engine uses)
and polls ``/global/health`` on the published port every 50 ms. Both are measured in the same run,
interleaved (the order alternates every round, one container running at a time) so drift of the
machine cancels out.

Two cases:

* **cold**: the first start of a new sandbox (volumes and container created, then started);
* **warm**: the start of a previously stopped sandbox (container exists: just start + health) — the
  common case.

Target (sandbox-lifecycle issue): orchestration overhead ≤ 10 % or ≤ 300 ms, whichever is larger, on
the median. Maxima are reported for information. Afterwards the workflow histories say where the
API's extra time goes, activity by activity.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import docker
import docker.errors
import httpx
from rich.table import Table
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.service import RPCError

from agentpod.clients.docker_engine import (
    AGENT_UID,
    AGENT_USER,
    CONFIG_WAIT_SECONDS,
    DATA_PATH,
    SECRETS_PATH,
    WORKSPACE_PATH,
)
from agentpod.clients.docker_network import ensure_sandbox_network
from agentpod.domain.sandbox import (
    ACP_GATEWAY_PORT,
    DEFAULT_SANDBOX_NETWORK,
    OPENCODE_PORT,
    container_name,
    volume_names,
)
from bench._result import Result, console, p50
from bench._stack import Stack, running_stack
from workflows.ids import sandbox_workflow_id

IMAGE = "agentpod-sandbox:dev"
RUNS = 5  # measured rounds (each: one new sandbox and one new direct container)
WARMUP = 1  # rounds run first and thrown away (caches, first workflow task, first volume copy)
HEALTH_POLL_SECONDS = 0.05
HEALTH_TIMEOUT_SECONDS = 120.0
SETTLE_SECONDS = 0.5  # after each stop, so one container's teardown does not bleed into the next start
ABSOLUTE_ALLOWANCE_MS = 300.0
RELATIVE_ALLOWANCE = 0.10

# What the engine gives a sandbox of the default tier (starter: 1 CPU, 2 GB) without add-ons; the
# parity check after the warm-up round compares these with the container the API made.
CPU_CORES = 1.0
MEMORY_BYTES = 2 * 1024**3
PIDS_LIMIT = 256
SECRETS_TMPFS = f"rw,nosuid,nodev,noexec,size=1m,mode=0700,uid={AGENT_UID},gid={AGENT_UID}"
# The baseline container gets the same OpenCode server password handshake as a sandbox.
BENCH_OPENCODE_PASSWORD = "bench-opencode-password"
PORTS = (OPENCODE_PORT, ACP_GATEWAY_PORT)
BENCH_LABEL = "agentpod-bench.run"


# --------------------------------------------------------------------------- the direct baseline


@dataclass
class Direct:
    """A container started with the plain docker SDK, shaped like a sandbox's."""

    docker: Any
    name: str
    run_id: str
    container: Any = None

    @property
    def volumes(self) -> tuple[str, str]:
        return f"{self.name}-workspace", f"{self.name}-data"

    def create_and_start(self) -> int:
        """Volumes, then ``containers.run`` (create + start); returns the published OpenCode port."""
        labels = {BENCH_LABEL: self.run_id}
        workspace, data = self.volumes
        for volume in (workspace, data):
            self.docker.volumes.create(name=volume, labels=labels)
        ensure_sandbox_network(self.docker.api, DEFAULT_SANDBOX_NETWORK)  # what a sandbox joins
        self.container = self.docker.containers.run(
            IMAGE,
            name=self.name,
            detach=True,
            labels=labels,
            environment={
                "AGENTPOD_SANDBOX_ID": self.name,
                "AGENTPOD_REPO_NAME": "bench",
                "AGENTPOD_CONFIG_WAIT": str(CONFIG_WAIT_SECONDS),
            },
            ports={f"{port}/tcp": ("127.0.0.1",) for port in PORTS},
            volumes={
                workspace: {"bind": WORKSPACE_PATH, "mode": "rw"},
                data: {"bind": DATA_PATH, "mode": "rw"},
            },
            tmpfs={SECRETS_PATH: SECRETS_TMPFS, "/tmp": "rw,nosuid,nodev,size=256m,mode=1777"},
            user=AGENT_USER,
            read_only=True,
            cap_drop=["ALL"],
            nano_cpus=round(CPU_CORES * 1e9),
            mem_limit=MEMORY_BYTES,
            pids_limit=PIDS_LIMIT,
            init=True,
            security_opt=["no-new-privileges:true"],
            network_mode=DEFAULT_SANDBOX_NETWORK,
        )
        self._release()
        return self._opencode_port()

    def start(self) -> int:
        """Start the stopped container; returns the published OpenCode port (Docker picks a new one)."""
        self.container.start()
        self._release()
        return self._opencode_port()

    def _release(self) -> None:
        # The same handshake the control plane does (with no config to deliver): let OpenCode start.
        script = f'umask 077 && printf %s {BENCH_OPENCODE_PASSWORD} > "$0/opencode-password" && touch "$0/ready"'
        self.container.exec_run(["sh", "-c", script, SECRETS_PATH])

    def stop(self) -> None:
        self.container.stop(timeout=10)

    def _opencode_port(self) -> int:
        self.container.reload()  # ports are only known once it runs
        bindings = self.container.attrs["NetworkSettings"]["Ports"][f"{OPENCODE_PORT}/tcp"]
        return int(bindings[0]["HostPort"])

    def remove(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.docker.containers.get(self.name).remove(force=True, v=False)
        for volume in self.volumes:
            with contextlib.suppress(docker.errors.NotFound):
                self.docker.volumes.get(volume).remove(force=True)


async def _probe(client: httpx.AsyncClient, url: str) -> bool:
    try:
        response = await client.get(url)
        return response.status_code == 200 and response.json().get("healthy") is True
    except (httpx.HTTPError, ValueError):
        return False


async def wait_healthy(port: int) -> None:
    """Probe ``/global/health`` every 50 ms until healthy; probes overlap like the worker's do.

    Overlapping matters: a request that reaches OpenCode the instant it starts listening may never be
    answered, and waiting it out would charge its whole timeout to the baseline.
    """
    url = f"http://127.0.0.1:{port}/global/health"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEALTH_TIMEOUT_SECONDS
    next_probe = loop.time()
    probes: set[asyncio.Task[bool]] = set()
    async with httpx.AsyncClient(trust_env=False, timeout=5, auth=("opencode", BENCH_OPENCODE_PASSWORD)) as client:
        try:
            while True:
                now = loop.time()
                if now > deadline:
                    raise TimeoutError(f"OpenCode on port {port} not healthy after {HEALTH_TIMEOUT_SECONDS} s")
                if now >= next_probe:
                    probes.add(asyncio.create_task(_probe(client, url)))
                    next_probe = now + HEALTH_POLL_SECONDS
                wait = max(0.0, next_probe - now)
                if not probes:
                    await asyncio.sleep(wait)
                    continue
                done, probes = await asyncio.wait(probes, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if any(probe.result() for probe in done):
                    return
        finally:
            for probe in probes:
                probe.cancel()
            await asyncio.gather(*probes, return_exceptions=True)


# --------------------------------------------------------------------------- the API side


@dataclass
class ApiStart:
    """One timed ``POST .../start``: wall-clock bounds and the container's start, to line up with history."""

    sandbox_id: str
    kind: str  # cold / warm
    began: float
    ended: float
    container_started_at: float


async def api_start(stack: Stack, sandbox_id: str) -> None:
    response = await stack.client.post(f"/api/v2/sandboxes/{sandbox_id}/start", headers=stack.headers)
    body = response.json()
    if response.status_code != 200 or body.get("status") != "running":
        raise RuntimeError(f"start of {sandbox_id} ended {response.status_code}: {response.text[:500]}")


async def api_stop(stack: Stack, sandbox_id: str) -> None:
    response = await stack.client.post(f"/api/v2/sandboxes/{sandbox_id}/stop", headers=stack.headers)
    if response.status_code != 200 or response.json().get("status") != "stopped":
        raise RuntimeError(f"stop of {sandbox_id} ended {response.status_code}: {response.text[:500]}")


def started_at(client: Any, name: str) -> float:
    """When Docker started the container's process (``State.StartedAt``), as a Unix timestamp."""
    stamp = client.api.inspect_container(name)["State"]["StartedAt"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- parity


def _shape(attrs: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``docker inspect`` that must match between API and direct containers."""
    host = attrs["HostConfig"]
    return {
        "image": attrs["Config"]["Image"],
        "NanoCpus": host.get("NanoCpus"),
        "Memory": host.get("Memory"),
        "PidsLimit": host.get("PidsLimit"),
        "Init": host.get("Init"),
        "SecurityOpt": host.get("SecurityOpt"),
        "Tmpfs": host.get("Tmpfs"),
        "NetworkMode": host.get("NetworkMode"),
        "RestartPolicy": (host.get("RestartPolicy") or {}).get("Name") or "no",
        "PortBindings": {
            key: sorted(binding.get("HostIp", "") for binding in value)
            for key, value in (host.get("PortBindings") or {}).items()
        },
        "Mounts": sorted((m["Type"], m["Destination"]) for m in attrs["Mounts"]),
        "EnvKeys": sorted(entry.split("=", 1)[0] for entry in attrs["Config"]["Env"] if entry.startswith("AGENTPOD_")),
    }


def check_parity(client: Any, sandbox_id: str, direct: Direct) -> None:
    """Raise when the baseline container is not shaped like the one the API made."""
    api_shape = _shape(client.api.inspect_container(container_name(sandbox_id)))
    direct_shape = _shape(client.api.inspect_container(direct.name))
    differences = {key: (api_shape[key], direct_shape[key]) for key in api_shape if api_shape[key] != direct_shape[key]}
    if differences:
        raise RuntimeError(f"baseline container differs from the API's (api, direct): {differences}")
    console.print("parity: the direct container has the same image, limits, ports, tmpfs and volumes")


# --------------------------------------------------------------------------- where the time goes

CONTAINER_ACTIVITIES = ("docker_ensure_container", "docker_start_container", "wait_opencode_healthy")
DOCKER_CALLS = "docker calls (create/start + inspect)"
HEALTH_WAIT = "health wait after the docker calls"
BOOT = "container StartedAt → healthy seen"


def _seconds(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


def start_segments(
    events: list[HistoryEvent], starts: list[ApiStart]
) -> list[tuple[dict[str, float], dict[str, float]]]:
    """Per start update in ``events`` (in order, matched to ``starts``): (segments, container figures).

    Segments, in milliseconds, add up to the request's wall time: API → update accepted; each activity
    from scheduled to closed (``name#2`` for a second run of the same activity); the workflow-task
    turns between activities (the gaps); update completed → API response. Container figures are the
    ones the direct baseline has too (see :data:`DOCKER_CALLS`, :data:`HEALTH_WAIT`, :data:`BOOT`).
    """
    accepted: list[tuple[str, HistoryEvent]] = []
    completed: dict[str, HistoryEvent] = {}
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            request = event.workflow_execution_update_accepted_event_attributes.accepted_request
            if request.input.name == "start":
                accepted.append((request.meta.update_id, event))
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
            completed[event.workflow_execution_update_completed_event_attributes.meta.update_id] = event
    scheduled = {e.event_id: e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED}
    closed = {getattr(e, _CLOSED[e.event_type]).scheduled_event_id: e for e in events if e.event_type in _CLOSED}
    out: list[tuple[dict[str, float], dict[str, float]]] = []
    for (update_id, accept), timed in zip(accepted, starts, strict=True):
        done = completed[update_id]
        figures: dict[str, float] = {"API → update accepted": (_seconds(accept) - timed.began) * 1000}
        container: dict[str, float] = {DOCKER_CALLS: 0.0}
        seen: dict[str, int] = defaultdict(int)
        turns = 0.0
        previous_end = _seconds(accept)
        for event_id, event in sorted(scheduled.items()):
            if not accept.event_id < event_id < done.event_id or event_id not in closed:
                continue
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            seen[name] += 1
            label = name if seen[name] == 1 else f"{name}#{seen[name]}"
            begin, end = _seconds(event), _seconds(closed[event_id])
            figures[label] = (end - begin) * 1000
            if name in CONTAINER_ACTIVITIES[:2]:
                container[DOCKER_CALLS] += figures[label]
            elif name == "wait_opencode_healthy":
                container[HEALTH_WAIT] = figures[label]
                container[BOOT] = (end - timed.container_started_at) * 1000
            turns += max(0.0, begin - previous_end) * 1000
            previous_end = end
        turns += max(0.0, _seconds(done) - previous_end) * 1000
        figures["workflow task turns (gaps)"] = turns
        figures["update completed → API response"] = (timed.ended - _seconds(done)) * 1000
        out.append((figures, container))
    return out


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    labels = list(dict.fromkeys(label for row in rows for label in row))
    return {label: p50([row.get(label, 0.0) for row in rows]) for label in labels}


async def breakdown(
    stack: Stack, starts: list[ApiStart]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Median ms per segment of the API start, and of its container figures, for cold and warm."""
    by_sandbox: dict[str, list[ApiStart]] = defaultdict(list)
    for start in starts:
        by_sandbox[start.sandbox_id].append(start)
    segments: dict[str, list[dict[str, float]]] = defaultdict(list)
    containers: dict[str, list[dict[str, float]]] = defaultdict(list)
    for sandbox_id, requests in by_sandbox.items():
        handle = stack.temporal.client.get_workflow_handle(sandbox_workflow_id(sandbox_id))
        history = await handle.fetch_history()
        for request, (figures, container) in zip(requests, start_segments(list(history.events), requests), strict=True):
            segments[request.kind].append(figures)
            containers[request.kind].append(container)
    return (
        {kind: _medians(rows) for kind, rows in segments.items()},
        {kind: _medians(rows) for kind, rows in containers.items()},
    )


def segments_table(medians: dict[str, dict[str, float]], api_p50: dict[str, float]) -> Table:
    table = Table(title="Where the API start's time goes (median ms per segment)")
    kinds = [kind for kind in ("cold", "warm") if kind in medians]
    table.add_column("segment")
    for kind in kinds:
        table.add_column(kind, justify="right")
    for label in dict.fromkeys(label for kind in kinds for label in medians[kind]):
        table.add_row(label, *(f"{medians[kind].get(label, 0.0):,.0f}" for kind in kinds))
    table.add_row("sum of the segment medians", *(f"{sum(medians[kind].values()):,.0f}" for kind in kinds))
    table.add_row("API start p50 (measured)", *(f"{api_p50[kind]:,.0f}" for kind in kinds))
    return table


def container_table(api: dict[str, dict[str, float]], direct: dict[str, dict[str, float]]) -> Table:
    table = Table(title="The container itself, API vs direct (median ms)")
    table.add_column("figure")
    for kind in ("cold", "warm"):
        for side in ("API", "direct"):
            table.add_column(f"{kind} {side}", justify="right")
    for label in (DOCKER_CALLS, HEALTH_WAIT, BOOT):
        cells = [
            f"{figures.get(kind, {}).get(label, 0.0):,.0f}" for kind in ("cold", "warm") for figures in (api, direct)
        ]
        table.add_row(label, *cells)
    return table


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Samples:
    """Milliseconds per start, by side and kind, plus the direct side's container figures."""

    api: dict[str, list[float]] = field(default_factory=lambda: {"cold": [], "warm": []})
    direct: dict[str, list[float]] = field(default_factory=lambda: {"cold": [], "warm": []})
    direct_container: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {"cold": [], "warm": []})


def _results(samples: Samples, details: dict[str, Any]) -> list[Result]:
    rows: list[Result] = []
    for kind in ("cold", "warm"):
        api, direct = samples.api[kind], samples.direct[kind]
        api_mid, direct_mid = p50(api), p50(direct)
        overhead = api_mid - direct_mid
        allowed = max(ABSOLUTE_ALLOWANCE_MS, RELATIVE_ALLOWANCE * direct_mid)
        passed = overhead <= allowed
        paired = p50([a - d for a, d in zip(api, direct, strict=True)])
        rows += [
            Result(
                f"sandbox start {kind} p50 (API vs docker)",
                api_mid,
                "ms",
                baseline=direct_mid,
                target="overhead ≤ max(10 %, 300 ms)",
                passed=passed,
                details={"api_ms": api, "direct_ms": direct, **({"run": details} if kind == "cold" else {})},
            ),
            Result(
                f"sandbox start {kind} max (API vs docker)",
                max(api),
                "ms",
                baseline=max(direct),
                target="info",
            ),
            Result(
                f"  {kind} overhead p50",
                overhead,
                "ms",
                target=f"≤ {allowed:,.0f} ms",
                passed=passed,
                details={"paired_median_ms": paired, "allowed_ms": allowed},
            ),
            Result(f"  {kind} overhead p50 relative", 100 * overhead / direct_mid, "%", target="info"),
        ]
        segments = details.get("api_segments_ms", {}).get(kind)
        if segments:
            outside = sum(value for label, value in segments.items() if label not in CONTAINER_ACTIVITIES)
            rows.append(Result(f"  {kind} bookkeeping (non-container segments)", outside, "ms", target="info"))
        container = details.get("container_ms", {})
        api_boot = container.get("api", {}).get(kind, {}).get(BOOT)
        direct_boot = container.get("direct", {}).get(kind, {}).get(BOOT)
        if api_boot is not None and direct_boot is not None:
            rows.append(
                Result(f"  {kind} StartedAt → healthy seen", api_boot, "ms", baseline=direct_boot, target="info")
            )
    return rows


async def run() -> list[Result]:
    """Cold and warm sandbox starts through the API vs straight through the docker SDK."""
    client = docker.from_env(timeout=120)
    try:
        return await _measure(client)
    finally:
        client.close()


async def _measure(client: Any) -> list[Result]:
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        raise RuntimeError(f"image {IMAGE} is not built: run `make image`") from None
    cpus = os.cpu_count()
    console.print(
        f"{cpus} CPUs; {RUNS} measured rounds after {WARMUP} warm-up; image {IMAGE}; health polled "
        f"every {HEALTH_POLL_SECONDS * 1000:.0f} ms (direct) / 250 ms (the worker's activity)"
    )
    run_id = uuid.uuid4().hex[:8]
    samples = Samples()
    starts: list[ApiStart] = []
    sandbox_ids: list[str] = []
    directs: list[Direct] = []
    details: dict[str, Any] = {
        "cpu_count": cpus,
        "runs": RUNS,
        "warmup": WARMUP,
        "image": IMAGE,
        "load_average_1m_at_start": os.getloadavg()[0],
    }
    others: list[int] = []  # running containers that are not this benchmark's, before each measurement
    async with running_stack(sandbox_image=IMAGE) as stack:
        try:
            for round_no in range(WARMUP + RUNS):
                measured = round_no >= WARMUP
                sandbox_id = (await stack.create_sandbox())["id"]
                sandbox_ids.append(sandbox_id)
                direct = Direct(client, f"agentpod-bench-{run_id}-{round_no}", run_id)
                directs.append(direct)

                async def on_api(kind: str, sandbox_id: str = sandbox_id, measured: bool = measured) -> float:
                    wall = time.time()
                    began = time.perf_counter()
                    await api_start(stack, sandbox_id)
                    elapsed = time.perf_counter() - began
                    boot = await asyncio.to_thread(started_at, client, container_name(sandbox_id))
                    if measured:
                        starts.append(ApiStart(sandbox_id, kind, wall, wall + elapsed, boot))
                    await api_stop(stack, sandbox_id)
                    return elapsed * 1000

                async def on_docker(kind: str, direct: Direct = direct, measured: bool = measured) -> float:
                    starter = direct.create_and_start if kind == "cold" else direct.start
                    began = time.perf_counter()
                    port = await asyncio.to_thread(starter)
                    called = time.perf_counter()
                    await wait_healthy(port)
                    healthy, healthy_wall = time.perf_counter(), time.time()
                    boot = await asyncio.to_thread(started_at, client, direct.name)
                    if measured:
                        samples.direct_container[kind].append(
                            {
                                DOCKER_CALLS: (called - began) * 1000,
                                HEALTH_WAIT: (healthy - called) * 1000,
                                BOOT: (healthy_wall - boot) * 1000,
                            }
                        )
                    await asyncio.to_thread(direct.stop)
                    return (healthy - began) * 1000

                for kind in ("cold", "warm"):
                    sides: list[tuple[str, Callable[[str], Awaitable[float]]]] = [
                        ("api", on_api),
                        ("direct", on_docker),
                    ]
                    if round_no % 2:
                        sides.reverse()
                    for side, measure in sides:
                        others.append(await asyncio.to_thread(_foreign_running, client, run_id, sandbox_ids))
                        ms = await measure(kind)
                        if measured:
                            (samples.api if side == "api" else samples.direct)[kind].append(ms)
                        label = f"round {round_no}" + ("" if measured else " (warm-up)")
                        console.print(f"{label}: {kind:4} {side:6} {ms:7,.0f} ms")
                        await asyncio.sleep(SETTLE_SECONDS)
                if round_no == 0:
                    check_parity(client, sandbox_id, direct)
            details["foreign_containers_running_max"] = max(others)
            details["load_average_1m_at_end"] = os.getloadavg()[0]
            if max(others):
                console.print(
                    f"[yellow]warning: up to {max(others)} other containers were running during the "
                    "measurements; the figures include their load[/yellow]"
                )
            segments, api_container = await breakdown(stack, starts)
            direct_container = {kind: _medians(rows) for kind, rows in samples.direct_container.items()}
            details["api_segments_ms"] = segments
            details["container_ms"] = {"api": api_container, "direct": direct_container}
            console.print(segments_table(segments, {k: p50(v) for k, v in samples.api.items()}))
            console.print(container_table(api_container, direct_container))
        finally:
            await _clean_up(stack, client, sandbox_ids, directs, run_id)
    return _results(samples, details)


def _foreign_running(client: Any, run_id: str, sandbox_ids: list[str]) -> int:
    ours = {container_name(sandbox_id) for sandbox_id in sandbox_ids}
    return sum(
        1
        for container in client.containers.list()
        if container.name not in ours and container.labels.get(BENCH_LABEL) != run_id
    )


async def _clean_up(stack: Stack, client: Any, sandbox_ids: list[str], directs: list[Direct], run_id: str) -> None:
    """Terminate the workflows first (no drift repair may bring a container back), then remove everything."""
    for sandbox_id in sandbox_ids:
        handle = stack.temporal.client.get_workflow_handle(sandbox_workflow_id(sandbox_id))
        with contextlib.suppress(RPCError):
            await handle.terminate("benchmark finished")

    def remove_all() -> tuple[int, int]:
        for sandbox_id in sandbox_ids:
            for container in client.containers.list(all=True, filters={"name": container_name(sandbox_id)}):
                container.remove(force=True)
            for volume in volume_names(sandbox_id):
                with contextlib.suppress(docker.errors.NotFound):
                    client.volumes.get(volume).remove(force=True)
        for direct in directs:
            direct.remove()
        wanted = {volume for sandbox_id in sandbox_ids for volume in volume_names(sandbox_id)}
        left_containers = client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}={run_id}"}) + [
            c
            for sandbox_id in sandbox_ids
            for c in client.containers.list(all=True, filters={"name": container_name(sandbox_id)})
        ]
        left_volumes = [
            v
            for v in client.volumes.list()
            if v.name in wanted or (v.attrs.get("Labels") or {}).get(BENCH_LABEL) == run_id
        ]
        return len(left_containers), len(left_volumes)

    containers, volumes = await asyncio.to_thread(remove_all)
    console.print(f"clean-up: {containers} containers and {volumes} volumes left behind")
