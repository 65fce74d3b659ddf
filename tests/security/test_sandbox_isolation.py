"""Tenant isolation, tested from inside a sandbox as an attacker's agent would (``docker exec``).

Two users' sandboxes, A (the victim) and B (the attacker), started by the real Docker activities on
the real engine and image, with the host firewall the worker keeps. Every probe runs *inside* B: a TCP
connect with busybox ``nc``. Each "unreachable" assertion is paired with a control that shows the
same probe succeeding where it should (A reaching itself, the host reaching the service), so a probe
that could never connect would fail the test instead of passing it.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import ActivityEnvironment

from activities.docker import DockerActivities
from activities.resources import WorkerResources
from agentpod.clients.docker_network import host_address
from agentpod.clients.sandbox_firewall import chain_names
from agentpod.domain.sandbox import (
    ACP_GATEWAY_PORT,
    DEFAULT_SANDBOX_NETWORK,
    OPENCODE_PORT,
    ContainerState,
    DeliverConfigInput,
    WaitHealthyInput,
)
from agentpod.security.keyring import Keyring, generate_entry, parse_key
from agentpod.security.sandbox_secrets import gateway_secret, opencode_password
from agentpod.settings import Settings
from tests.clients import docker_client, make_spec, new_sandbox_id, purge

pytestmark = pytest.mark.docker

GREETING = b"agentpod-isolation-probe\n"


class _Greeter(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _SayHello(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(GREETING)


@dataclass
class HostService:
    """A TCP service on the host, on every interface (like an API bound to 0.0.0.0)."""

    port: int
    server: _Greeter


def _serve() -> HostService:
    server = _Greeter(("0.0.0.0", 0), _SayHello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return HostService(port=server.server_address[1], server=server)


@dataclass
class Sandbox:
    sandbox_id: str
    state: ContainerState
    container: Any

    def exec(self, command: str) -> tuple[int, str]:
        """Run ``command`` in the sandbox as its agent (the container's user)."""
        result = self.container.exec_run(["sh", "-c", command])
        return int(result.exit_code), result.output.decode(errors="replace")

    def connects(self, host: str, port: int) -> bool:
        """Whether a TCP connection from inside the sandbox to ``host:port`` is accepted."""
        code, _ = self.exec(f"nc -w 3 {host} {port} -e /bin/true")
        return code == 0

    def listening_ports(self) -> set[int]:
        """Every TCP port something listens on beyond loopback inside the sandbox (/proc/net/tcp*:
        state 0A; Docker's embedded DNS listens on 127.0.0.11 only, unreachable from outside anyway)."""
        _, table = self.exec("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null")
        ports = set()
        for line in table.splitlines():
            fields = line.split()
            if len(fields) <= 3 or fields[3] != "0A":
                continue
            address, port = fields[1].rsplit(":", 1)
            # IPv4 addresses are little-endian hex: 127.x.x.x ends in "7F"; IPv6 ::1 ends in "01000000".
            loopback = address.endswith("7F") if len(address) == 8 else address.endswith("01000000")
            if not loopback:
                ports.add(int(port, 16))
        return ports

    def addresses(self) -> dict[str, str]:
        """The sandbox's IPv4 address on every network it is attached to."""
        self.container.reload()
        networks = self.container.attrs["NetworkSettings"]["Networks"]
        return {name: net["IPAddress"] for name, net in networks.items() if net.get("IPAddress")}


@dataclass
class World:
    a: Sandbox
    b: Sandbox
    allowed: HostService
    private: HostService
    gateway: str
    acts: DockerActivities


def _host_addresses() -> set[str]:
    """IPv4 addresses of this host that a container could aim at: the bridges' gateways and the
    address of the default route's interface."""
    client = docker_client()
    found = {host_address(client, name) for name in ("bridge", DEFAULT_SANDBOX_NETWORK)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        found.add(probe.getsockname()[0])
    return found


async def _start(acts: DockerActivities, env: ActivityEnvironment, user_id: str) -> Sandbox:
    sandbox_id = new_sandbox_id()
    spec = make_spec(sandbox_id, user_id=user_id, network=DEFAULT_SANDBOX_NETWORK)
    await env.run(acts.docker_ensure_container, spec)
    state = await env.run(acts.docker_start_container, sandbox_id)
    await env.run(acts.docker_deliver_agent_config, DeliverConfigInput(sandbox_id=sandbox_id, user_id=user_id))
    await env.run(
        acts.wait_opencode_healthy,
        WaitHealthyInput(
            base_url=f"http://127.0.0.1:{state.host_ports[OPENCODE_PORT]}",
            gateway_url=f"http://127.0.0.1:{state.host_ports[ACP_GATEWAY_PORT]}",
            timeout_seconds=60,
            sandbox_id=sandbox_id,
        ),
    )
    return Sandbox(sandbox_id, state, docker_client().containers.get(state.container_id))


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[HostService, HostService]]:
    allowed, private = _serve(), _serve()
    yield allowed, private
    for service in (allowed, private):
        service.server.shutdown()
        service.server.server_close()


@pytest.fixture(scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, services: tuple[HostService, HostService]
) -> AsyncIterator[World]:
    allowed, private = services
    settings = Settings(data_dir=Path(tmp_path_factory.mktemp("iso")), sandbox_host_services={"probe": allowed.port})
    keyring = Keyring((parse_key(generate_entry()),))
    resources = WorkerResources(settings=settings, sessions=async_sessionmaker(class_=AsyncSession), keyring=keyring)
    acts = DockerActivities(resources)
    env = ActivityEnvironment()
    started: list[Sandbox] = []
    try:
        started.append(await _start(acts, env, "user-a"))
        started.append(await _start(acts, env, "user-b"))
        gateway = host_address(docker_client(), DEFAULT_SANDBOX_NETWORK)
        yield World(started[0], started[1], allowed, private, gateway, acts)
    finally:
        client = docker_client()
        for sandbox in started:
            purge(client, sandbox.sandbox_id)


def test_a_neighbour_is_unreachable_on_every_address_and_port(world: World) -> None:
    a, b = world.a, world.b
    ports = a.listening_ports()
    assert {OPENCODE_PORT, ACP_GATEWAY_PORT} <= ports
    addresses = a.addresses()
    assert set(addresses) == {DEFAULT_SANDBOX_NETWORK}, "a sandbox joins the isolated network only"
    for network, address in addresses.items():
        for port in sorted(ports):
            # Control: the sandbox itself reaches the port on that address, so the probe works.
            assert a.connects(address, port), f"A cannot reach its own {address}:{port}"
            assert not b.connects(address, port), f"B reached A at {address}:{port} on {network}"


def test_a_neighbours_published_ports_are_unreachable_through_the_host(world: World) -> None:
    published = world.a.state.host_ports
    assert published
    for port in published.values():
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            pass  # control: the control plane reaches them on loopback
        for address in _host_addresses():
            assert not world.b.connects(address, port), f"B reached A's published port through {address}:{port}"


def test_the_control_plane_and_host_services_are_unreachable(world: World) -> None:
    b = world.b
    with socket.create_connection((world.gateway, world.private.port), timeout=3) as direct:
        assert direct.recv(64) == GREETING  # control: the service answers on the bridge's address
    # The API, Temporal (frontend + UI), PostgreSQL, a Docker TCP socket, SSH, and a service on 0.0.0.0.
    closed = [8000, 7233, 8233, 5432, 2375, 2376, 22, world.private.port]
    for address in _host_addresses():
        for port in closed:
            assert not b.connects(address, port), f"B reached the host at {address}:{port}"
    code, _ = b.exec("test -e /var/run/docker.sock || test -e /run/docker.sock")
    assert code != 0, "the Docker socket is inside the sandbox"


def test_an_allowlisted_host_service_is_reachable_and_only_it(world: World) -> None:
    code, output = world.b.exec(f"nc -w 3 {world.gateway} {world.allowed.port} </dev/null")
    assert GREETING.decode() in output, (code, output)
    assert not world.b.connects(world.gateway, world.private.port)


def _forward_rejections() -> int:
    """Packets the sandbox bridge's forward chain has refused so far."""
    client = docker_client()
    options = client.networks.get(DEFAULT_SANDBOX_NETWORK).attrs["Options"]
    _, forward = chain_names(options["com.docker.network.bridge.name"])
    # Read on the host through the same kind of helper the worker uses: `iptables -L -v -x` counters.
    output = client.containers.run(
        make_spec("x").image,
        entrypoint=[
            "/bin/sh",
            "-c",
            'd=$(pidof dockerd); exec nsenter -t "${d%% *}" -m -n sh -c '
            f'"PATH=/usr/sbin:/usr/bin:/sbin:/bin; iptables -w 10 -L {forward} -v -x -n"',
        ],
        user="0",
        pid_mode="host",
        network_mode="host",
        cap_drop=["ALL"],
        cap_add=["SYS_ADMIN", "SYS_PTRACE", "SYS_CHROOT", "NET_ADMIN", "NET_RAW"],
        remove=True,
    ).decode()
    return sum(int(line.split()[0]) for line in output.splitlines() if "REJECT" in line)


def test_metadata_and_private_networks_are_refused(world: World) -> None:
    before = _forward_rejections()
    for target in ("169.254.169.254", "10.255.255.1", "192.168.255.1"):
        assert not world.b.connects(target, 80), f"B reached {target}"
    assert _forward_rejections() >= before + 3, "the firewall did not refuse the private destinations"
    # That public destinations pass our rules is checked on the rules themselves
    # (tests/clients/test_sandbox_firewall.py): whether one answers here depends on the machine's internet.


async def test_opencode_demands_the_sandboxes_password_and_no_secret_is_in_docker_inspect(world: World) -> None:
    a = world.a
    keys = world.acts._resources.keys()
    password = opencode_password(keys, a.sandbox_id)
    url = f"http://127.0.0.1:{a.state.host_ports[OPENCODE_PORT]}"
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/config")).status_code == 401
        assert (await http.get("/provider")).status_code == 401
        assert (await http.post("/session", json={})).status_code == 401
        # Another sandbox's password is no better than none.
        other = opencode_password(keys, world.b.sandbox_id)
        assert (await http.get("/config", auth=("opencode", other))).status_code == 401
        assert (await http.get("/config", auth=("opencode", password))).status_code == 200
    inspected = json.dumps(docker_client().api.inspect_container(a.state.container_id))
    assert password not in inspected
    assert gateway_secret(keys, a.sandbox_id) not in inspected
    # From inside B, A's OpenCode is not even reachable to try a password on.
    assert not world.b.connects(a.addresses()[DEFAULT_SANDBOX_NETWORK], OPENCODE_PORT)


def test_the_agent_is_unprivileged_and_confined(world: World) -> None:
    a = world.a
    host_config = a.container.attrs["HostConfig"]
    assert a.container.attrs["Config"]["User"] == "1000:1000"
    assert host_config["CapDrop"] == ["ALL"] and not host_config.get("CapAdd")
    assert host_config["ReadonlyRootfs"] is True
    assert "no-new-privileges:true" in host_config["SecurityOpt"]
    assert host_config["PidsLimit"] and host_config["Memory"] and host_config["NanoCpus"]
    assert host_config["Privileged"] is False
    # Inside: every process of the sandbox runs as the agent user, with no capability at all.
    code, uids = a.exec("for p in /proc/[0-9]*; do awk '/^Uid:/ {print $2}' $p/status 2>/dev/null; done | sort -u")
    assert code == 0 and set(uids.split()) == {"1000"}, uids
    _, status = a.exec("grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status")
    assert all(line.split()[1] == "0000000000000000" for line in status.splitlines()), status
    assert a.exec("touch /usr/local/bin/implant")[0] != 0, "the root filesystem is writable"
    assert a.exec("touch /workspace/notes.txt /tmp/scratch && echo ok")[1].strip() == "ok"
