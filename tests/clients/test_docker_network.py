"""The host address sandboxes use, on a fresh engine (no gateway listed) and a long-used one."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agentpod.clients.docker_network import HostAddressUnknown, address_from_attrs, host_address
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
    server = ThreadingHTTPServer((address, 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # busybox nc: the image's static wget crashes in glibc's resolver even for a literal address.
        request = f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {address} {server.server_address[1]}'
        output = client.containers.run(SANDBOX_IMAGE, ["-c", request], entrypoint=["/bin/sh"], remove=True)
    finally:
        server.shutdown()
        server.server_close()
    assert output.endswith(b"\r\n\r\nhello from the host")


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the host"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass
