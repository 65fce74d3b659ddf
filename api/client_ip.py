"""The caller's IP address, believing ``X-Forwarded-For`` only from configured trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """Parse proxy IPs / CIDRs from settings (a bare IP is a /32 or /128)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_ip(request: Request, trusted: Sequence[Network]) -> str | None:
    """Walk X-Forwarded-For from the right, skipping trusted proxies; the first untrusted hop is the client.

    Anything left of an untrusted hop could have been written by the client itself, so it is ignored.
    """
    peer = request.client.host if request.client else None
    if peer is None or not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in request.headers.get("x-forwarded-for", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: fall back to what we actually saw
    return hops[0] if hops else peer
