"""The host firewall that keeps sandboxes away from the host, the control plane and private networks.

Sandboxes share one Docker bridge with inter-container traffic disabled (see
:func:`agentpod.clients.docker_network.ensure_sandbox_network`). That stops sandbox → sandbox, but a
container still reaches every address of the host itself (the bridge gateway, the host's LAN address:
the API, Temporal, PostgreSQL, a Docker TCP socket) and, through the host's routes, private networks
and link-local metadata services. Two chains close that, in the ``filter`` table of the Docker host:

* ``AGENTPOD-IN-<bridge>``, jumped to from ``INPUT`` for packets arriving from the sandbox bridge:
  replies to connections the host opened are accepted (the control plane talks to OpenCode through
  published ports), the operator's allowlisted host services are accepted, everything else is
  rejected (a refused connection, not a silent drop, so a tool fails fast with a clear error).
* ``AGENTPOD-FWD-<bridge>``, jumped to from ``DOCKER-USER`` (Docker's place for user rules, evaluated
  before its own): forwarded packets from the bridge to private, shared and link-local ranges are
  rejected; everything else (the open internet) goes on to Docker's rules.

The rules are applied on the Docker host through the engine itself (a short-lived privileged helper
container that enters the host's namespaces and runs the host's own ``iptables``), so they use the
same backend as Docker's rules and work for an engine on another machine too. ``iptables-restore
--noflush`` replaces each chain's rules in one transaction: there is no moment with an empty chain.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from agentpod.domain.sandbox import DEFAULT_BLOCKED_NETWORKS

_HELPER_LABEL = "agentpod.role"
_HELPER_TIMEOUT_SECONDS = 60


class FirewallError(Exception):
    """The firewall could not be applied on the Docker host."""


@dataclass(frozen=True)
class FirewallPolicy:
    """What sandboxes may reach besides the internet.

    ``host_services``: name → TCP port of a service on the Docker host that sandboxes may use (a
    local model server, say); every other port of the host is closed to them.
    ``blocked_networks``: destinations sandboxes may not reach through the host (IPv4 CIDRs).
    """

    host_services: Mapping[str, int] = field(default_factory=dict)
    blocked_networks: Sequence[str] = DEFAULT_BLOCKED_NETWORKS

    def __post_init__(self) -> None:
        for name, port in self.host_services.items():
            if not 0 < port < 65536:
                raise ValueError(f"host service {name!r}: port {port} is not a TCP port")
        for network in self.blocked_networks:
            if ipaddress.ip_network(network, strict=False).version != 4:
                raise ValueError(f"blocked network {network!r} is not IPv4 (the sandbox bridge is IPv4 only)")


def chain_names(bridge: str) -> tuple[str, str]:
    """The (input, forward) chains of one sandbox bridge (at most 28 characters: iptables' limit)."""
    return f"AGENTPOD-IN-{bridge}"[:28], f"AGENTPOD-FWD-{bridge}"[:28]


def _comment(text: str) -> str:
    """An iptables comment argument: shown by ``iptables -S``, so operators see why a rule exists."""
    safe = "".join(ch if ch.isalnum() or ch in " -_.:=" else "_" for ch in text)[:240]
    return f'-m comment --comment "{safe}"'


def restore_input(bridge: str, policy: FirewallPolicy) -> str:
    """The ``iptables-restore --noflush`` input that (re)defines both chains of ``bridge``."""
    into_host, forward = chain_names(bridge)
    lines = ["*filter", f":{into_host} - [0:0]", f":{forward} - [0:0]"]
    # Into the host: replies to what the host opened, then the allowlist, then nothing.
    lines.append(f"-A {into_host} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
    for name, port in sorted(policy.host_services.items()):
        lines.append(f"-A {into_host} -p tcp --dport {port} {_comment('agentpod host service ' + name)} -j ACCEPT")
    closed = _comment("agentpod sandboxes never reach the host")
    lines.append(f"-A {into_host} -p tcp {closed} -j REJECT --reject-with tcp-reset")
    lines.append(f"-A {into_host} -j REJECT --reject-with icmp-port-unreachable")
    # Through the host: replies pass, private destinations are refused, the rest goes on to Docker's rules.
    lines.append(f"-A {forward} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN")
    private = _comment("agentpod private network")
    for network in policy.blocked_networks:
        lines.append(f"-A {forward} -d {network} {private} -j REJECT --reject-with icmp-net-prohibited")
    lines.append(f"-A {forward} -j RETURN")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def host_script(bridge: str, policy: FirewallPolicy) -> str:
    """The shell script run on the Docker host: define the chains, then make sure both are jumped to.

    ``-w`` waits for the xtables lock (Docker may be changing its own rules at the same moment).
    The jumps are inserted first in their chains once; a second run finds them (``-C``) and adds none.
    """
    into_host, forward = chain_names(bridge)
    b = shlex.quote(bridge)
    return "\n".join(
        [
            "set -e",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "command -v iptables-restore >/dev/null"
            " || { echo 'iptables is not installed on the Docker host' >&2; exit 3; }",
            f"iptables-restore -w 10 --noflush <<'RULES'\n{restore_input(bridge, policy)}RULES",
            # An engine started with --iptables=false leaves FORWARD without Docker's jump: add it.
            "iptables -w 10 -N DOCKER-USER 2>/dev/null || true",
            "iptables -w 10 -C FORWARD -j DOCKER-USER 2>/dev/null || iptables -w 10 -I FORWARD 1 -j DOCKER-USER",
            f"iptables -w 10 -C INPUT -i {b} -j {into_host} 2>/dev/null"
            f" || iptables -w 10 -I INPUT 1 -i {b} -j {into_host}",
            f"iptables -w 10 -C DOCKER-USER -i {b} -j {forward} 2>/dev/null"
            f" || iptables -w 10 -I DOCKER-USER 1 -i {b} -j {forward}",
            "echo applied",
        ]
    )


def apply_on_host(api: Any, image: str, bridge: str, policy: FirewallPolicy) -> None:
    """Apply the policy on the Docker host behind ``api`` (a ``docker.APIClient``).

    The helper runs ``image`` (the sandbox image: it is on every engine that runs sandboxes, and its
    static busybox has ``nsenter``) in the host's PID and network namespaces, enters the Docker
    daemon's mount and network namespaces (those Docker's own rules live in) and runs the host's
    ``iptables``. Not ``--privileged``: only the capabilities that needs (entering namespaces, reading
    another process's, changing the firewall). It runs a fixed script of ours, never tenant input,
    and is removed at once.
    """
    name = f"agentpod-firewall-{uuid.uuid4().hex[:12]}"
    host_config = api.create_host_config(
        pid_mode="host",
        network_mode="host",
        cap_drop=["ALL"],
        cap_add=["SYS_ADMIN", "SYS_PTRACE", "SYS_CHROOT", "NET_ADMIN", "NET_RAW"],
    )
    enter_docker = 'd=$(pidof dockerd) || { echo "no dockerd process on the host" >&2; exit 3; }; '
    enter_docker += 'exec nsenter -t "${d%% *}" -m -n sh -c "$0"'
    created = api.create_container(
        image=image,
        name=name,
        entrypoint=["/bin/sh", "-c", enter_docker, host_script(bridge, policy)],
        user="0",
        labels={_HELPER_LABEL: "firewall"},
        host_config=host_config,
    )
    try:
        api.start(created["Id"])
        status = api.wait(created["Id"], timeout=_HELPER_TIMEOUT_SECONDS)
        code = int(status.get("StatusCode", -1))
        if code != 0:
            output = api.logs(created["Id"], stdout=True, stderr=True).decode(errors="replace").strip()
            raise FirewallError(f"applying the sandbox firewall on bridge {bridge} failed ({code}): {output[-500:]}")
    finally:
        # Already gone is fine; a leftover helper is labelled and harmless (it has exited).
        with contextlib.suppress(docker.errors.APIError):
            api.remove_container(created["Id"], force=True)
