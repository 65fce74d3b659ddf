"""Where a container on a Docker network reaches the host: one answer for tests, chaos and bench.

A long-used engine lists its default bridge's gateway (``IPAM.Config[0].Gateway``); a freshly started
one lists only the subnet (``{"Config": [{"Subnet": "172.17.0.0/16"}]}``). Code that read the key
directly passed on a developer's machine and failed on a new one, so every caller asks here.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from typing import Any

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
