"""Docker networks: where containers reach the host, and the sandboxes' own isolated network.

Where a container on a Docker network reaches the host: one answer for tests, chaos and bench.

A long-used engine lists its default bridge's gateway (``IPAM.Config[0].Gateway``); a freshly started
one lists only the subnet (``{"Config": [{"Subnet": "172.17.0.0/16"}]}``). Code that read the key
directly passed on a developer's machine and failed on a new one, so every caller asks here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import socket
import struct
import threading
from typing import Any

import docker.errors

from agentpod.domain.sandbox import DEFAULT_SANDBOX_NETWORK

# Linux ioctl that reads an interface's IPv4 address (see netdevice(7)).
_SIOCGIFADDR = 0x8915
_BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"


class HostAddressUnknown(Exception):
    """The network lists no IPv4 gateway or subnet, so there is no address to offer."""


def host_address(client: Any, network: str = "bridge") -> str:
    """The IPv4 address containers on ``network`` use to reach the host.

    In order: the gateway the engine lists; the address of the network's bridge interface when
    it is on this machine; the first host of the network's subnet (Docker gives the gateway that
    address when none is configured).
    """
    return address_from_attrs(client.networks.get(network).attrs)


def address_from_attrs(attrs: dict[str, Any]) -> str:
    """:func:`host_address` for a network's ``docker network inspect`` attributes."""
    configs = [c for c in (attrs.get("IPAM") or {}).get("Config") or [] if _is_ipv4(c.get("Subnet"))]
    for config in configs:
        if config.get("Gateway"):
            return str(config["Gateway"]).split("/")[0]
    address = _interface_address(_bridge_interface(attrs))
    if address is not None:
        return address
    for config in configs:
        return str(next(ipaddress.ip_network(config["Subnet"], strict=False).hosts()))
    raise HostAddressUnknown(f"Docker network {attrs.get('Name')!r} lists no IPv4 gateway or subnet")


def _is_ipv4(subnet: object) -> bool:
    try:
        return isinstance(subnet, str) and ipaddress.ip_network(subnet, strict=False).version == 4
    except ValueError:
        return False


def _bridge_interface(attrs: dict[str, Any]) -> str:
    """The Linux bridge behind a network: named in its options, else Docker's naming rule."""
    named = (attrs.get("Options") or {}).get(_BRIDGE_NAME_OPTION)
    if named:
        return str(named)
    return "docker0" if attrs.get("Name") == "bridge" else f"br-{str(attrs.get('Id', ''))[:12]}"


def _interface_address(name: str) -> str | None:
    """The IPv4 address of a local interface, or None when this machine has no such interface."""
    if not name or len(name) > 15:  # IFNAMSIZ
        return None
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("256s", name.encode())
        reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
        return socket.inet_ntoa(reply[20:24])
    return None


_ICC_OPTION = "com.docker.network.bridge.enable_icc"


_create_lock = threading.Lock()


class SandboxNetworkUnsafe(Exception):
    """The configured network lets containers talk to each other: sandboxes must not join it."""


def sandbox_bridge_name(network: str, engine: str) -> str:
    """The Linux bridge name a new sandbox network gets: ``ap-`` and 12 hex digits (IFNAMSIZ allows 15).

    Derived from the engine (see :func:`engine_identity`) as well as the network's name: two engines
    on one machine (a second Docker host, or a fresh engine beside a long-used one) would otherwise
    both claim the same interface, and the second network's containers were unreachable.
    """
    return "ap-" + hashlib.sha256(f"{engine}/{network}".encode()).hexdigest()[:12]


def engine_identity(info: dict[str, Any]) -> str:
    """What tells engines apart: their id and their data root. The id alone does not: engines on one
    machine share the daemon key it is made from, but each has its own data root."""
    return f"{info.get('ID', '')}|{info.get('DockerRootDir', '')}"


def ensure_sandbox_network(api: Any, network: str) -> str:
    """Create the sandboxes' bridge network unless it exists; return its Linux bridge's name.

    Inter-container traffic is disabled on it (Docker drops bridge-local traffic between its
    containers), so one sandbox never reaches another's address, whatever the port. An existing
    network is adopted only if it has that setting too: the default ``bridge`` does not.

    Docker's duplicate-name check is not atomic: two creations racing made two networks of one name
    claiming one bridge interface, and containers of the second were unreachable. So creation is
    serialized in the process, and a duplicate a racing process made is removed (the oldest stays).
    """
    with _create_lock:
        found = [item for item in api.networks(names=[network]) if item.get("Name") == network]
        if not found:
            bridge = sandbox_bridge_name(network, engine_identity(api.info()))
            try:
                api.create_network(
                    network,
                    driver="bridge",
                    options={_ICC_OPTION: "false", _BRIDGE_NAME_OPTION: bridge},
                    labels={"agentpod.role": "sandbox-network"},
                    check_duplicate=True,
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # another worker created it first: adopt theirs
                    raise
            found = [item for item in api.networks(names=[network]) if item.get("Name") == network]
        found.sort(key=lambda item: str(item.get("Created", "")))
        for duplicate in found[1:]:
            with contextlib.suppress(docker.errors.APIError):  # in use: leave it, the oldest is used
                api.remove_network(duplicate["Id"])
        attrs = api.inspect_network(found[0]["Id"])
    if attrs.get("Driver") != "bridge" or (attrs.get("Options") or {}).get(_ICC_OPTION) != "false":
        raise SandboxNetworkUnsafe(
            f"Docker network {network!r} allows traffic between its containers; sandboxes need a bridge network "
            f"created with -o {_ICC_OPTION}=false (remove it and the control plane creates it, or name another)"
        )
    return _bridge_interface(attrs)


def sandbox_host_address(client: Any, network: str = DEFAULT_SANDBOX_NETWORK) -> str:
    """Where sandboxes reach the host (an allowlisted host service listens there): the sandbox
    network's gateway, the network created first if no sandbox has been started yet."""
    ensure_sandbox_network(client.api, network)
    return host_address(client, network)
