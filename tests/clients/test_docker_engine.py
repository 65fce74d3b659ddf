"""DockerEngine against the real engine and the real sandbox image."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from agentpod.clients.docker_engine import (
    LABEL_SANDBOX_ID,
    ContainerGone,
    ContainerNotRunning,
    DockerEngine,
    DockerUnavailable,
    ImageMissing,
    spec_hash,
)
from agentpod.domain.sandbox import ACP_GATEWAY_PORT, OPENCODE_PORT, ContainerSpec, container_name, volume_names
from tests.clients import TEST_OPENCODE_PASSWORD, docker_client, make_spec, new_sandbox_id, purge, wait_healthy


@pytest.fixture(scope="module")
def raw() -> Iterator[Any]:
    """The docker SDK, to check what DockerEngine did by another route."""
    client = docker_client()
    yield client
    client.close()


@pytest.fixture
def engine(raw: Any) -> Iterator[DockerEngine]:
    engine = DockerEngine()
    yield engine
    engine.close()


@pytest.fixture
def sandbox_id(raw: Any) -> Iterator[str]:
    """A fresh sandbox id whose containers and volumes are removed after the test, pass or fail."""
    sandbox_id = new_sandbox_id()
    try:
        yield sandbox_id
    finally:
        purge(raw, sandbox_id)


def _containers(raw: Any, sandbox_id: str) -> list[Any]:
    return list(raw.containers.list(all=True, filters={"label": f"{LABEL_SANDBOX_ID}={sandbox_id}"}))


def _volumes(raw: Any, sandbox_id: str) -> set[str]:
    wanted = set(volume_names(sandbox_id))
    return {v.name for v in raw.volumes.list(filters={"name": sandbox_id})} & wanted


def _sh(raw: Any, sandbox_id: str, script: str) -> str:
    result = raw.containers.get(container_name(sandbox_id)).exec_run(["sh", "-c", script])
    output: str = result.output.decode()
    assert result.exit_code == 0, output
    return output


# -- pure functions (no engine) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"memory_mb": 2048},
        {"cpu_cores": 1.0},
        {"resource_tier_id": "large"},
        {"addon_ports": {"code-server": 8080, "vnc": 6080}},
        {"image": "agentpod-sandbox:other"},
        {"github_url": None},
    ],
)
def test_spec_hash_changes_with_what_shapes_the_container(change: dict[str, Any]) -> None:
    assert spec_hash(make_spec("a")) != spec_hash(make_spec("a", **change))


def test_spec_hash_is_stable_and_ignores_the_display_name() -> None:
    spec = make_spec("a", addon_ports={"vnc": 6080, "code-server": 8080})
    same_reordered = make_spec("a", addon_ports={"code-server": 8080, "vnc": 6080}, name="Renamed")
    assert spec_hash(spec) == spec_hash(same_reordered)
    assert len(spec_hash(spec)) == 64


def test_engine_down_is_docker_unavailable() -> None:
    engine = DockerEngine(f"unix:///tmp/no-docker-{uuid.uuid4().hex}.sock")
    with pytest.raises(DockerUnavailable):
        engine.inspect("x")
    with pytest.raises(DockerUnavailable):
        engine.ping()


def test_write_secret_file_rejects_paths_leaving_the_tmpfs() -> None:
    engine = DockerEngine()  # the path is checked before the engine is asked anything
    for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x", "a//b"]:
        with pytest.raises(ValueError):
            engine.write_secret_file("any", bad, b"x")


# -- against the engine -----------------------------------------------------------------------------


@pytest.mark.docker
def test_ensure_is_idempotent_and_does_not_start(engine: DockerEngine, raw: Any, sandbox_id: str) -> None:
    spec = make_spec(sandbox_id)
    first = engine.ensure_container(spec)
    second = engine.ensure_container(spec)
    assert first.exists and not first.running and first.docker_status == "created"
    assert second.container_id == first.container_id
    assert first.spec_hash == spec_hash(spec)
    assert len(_containers(raw, sandbox_id)) == 1
    assert _volumes(raw, sandbox_id) == set(volume_names(sandbox_id))
    assert engine.inspect(sandbox_id) == second


@pytest.mark.docker
def test_concurrent_ensure_creates_exactly_one_container(engine: DockerEngine, raw: Any, sandbox_id: str) -> None:
    def ensure_from_threads(spec: ContainerSpec, threads: int = 6) -> set[str | None]:
        barrier = threading.Barrier(threads)

        def ensure(_: int) -> str | None:
            barrier.wait()  # all threads hit Docker at once
            return engine.ensure_container(spec).container_id

        with ThreadPoolExecutor(threads) as pool:
            return set(pool.map(ensure, range(threads)))

    ids = ensure_from_threads(make_spec(sandbox_id))
    assert len(ids) == 1
    assert [c.id for c in _containers(raw, sandbox_id)] == list(ids)

    # The same when they all reconfigure at once: one replacement, the old one gone.
    reconfigured = ensure_from_threads(make_spec(sandbox_id, memory_mb=2048))
    assert len(reconfigured) == 1 and reconfigured != ids
    assert [c.id for c in _containers(raw, sandbox_id)] == list(reconfigured)


@pytest.mark.docker
def test_started_container_serves_opencode_with_the_configured_shape(
    engine: DockerEngine, raw: Any, sandbox_id: str
) -> None:
    spec = make_spec(sandbox_id)
    engine.ensure_container(spec)
    state = engine.start(sandbox_id)
    assert state.running and state.docker_status == "running"
    assert set(state.host_ports) == {OPENCODE_PORT, ACP_GATEWAY_PORT, 8080}
    # The entrypoint waits for `ready` before OpenCode starts, and refuses to start it without a password.
    engine.write_secret_files(sandbox_id, {"opencode-password": TEST_OPENCODE_PASSWORD.encode()}, then_touch="ready")
    assert wait_healthy(state.host_ports[OPENCODE_PORT])["healthy"] is True
    assert engine.start(sandbox_id) == state  # starting a running container changes nothing

    attrs = raw.api.inspect_container(container_name(sandbox_id))
    host = attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 1024 * 1024 * 1024
    assert host["PidsLimit"] == 256
    assert host["Init"] is True
    assert host["RestartPolicy"]["Name"] in ("", "no")
    assert host["NetworkMode"] == "agentpod-sandboxes"
    assert "mode=0700" in host["Tmpfs"]["/run/agentpod"] and "uid=1000" in host["Tmpfs"]["/run/agentpod"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert attrs["Config"]["User"] == "1000:1000"
    for port in (OPENCODE_PORT, ACP_GATEWAY_PORT, 8080):
        assert host["PortBindings"][f"{port}/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": ""}]
        assert attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostIp"] == "127.0.0.1"
    mounts = {m["Destination"]: m["Name"] for m in attrs["Mounts"] if m["Type"] == "volume"}
    assert mounts == dict(zip(["/workspace", "/data"], volume_names(sandbox_id), strict=True))

    labels = attrs["Config"]["Labels"]
    assert labels["agentpod.managed"] == "true"
    assert labels["agentpod.sandbox.id"] == sandbox_id
    assert labels["agentpod.sandbox.user"] == "user-test"
    assert labels["agentpod.sandbox.name"] == "Test sandbox"
    assert labels["agentpod.sandbox.slug"] == "test-sandbox"
    assert labels["agentpod.sandbox.repo"] == "demo"
    assert labels["agentpod.sandbox.github"] == "https://example.com/acme/demo.git"
    assert labels["agentpod.flavor"] == "base"
    assert labels["agentpod.tier"] == "small"
    assert labels["agentpod.addons"] == "code-server"
    assert labels["agentpod.spec-hash"] == spec_hash(spec)

    ours = {e.split("=", 1)[0] for e in attrs["Config"]["Env"]} - {
        e.split("=", 1)[0] for e in raw.api.inspect_image(spec.image)["Config"]["Env"]
    }
    assert ours == {"AGENTPOD_SANDBOX_ID", "AGENTPOD_REPO_NAME", "AGENTPOD_REPO_URL", "AGENTPOD_CONFIG_WAIT"}
    assert _sh(raw, sandbox_id, "cat /workspace/.agentpod-origin").strip() == spec.github_url


@pytest.mark.docker
def test_secret_file_reaches_the_tmpfs_and_nothing_else(engine: DockerEngine, raw: Any, sandbox_id: str) -> None:
    engine.ensure_container(make_spec(sandbox_id))
    with pytest.raises(ContainerNotRunning):  # the tmpfs is not mounted: it would land on disk
        engine.write_secret_file(sandbox_id, "opencode.json", b"x")
    engine.start(sandbox_id)
    secret = f"sk-test-{uuid.uuid4().hex}"
    config = json.dumps({"provider": {"openai": {"options": {"apiKey": secret}}}}).encode()
    engine.write_secret_file(sandbox_id, "opencode.json", config)
    engine.write_secret_file(sandbox_id, "opencode.json", config)  # a retry overwrites in place
    engine.write_secret_file(sandbox_id, "keys/extra", b"second")

    assert _sh(raw, sandbox_id, "cat /run/agentpod/opencode.json") == config.decode()
    assert _sh(raw, sandbox_id, "stat -c %a /run/agentpod/opencode.json /run/agentpod/keys/extra").split() == [
        "600",
        "600",
    ]
    assert _sh(raw, sandbox_id, "stat -c %a /run/agentpod").strip() == "700"
    assert _sh(raw, sandbox_id, "ls -A /run/agentpod").split() == ["keys", "opencode.json"]  # no .tmp left

    attrs = raw.api.inspect_container(container_name(sandbox_id))
    assert secret not in json.dumps(attrs)
    for exec_id in attrs["ExecIDs"] or []:
        assert secret not in json.dumps(raw.api.exec_inspect(exec_id))
    # Nothing under /run/agentpod in the container's writable layer, i.e. nothing on disk.
    changes = raw.api.diff(container_name(sandbox_id)) or []
    assert not [c for c in changes if c["Path"].startswith("/run/agentpod")]


@pytest.mark.docker
def test_stop_is_harmless_to_repeat(engine: DockerEngine, sandbox_id: str) -> None:
    engine.ensure_container(make_spec(sandbox_id))
    engine.start(sandbox_id)
    stopped = engine.stop(sandbox_id)
    assert stopped.exists and not stopped.running and stopped.docker_status == "exited"
    assert stopped.host_ports == {}
    assert engine.stop(sandbox_id) == stopped


@pytest.mark.docker
def test_remove_keeps_or_drops_volumes_and_is_harmless_to_repeat(
    engine: DockerEngine, raw: Any, sandbox_id: str
) -> None:
    engine.ensure_container(make_spec(sandbox_id))
    engine.start(sandbox_id)
    engine.remove(sandbox_id, remove_volumes=False)
    assert _containers(raw, sandbox_id) == []
    assert _volumes(raw, sandbox_id) == set(volume_names(sandbox_id))

    engine.ensure_container(make_spec(sandbox_id))
    engine.start(sandbox_id)  # running: force-removed, volumes released for removal
    engine.remove(sandbox_id, remove_volumes=True)
    assert _containers(raw, sandbox_id) == []
    assert _volumes(raw, sandbox_id) == set()
    engine.remove(sandbox_id, remove_volumes=True)
    assert engine.inspect(sandbox_id).exists is False


@pytest.mark.docker
def test_reconfigure_recreates_the_container_and_keeps_the_data(
    engine: DockerEngine, raw: Any, sandbox_id: str
) -> None:
    before = engine.ensure_container(make_spec(sandbox_id))
    engine.start(sandbox_id)
    _sh(raw, sandbox_id, "echo kept > /data/marker && echo kept > /workspace/marker")

    bigger = make_spec(sandbox_id, memory_mb=1536, name="Renamed later")
    after = engine.ensure_container(bigger)
    assert after.container_id != before.container_id
    assert after.spec_hash == spec_hash(bigger) and not after.running
    assert len(_containers(raw, sandbox_id)) == 1
    assert raw.api.inspect_container(after.container_id)["HostConfig"]["Memory"] == 1536 * 1024 * 1024

    engine.start(sandbox_id)
    assert _sh(raw, sandbox_id, "cat /data/marker /workspace/marker").split() == ["kept", "kept"]
    # A rename alone does not recreate (the agent keeps running).
    assert engine.ensure_container(make_spec(sandbox_id, memory_mb=1536)).container_id == after.container_id


@pytest.mark.docker
def test_container_removed_behind_our_back(engine: DockerEngine, raw: Any, sandbox_id: str) -> None:
    engine.ensure_container(make_spec(sandbox_id))
    raw.containers.get(container_name(sandbox_id)).remove(force=True)
    assert engine.inspect(sandbox_id).exists is False
    assert engine.stop(sandbox_id).exists is False
    with pytest.raises(ContainerGone):
        engine.start(sandbox_id)
    with pytest.raises(ContainerGone):
        engine.write_secret_file(sandbox_id, "opencode.json", b"x")
    assert engine.ensure_container(make_spec(sandbox_id)).exists  # ensure heals it


@pytest.mark.docker
def test_missing_image_is_image_missing(engine: DockerEngine, raw: Any, sandbox_id: str) -> None:
    # The message reaches the user as the sandbox's last_error: it must name the fix.
    with pytest.raises(ImageMissing, match="make image"):
        engine.ensure_container(make_spec(sandbox_id, image=f"agentpod-sandbox:absent-{uuid.uuid4().hex[:8]}"))
    assert _containers(raw, sandbox_id) == []


@pytest.mark.docker
def test_list_managed_shows_our_containers_with_labels(engine: DockerEngine, sandbox_id: str) -> None:
    state = engine.ensure_container(make_spec(sandbox_id))
    [found] = [c for c in engine.list_managed() if c["labels"].get(LABEL_SANDBOX_ID) == sandbox_id]
    assert found["id"] == state.container_id
    assert found["name"] == container_name(sandbox_id)
    assert found["status"] == "created"
    assert found["labels"]["agentpod.spec-hash"] == state.spec_hash
