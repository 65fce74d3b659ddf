"""The firewall rules as text: what an operator reads in `iptables -S`, and the limits iptables imposes."""

from __future__ import annotations

import pytest

from agentpod.clients.docker_network import engine_identity, sandbox_bridge_name
from agentpod.clients.sandbox_firewall import FirewallPolicy, chain_names, host_script, restore_input


def test_bridge_and_chain_names_fit_the_kernels_limits_and_differ_per_engine() -> None:
    # Engines on one machine share the daemon key their id comes from; their data roots differ.
    main = engine_identity({"ID": "TDAR:IJPU", "DockerRootDir": "/var/lib/docker"})
    fresh = engine_identity({"ID": "TDAR:IJPU", "DockerRootDir": "/tmp/fresh/data"})
    first = sandbox_bridge_name("agentpod-sandboxes", main)
    assert first != sandbox_bridge_name("agentpod-sandboxes", fresh)  # never one interface for two engines
    assert first == sandbox_bridge_name("agentpod-sandboxes", main)  # stable across restarts
    assert len(first) <= 15
    assert all(len(chain) <= 28 for chain in chain_names(first))


def test_allowlisted_services_open_before_everything_else_is_refused() -> None:
    rules = restore_input("ap-123", FirewallPolicy({"llm": 11434})).splitlines()
    into_host, forward = chain_names("ap-123")
    mine = [line for line in rules if line.startswith(f"-A {into_host}")]
    assert "ESTABLISHED" in mine[0]  # replies to the control plane's own connections pass first
    assert "--dport 11434" in mine[1] and mine[1].endswith("ACCEPT")
    assert all("REJECT" in line for line in mine[2:]) and len(mine) == 4
    refused = [line.split()[3] for line in rules if line.startswith(f"-A {forward} -d")]
    assert "169.254.0.0/16" in refused and "10.0.0.0/8" in refused
    assert rules[-1] == "COMMIT" and rules[-2] == f"-A {forward} -j RETURN"  # the internet goes on


def test_the_script_jumps_to_both_chains_once() -> None:
    script = host_script("ap-123", FirewallPolicy())
    into_host, forward = chain_names("ap-123")
    assert f"-C INPUT -i ap-123 -j {into_host}" in script and f"-I INPUT 1 -i ap-123 -j {into_host}" in script
    assert f"-C DOCKER-USER -i ap-123 -j {forward}" in script
    assert "iptables-restore -w 10 --noflush" in script


@pytest.mark.parametrize(
    "policy",
    [{"host_services": {"llm": 0}}, {"host_services": {"llm": 70000}}, {"blocked_networks": ["fd00::/8"]}],
)
def test_a_policy_iptables_could_not_express_is_refused(policy: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FirewallPolicy(**policy)  # type: ignore[arg-type]
