"""The host address sandboxes use, on a fresh engine (no gateway listed) and a long-used one."""

from __future__ import annotations

import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from agentpod.clients.docker_network import (
    HostAddressUnknown,
    SandboxNetworkUnsafe,
    address_from_attrs,
    ensure_sandbox_network,
    host_address,
)
from tests.docker_helpers import SANDBOX_IMAGE, docker_client


def _bridge(config: list[dict[str, str]], **options: str) -> dict[str, Any]:
    return {"Name": "bridge", "Id": "f" * 64, "IPAM": {"Driver": "default", "Config": config}, "Options": options}


def test_a_listed_gateway_wins() -> None:
    attrs = _bridge([{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}], **{"com.docker.network.bridge.name": "x"})
    assert address_from_attrs(attrs) == "172.17.0.1"


def test_a_fresh_engine_lists_only_the_subnet_and_still_gets_an_address() -> None:
    # Exactly what Debian's docker.io 20.10 shows right after its first start; no local interface by that name.
    attrs = _bridge([{"Subnet": "10.213.0.0/24"}], **{"com.docker.network.bridge.name": "nosuchbr0"})
    assert address_from_attrs(attrs) == "10.213.0.1"


def test_the_bridge_interface_address_is_used_when_it_is_on_this_machine() -> None:
    attrs = _bridge([{"Subnet": "10.213.0.0/24"}], **{"com.docker.network.bridge.name": "lo"})
    assert address_from_attrs(attrs) == "127.0.0.1"


def test_ipv6_entries_are_skipped() -> None:
    attrs = _bridge([{"Subnet": "fd00::/64", "Gateway": "fd00::1"}, {"Subnet": "192.168.50.0/24"}])
    attrs["Options"] = {"com.docker.network.bridge.name": "nosuchbr0"}
    assert address_from_attrs(attrs) == "192.168.50.1"


def test_a_network_without_ipv4_is_a_clear_error() -> None:
    with pytest.raises(HostAddressUnknown, match="bridge"):
        address_from_attrs(_bridge([], **{"com.docker.network.bridge.name": "nosuchbr0"}))


@pytest.mark.docker
def test_a_sandbox_container_reaches_a_host_server_on_that_address() -> None:
    client = docker_client()
    address = host_address(client)
    # A greeter bound to that address only: it answers on connect, so the container just reads.
    with socket.create_server((address, 0)) as server:
        port = server.getsockname()[1]
        threading.Thread(target=_greet, args=(server,), daemon=True).start()
        # busybox nc (the image's static wget crashes in glibc's resolver even for a literal address).
        # It may quit on stdin's end before the greeting arrives, so the container tries a few times.
        attempt = f"out=$(nc -w 3 {address} {port} </dev/null)"
        script = f'for i in 1 2 3 4 5; do {attempt}; [ -n "$out" ] && break; done; echo "$out"'
        output = client.containers.run(SANDBOX_IMAGE, ["-c", script], entrypoint=["/bin/sh"], remove=True)
    assert output.strip() == b"hello from the host"


def _greet(server: socket.socket) -> None:
    """Greet every connection until the listening socket is closed."""
    while True:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        with connection:
            connection.sendall(b"hello from the host")


@pytest.mark.docker
def test_racing_creations_leave_one_isolated_sandbox_network() -> None:
    client = docker_client()
    name = f"agentpod-test-net-{uuid.uuid4().hex[:8]}"
    barrier = threading.Barrier(6)

    def ensure(_: int) -> str:
        barrier.wait()  # every thread asks Docker at once
        return ensure_sandbox_network(client.api, name)

    try:
        with ThreadPoolExecutor(6) as pool:
            bridges = set(pool.map(ensure, range(6)))
        networks = [n for n in client.api.networks(names=[name]) if n["Name"] == name]
        assert len(networks) == 1 and len(bridges) == 1
        options = client.api.inspect_network(networks[0]["Id"])["Options"]
        assert options["com.docker.network.bridge.enable_icc"] == "false"
        assert options["com.docker.network.bridge.name"] == bridges.pop()
        with pytest.raises(SandboxNetworkUnsafe):  # the default bridge lets containers talk to each other
            ensure_sandbox_network(client.api, "bridge")
    finally:
        for network in client.api.networks(names=[name]):
            client.api.remove_network(network["Id"])
