"""The Docker engine as the sandboxes need it: one container and two volumes per sandbox.

Synchronous because the docker SDK is; activities run these calls in a worker thread.

Every method is idempotent, because Temporal may run an activity again after a timeout or a
worker crash, and safe to call concurrently for different sandboxes. Nothing here keeps state
about sandboxes: Docker is asked every time, and names are the identity. Docker refuses a second
container or volume with a taken name, which is what guarantees one container per sandbox even
when two calls race (the loser gets 409 and adopts the winner's container).

Exceptions callers must tell apart (all derive from :class:`DockerEngineError`):

* :class:`DockerUnavailable` - the engine cannot be reached or did not answer; retry later.
* :class:`ImageMissing` - the sandbox image is not on the engine; retrying will not help until
  an operator builds or loads it (no registry pull is attempted).
* :class:`ContainerGone` - the container an operation needs does not exist (never created, or
  removed between calls); re-run :meth:`DockerEngine.ensure_container`.
* :class:`ContainerNotRunning` - the operation needs a running container.
* :class:`SandboxNetworkError` - the sandboxes' isolated network or its host firewall cannot be set
  up; not retryable until an operator fixes the cause it names.

Any other engine refusal is raised as a plain :class:`DockerEngineError` (worth retrying: it is
usually a transient conflict such as a removal in progress, or a missing network an operator can
create).
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import docker
import docker.errors

from agentpod.clients.docker_network import SandboxNetworkUnsafe, ensure_sandbox_network
from agentpod.clients.sandbox_firewall import FirewallError, FirewallPolicy, apply_on_host
from agentpod.domain.sandbox import (
    ACP_GATEWAY_PORT,
    LABEL_PREFIX,
    OPENCODE_PORT,
    ContainerSpec,
    ContainerState,
    container_name,
    volume_names,
)

WORKSPACE_PATH = "/workspace"
DATA_PATH = "/data"
SECRETS_PATH = "/run/agentpod"

LABEL_MANAGED = f"{LABEL_PREFIX}managed"
LABEL_SANDBOX_ID = f"{LABEL_PREFIX}sandbox.id"
LABEL_SPEC_HASH = f"{LABEL_PREFIX}spec-hash"

# Bump when this module changes how it builds containers (mounts, options, labels): the spec
# hash changes with it, so the next ensure_container replaces containers built the old way.
# 2: unprivileged user, no capabilities, read-only root, the isolated sandbox network.
_LAYOUT_VERSION = 2

# The image's `agent` user: the agent, its tools and MCP servers never run as root.
AGENT_UID = 1000
AGENT_USER = f"{AGENT_UID}:{AGENT_UID}"

# Small: it only holds config files. Owned by the agent, private to it. tmpfs pages count against the
# container's memory limit.
_SECRETS_TMPFS = f"rw,nosuid,nodev,noexec,size=8m,mode=0700,uid={AGENT_UID},gid={AGENT_UID}"
# The root filesystem is read-only: scratch space for the agent's tools lives in a tmpfs (memory).
_TMP_TMPFS_MAX_MB = 512

# How long a worker trusts that the sandbox network and its firewall are in place before checking
# again (a host reboot or an operator's `iptables -F` removes the rules; each check is one short
# helper container).
NETWORK_RECHECK_SECONDS = 300.0

# How long ensure_container keeps re-reading after losing races before giving up. Losing is
# normal under concurrency: Docker reserves a name a moment before the container can be
# inspected, so the loser of a creation race may briefly see neither its own nor the winner's.
_ENSURE_PATIENCE_SECONDS = 15.0
# How long remove() waits for a removal Docker already has in progress.
_REMOVAL_WAIT_SECONDS = 15.0


# How long a starting container waits for its config before starting OpenCode without it.
CONFIG_WAIT_SECONDS = 60


class DockerEngineError(Exception):
    """The engine refused or failed an operation (retryable unless a subclass says otherwise)."""


class DockerUnavailable(DockerEngineError):
    """The engine is down, unreachable or timed out: retry later."""


class ImageMissing(DockerEngineError):
    """The image is not present on the engine: not retryable until it is built or loaded."""


class ContainerGone(DockerEngineError):
    """The sandbox's container does not exist (any more)."""


class ContainerNotRunning(DockerEngineError):
    """The operation needs the container running, and it is not."""


class SandboxNetworkError(DockerEngineError):
    """The isolated sandbox network or its host firewall could not be set up (an operator must act)."""


@dataclass(frozen=True)
class ExecResult:
    """What a command run in a container came to (``exit_code`` None: Docker did not record one)."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes


def spec_hash(spec: ContainerSpec) -> str:
    """Stable sha256 over the spec fields that shape the container.

    The display name is left out on purpose: renaming a sandbox must not restart its agent
    (the ``agentpod.sandbox.name`` label keeps the name of the last (re)creation).
    """
    shape = spec.model_dump(mode="json", exclude={"name"})
    shape["_layout"] = _LAYOUT_VERSION
    canonical = json.dumps(shape, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def container_labels(spec: ContainerSpec) -> dict[str, str]:
    """The labels a sandbox container carries; enough to re-import it without the database."""
    labels = {
        LABEL_MANAGED: "true",
        LABEL_SANDBOX_ID: spec.sandbox_id,
        f"{LABEL_PREFIX}sandbox.user": spec.user_id,
        f"{LABEL_PREFIX}sandbox.name": spec.name,
        f"{LABEL_PREFIX}sandbox.slug": spec.slug,
        f"{LABEL_PREFIX}sandbox.repo": spec.repo_name,
        f"{LABEL_PREFIX}flavor": spec.flavor_id,
        f"{LABEL_PREFIX}tier": spec.resource_tier_id,
        f"{LABEL_PREFIX}addons": ",".join(sorted(spec.addon_ports)),
        LABEL_SPEC_HASH: spec_hash(spec),
    }
    if spec.github_url:
        labels[f"{LABEL_PREFIX}sandbox.github"] = spec.github_url
    return labels


def published_ports(spec: ContainerSpec) -> list[int]:
    """Container ports published on the host: OpenCode, the ACP gateway, then every addon."""
    ports = [OPENCODE_PORT, ACP_GATEWAY_PORT]
    ports += [port for port in sorted(spec.addon_ports.values()) if port not in ports]
    return ports


@contextmanager
def _engine_errors(action: str) -> Iterator[None]:
    """Translate docker SDK / transport exceptions into this module's tree."""
    try:
        yield
    except DockerEngineError:
        raise
    except docker.errors.APIError as exc:
        raise DockerEngineError(f"{action}: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, OSError) as exc:
        # requests' ConnectionError and Timeout are OSErrors: the socket is gone or the engine hangs.
        raise DockerUnavailable(f"{action}: Docker engine unreachable: {exc}") from exc


def _is_conflict(exc: docker.errors.APIError) -> bool:
    return bool(exc.status_code == 409)


def _state(attrs: dict[str, Any]) -> ContainerState:
    """ContainerState from ``docker inspect`` output."""
    state = attrs.get("State") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    host_ports: dict[int, int] = {}
    for key, bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
        port, _, proto = key.partition("/")
        if proto != "tcp" or not bindings:  # None while the container is not running
            continue
        loopback = [b for b in bindings if b.get("HostIp") in ("127.0.0.1", "")] or bindings
        if loopback[0].get("HostPort"):
            host_ports[int(port)] = int(loopback[0]["HostPort"])
    return ContainerState(
        exists=True,
        running=bool(state.get("Running")),
        container_id=attrs.get("Id"),
        docker_status=state.get("Status"),
        spec_hash=labels.get(LABEL_SPEC_HASH),
        host_ports=host_ports,
    )


def _image_missing_message(image: str) -> str:
    return (
        f"image {image} is not on the Docker engine: an operator builds it with `make image` "
        f"(images/build.sh {image}), then the sandbox can be started again"
    )


def _tmp_tmpfs(spec: ContainerSpec) -> str:
    """/tmp options: a quarter of the memory limit, at most 512 MB (it is memory, and it counts)."""
    size_mb = max(16, min(_TMP_TMPFS_MAX_MB, spec.memory_mb // 4))
    return f"rw,nosuid,nodev,size={size_mb}m,mode=1777"


def _secret_target(path_in_tmpfs: str) -> PurePosixPath:
    """Absolute path of a file inside the secrets tmpfs; rejects anything that could leave it."""
    relative = PurePosixPath(path_in_tmpfs)
    if not path_in_tmpfs or relative.is_absolute() or any(part in ("", ".", "..") for part in path_in_tmpfs.split("/")):
        raise ValueError(f"not a plain relative path inside {SECRETS_PATH}: {path_in_tmpfs!r}")
    return PurePosixPath(SECRETS_PATH) / relative


def _demux(raw: bytes) -> tuple[bytes, bytes]:
    """(stdout, stderr) of a non-TTY exec stream: frames of an 8-byte header and a payload."""
    out, err = bytearray(), bytearray()
    offset = 0
    while offset + 8 <= len(raw):
        stream, size = struct.unpack(">BxxxL", raw[offset : offset + 8])
        payload = raw[offset + 8 : offset + 8 + size]
        (err if stream == 2 else out).extend(payload)
        offset += 8 + size
    return bytes(out), bytes(err)


# Runs inside the container. Write to a temporary name, then rename: OpenCode never reads a
# half-written config. umask 077 keeps the file private from its first byte, and the tmpfs root
# is chmod-ed because Docker copies the image directory's mode (0755) over the mount's mode=0700.
# $1: the tmpfs; $2: a marker to create last ("" for none). Unpacks stdin's tar next to the targets, then
# renames each file into place, so no reader ever sees a partly written secret.
_WRITE_SECRETS_SCRIPT = (
    'umask 077 && chmod 0700 "$1" && t="$1/.incoming.$$" && rm -rf "$t" && mkdir "$t" && '
    'tar -x -f - -C "$t" && (cd "$t" && find . -type f) | while read -r f; do '
    'mkdir -p "$1/$(dirname "$f")" && mv -f "$t/$f" "$1/$f" || exit 1; done && '
    'rm -rf "$t" && { [ -z "$2" ] || touch "$1/$2"; }'
)


def _tar(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar archive of ``files`` (relative paths), each mode 0600."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for path, body in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(body), 0o600, int(time.time())
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


class DockerEngine:
    """Sandbox containers and volumes on one Docker engine.

    Construction does not connect: the client is created on first use, so a worker can start
    while the engine is still down and report :class:`DockerUnavailable` per call instead.
    """

    def __init__(
        self, base_url: str | None = None, *, timeout: int = 60, firewall: FirewallPolicy | None = None
    ) -> None:
        """``base_url`` like ``unix:///var/run/docker.sock`` or ``tcp://host:2376``; None or empty
        uses the environment (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``, ...). ``firewall``: the host
        firewall to keep in place for the sandbox network (None: the operator chose none)."""
        self._base_url = base_url or None
        self._timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()
        self._firewall = firewall
        self._network_checked_until: dict[tuple[str, str], float] = {}

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def _api(self) -> Any:
        """The low-level docker SDK client (``docker.APIClient``), created once."""
        with self._lock:
            if self._client is None:
                try:
                    if self._base_url:
                        self._client = docker.DockerClient(base_url=self._base_url, timeout=self._timeout)
                    else:
                        self._client = docker.from_env(timeout=self._timeout)
                except (docker.errors.DockerException, OSError) as exc:
                    raise DockerUnavailable(f"Docker engine unreachable: {exc}") from exc
            return self._client.api

    def close(self) -> None:
        """Close the HTTP connection pool (a later call reconnects)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def ping(self) -> None:
        """Raise :class:`DockerUnavailable` unless the engine answers."""
        with _engine_errors("ping"):
            self._api.ping()

    def image_exists(self, image: str) -> bool:
        """Whether ``image`` (name:tag or id) is present locally."""
        with _engine_errors(f"inspect image {image}"):
            try:
                self._api.inspect_image(image)
            except docker.errors.NotFound:
                return False
        return True

    def _inspect_attrs(self, name_or_id: str) -> dict[str, Any] | None:
        with _engine_errors(f"inspect {name_or_id}"):
            try:
                attrs: dict[str, Any] = self._api.inspect_container(name_or_id)
            except docker.errors.NotFound:
                return None
        return attrs

    # -- containers -------------------------------------------------------------------------------

    def ensure_container(self, spec: ContainerSpec) -> ContainerState:
        """Create the volumes and the (not started) container if missing; return its state.

        An existing container built from another spec (tier, addons, image changed) is stopped,
        removed and created anew on the same volumes, so the agent's data survives.
        """
        self._ensure_network(spec)
        volumes_existed = self._ensure_volumes(spec.sandbox_id)
        name = container_name(spec.sandbox_id)
        wanted = spec_hash(spec)
        deadline = time.monotonic() + _ENSURE_PATIENCE_SECONDS
        while True:
            attrs = self._inspect_attrs(name)
            if attrs is None:
                if volumes_existed:
                    self._give_volumes_to_agent(spec)
                    volumes_existed = False
                attrs = self._create(spec)
            if attrs is not None:
                if _state(attrs).spec_hash == wanted:
                    return _state(attrs)
                self._discard(attrs["Id"])
            # Lost a race (the name is taken, or our container was replaced at once): look again.
            if time.monotonic() > deadline:
                raise DockerEngineError(f"container {name} kept changing while being ensured; try again")
            time.sleep(0.05)

    def _ensure_network(self, spec: ContainerSpec) -> None:
        """The isolated sandbox network exists and the host firewall is in place (checked every few
        minutes per engine, not on every call: applying it runs a helper container)."""
        key = (spec.network, spec.image)
        if time.monotonic() < self._network_checked_until.get(key, 0.0):
            return
        with _engine_errors(f"prepare network {spec.network}"):
            try:
                bridge = ensure_sandbox_network(self._api, spec.network)
                if self._firewall is not None:
                    apply_on_host(self._api, spec.image, bridge, self._firewall)
            except docker.errors.ImageNotFound as exc:
                raise ImageMissing(_image_missing_message(spec.image)) from exc
            except (SandboxNetworkUnsafe, FirewallError) as exc:
                raise SandboxNetworkError(str(exc)) from exc
        self._network_checked_until[key] = time.monotonic() + NETWORK_RECHECK_SECONDS

    def _ensure_volumes(self, sandbox_id: str) -> bool:
        """Create the sandbox's volumes if missing; True when at least one existed already."""
        existed = False
        workspace, data = volume_names(sandbox_id)
        for volume, role in ((workspace, "workspace"), (data, "data")):
            labels = {LABEL_MANAGED: "true", LABEL_SANDBOX_ID: sandbox_id, f"{LABEL_PREFIX}volume": role}
            with _engine_errors(f"create volume {volume}"):
                try:
                    self._api.inspect_volume(volume)
                    existed = True
                    continue
                except docker.errors.NotFound:
                    pass
                # Creating a volume whose name exists returns the existing one (no 409): a race is fine.
                self._api.create_volume(name=volume, labels=labels)
        return existed

    def _give_volumes_to_agent(self, spec: ContainerSpec) -> None:
        """Hand volumes written by a root agent (containers from before layout 2) to the agent user.

        A short-lived container from the sandbox image, with only the capabilities chown needs and no
        network, changes the owner when a volume's top directory is not the agent's yet (new volumes
        get the image directory's owner, so this only ever does work once per old volume). ``-h``:
        symbolic links are changed themselves, never followed.
        """
        workspace, data = volume_names(spec.sandbox_id)
        script = (
            f'for d in {DATA_PATH} {WORKSPACE_PATH}; do [ "$(stat -c %u "$d")" = {AGENT_UID} ] '
            f'|| chown -R -h {AGENT_USER} "$d" || exit 1; done'
        )
        api = self._api
        with _engine_errors(f"hand the volumes of {spec.sandbox_id} to the agent user"):
            host_config = api.create_host_config(
                binds={workspace: {"bind": WORKSPACE_PATH, "mode": "rw"}, data: {"bind": DATA_PATH, "mode": "rw"}},
                cap_drop=["ALL"],
                cap_add=["CHOWN", "DAC_READ_SEARCH", "FOWNER"],
                network_mode="none",
                read_only=True,
                security_opt=["no-new-privileges:true"],
            )
            try:
                created = api.create_container(
                    image=spec.image,
                    entrypoint=["/bin/sh", "-c", script],
                    user="0",
                    labels={f"{LABEL_PREFIX}role": "volume-owner"},
                    host_config=host_config,
                )
            except docker.errors.ImageNotFound as exc:
                raise ImageMissing(_image_missing_message(spec.image)) from exc
            try:
                api.start(created["Id"])
                code = int(api.wait(created["Id"], timeout=300).get("StatusCode", -1))
                if code != 0:
                    output = api.logs(created["Id"]).decode(errors="replace")
                    raise DockerEngineError(f"handing the volumes to the agent user failed ({code}): {output[-300:]}")
            finally:
                api.remove_container(created["Id"], force=True)

    def _create(self, spec: ContainerSpec) -> dict[str, Any] | None:
        """Create the container; None when the name is taken (another call created it first)."""
        api = self._api
        name = container_name(spec.sandbox_id)
        workspace, data = volume_names(spec.sandbox_id)
        ports = published_ports(spec)
        env = {
            "AGENTPOD_SANDBOX_ID": spec.sandbox_id,
            "AGENTPOD_REPO_NAME": spec.repo_name,
            # The entrypoint holds OpenCode back until the control plane has written its config (with
            # keys) into the tmpfs and touched `ready`: config never travels through env or labels.
            "AGENTPOD_CONFIG_WAIT": str(CONFIG_WAIT_SECONDS),
        }
        if spec.github_url:
            env["AGENTPOD_REPO_URL"] = spec.github_url
        host_config = api.create_host_config(
            binds={
                workspace: {"bind": WORKSPACE_PATH, "mode": "rw"},
                data: {"bind": DATA_PATH, "mode": "rw"},
            },
            # Loopback only, host port chosen by Docker: the proxy in front decides who gets in.
            port_bindings=dict.fromkeys(ports, ("127.0.0.1",)),
            tmpfs={SECRETS_PATH: _SECRETS_TMPFS, "/tmp": _tmp_tmpfs(spec)},
            # The agent's image is fixed; what it writes goes to the volumes, the tmpfs mounts or nowhere.
            read_only=True,
            # The agent runs as `agent`, and even root inside would hold no capability.
            cap_drop=["ALL"],
            nano_cpus=round(spec.cpu_cores * 1e9),
            mem_limit=spec.memory_mb * 1024 * 1024,
            pids_limit=spec.pids_limit,
            # No restart policy: the control plane decides when a sandbox runs.
            # init: the image's shell entrypoint does not reap zombies left by the agent's tools.
            init=True,
            security_opt=["no-new-privileges:true"],
            # The isolated sandbox network: no traffic between containers, host firewall (see _ensure_network).
            network_mode=spec.network,
        )
        with _engine_errors(f"create container {name}"):
            try:
                created = api.create_container(
                    image=spec.image,
                    name=name,
                    labels=container_labels(spec),
                    environment=env,
                    user=AGENT_USER,
                    ports=ports,
                    host_config=host_config,
                )
            except docker.errors.ImageNotFound as exc:
                raise ImageMissing(_image_missing_message(spec.image)) from exc
            except docker.errors.APIError as exc:
                if _is_conflict(exc):
                    return None
                raise
        # A racing reconfigure may remove it again right away: then the caller loops.
        return self._inspect_attrs(created["Id"])

    def _discard(self, container_id: str) -> None:
        """Stop (gracefully, so OpenCode closes its database) and remove one container by id.

        By id, not name: a racing call may already have created the replacement under the name.
        """
        with _engine_errors(f"replace container {container_id[:12]}"):
            try:
                self._api.stop(container_id, timeout=10)
                self._api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if not _is_conflict(exc):  # 409: removal already in progress elsewhere
                    raise

    def start(self, sandbox_id: str) -> ContainerState:
        """Start the container unless running; the state carries the host ports Docker chose."""
        name = container_name(sandbox_id)
        with _engine_errors(f"start {name}"):
            try:
                self._api.start(name)  # a running container answers 304: fine
            except docker.errors.NotFound as exc:
                raise ContainerGone(f"container {name} does not exist") from exc
        state = self.inspect(sandbox_id)
        if not state.exists:
            raise ContainerGone(f"container {name} disappeared right after starting")
        return state

    def stop(self, sandbox_id: str, timeout: int = 10) -> ContainerState:
        """Stop the container (SIGTERM, SIGKILL after ``timeout`` s); a missing one is not an error."""
        name = container_name(sandbox_id)
        with _engine_errors(f"stop {name}"):
            try:
                self._api.stop(name, timeout=timeout)  # already stopped: 304, fine
            except docker.errors.NotFound:
                return ContainerState(exists=False)
        return self.inspect(sandbox_id)

    def remove(self, sandbox_id: str, remove_volumes: bool) -> None:
        """Force-remove the container and, if asked, both volumes; whatever is missing is fine."""
        name = container_name(sandbox_id)
        with _engine_errors(f"remove {name}"):
            try:
                self._api.remove_container(name, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if not _is_conflict(exc):
                    raise
                # 409: Docker is already removing it (a retry of this very call); wait for that.
                self._wait_gone(name)
        if not remove_volumes:
            return
        for volume in volume_names(sandbox_id):
            self._remove_volume(volume)

    def _wait_gone(self, name: str) -> None:
        deadline = time.monotonic() + _REMOVAL_WAIT_SECONDS
        while self._inspect_attrs(name) is not None:
            if time.monotonic() > deadline:
                raise DockerEngineError(f"container {name} is still being removed")
            time.sleep(0.2)

    def _remove_volume(self, volume: str) -> None:
        deadline = time.monotonic() + _REMOVAL_WAIT_SECONDS
        while True:
            with _engine_errors(f"remove volume {volume}"):
                try:
                    self._api.remove_volume(volume)
                    return
                except docker.errors.NotFound:
                    return
                except docker.errors.APIError as exc:
                    # 409 "in use": the container's removal is still releasing it.
                    if not _is_conflict(exc) or time.monotonic() > deadline:
                        raise
            time.sleep(0.2)

    def inspect(self, sandbox_id: str) -> ContainerState:
        """What Docker says about the sandbox's container (``exists=False`` when there is none)."""
        attrs = self._inspect_attrs(container_name(sandbox_id))
        return ContainerState(exists=False) if attrs is None else _state(attrs)

    def list_managed(self) -> list[dict[str, Any]]:
        """Every container this control plane created: ``id``, ``name``, ``labels``, ``status``."""
        with _engine_errors("list containers"):
            found = self._api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
        return [
            {
                "id": item["Id"],
                "name": (item.get("Names") or ["/"])[0].lstrip("/"),
                "labels": item.get("Labels") or {},
                "status": item.get("State"),
            }
            for item in found
        ]

    # -- secrets ----------------------------------------------------------------------------------

    def write_secret_file(self, sandbox_id: str, path_in_tmpfs: str, content: bytes) -> None:
        """Write ``content`` to ``/run/agentpod/<path_in_tmpfs>`` (mode 0600) in the running container."""
        self.write_secret_files(sandbox_id, {path_in_tmpfs: content})

    def write_secret_files(self, sandbox_id: str, files: Mapping[str, bytes], *, then_touch: str | None = None) -> None:
        """Write each file to ``/run/agentpod/<path>`` (mode 0600) in the running container, then create
        ``then_touch`` (e.g. ``ready``) once every file is in place — all in one ``docker exec``.

        The bytes travel as a tar archive over the exec's stdin, so they appear in no command line,
        environment or ``docker inspect``; each file is unpacked beside its target and renamed over it,
        so a reader never sees half a file. Not ``put_archive``: Docker's archive API writes into the
        container's filesystem layer underneath the tmpfs mount, i.e. onto the host's disk, where the
        container cannot even see the file. The tmpfs is empty after every start, so call this after
        each :meth:`start`. Needs ``sh``, ``tar``, ``find``, ``chmod``, ``mkdir``, ``dirname``, ``mv``,
        ``rm`` and ``touch`` in the image.
        """
        targets = {str(_secret_target(path).relative_to(SECRETS_PATH)): body for path, body in files.items()}
        marker = str(_secret_target(then_touch).relative_to(SECRETS_PATH)) if then_touch else ""
        name = container_name(sandbox_id)
        # run_with_stdin refuses a stopped container, also on purpose: with the tmpfs unmounted the files
        # would land on disk.
        result = self.run_with_stdin(
            sandbox_id,
            ["sh", "-c", _WRITE_SECRETS_SCRIPT, "sh", SECRETS_PATH, marker],
            _tar(targets),
            action=f"write {sorted(targets)} in {name}",
        )
        if result.exit_code != 0:
            raise DockerEngineError(
                f"writing {sorted(targets)} in {name} failed ({result.exit_code}): "
                f"{result.stderr.decode(errors='replace')[:500]}"
            )

    # -- commands -----------------------------------------------------------------------------------

    def run_with_stdin(
        self, sandbox_id: str, command: Sequence[str], stdin: bytes, *, action: str | None = None
    ) -> ExecResult:
        """Run ``command`` in the sandbox's running container (as its user, in its working directory, with its
        environment) with ``stdin`` as the command's whole input; returns its exit code and output.

        The bytes travel over the exec's stdin, so they appear in no command line, environment or
        ``docker inspect``. The output is read after the input is sent: a command that prints much before it
        has read everything would stall, so read stdin first (``cat > file``) or print little. Raises
        :class:`ContainerGone` / :class:`ContainerNotRunning`; ``action`` names the call in other errors.
        """
        name = container_name(sandbox_id)
        action = action or f"run {command[0] if command else '?'} in {name}"
        attrs = self._inspect_attrs(name)
        if attrs is None:
            raise ContainerGone(f"container {name} does not exist")
        if not _state(attrs).running:
            raise ContainerNotRunning(f"container {name} is not running")
        api = self._api
        with _engine_errors(action):
            try:
                exec_id = api.exec_create(attrs["Id"], list(command), stdin=True, stdout=True, stderr=True)["Id"]
            except docker.errors.NotFound as exc:
                raise ContainerGone(f"container {name} does not exist") from exc
            except docker.errors.APIError as exc:
                if _is_conflict(exc):
                    raise ContainerNotRunning(f"container {name} is not running") from exc
                raise
            output = self._exec_with_stdin(exec_id, stdin)
            exit_code = self._exec_exit_code(exec_id)
        stdout, stderr = _demux(output)
        return ExecResult(exit_code=exit_code, stdout=stdout, stderr=stderr)

    def _exec_with_stdin(self, exec_id: str, content: bytes) -> bytes:
        """Start an exec, send ``content`` as its whole stdin, return its raw (multiplexed) output."""
        attached = self._api.exec_start(exec_id, socket=True)
        # The SDK hands back a SocketIO wrapper; half-closing needs the socket underneath.
        raw: Any = getattr(attached, "_sock", attached)
        try:
            raw.settimeout(self._timeout)
            raw.sendall(content)
            raw.shutdown(socket.SHUT_WR)  # EOF on stdin: `cat` finishes
            chunks = []
            while chunk := raw.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            attached.close()

    def _exec_exit_code(self, exec_id: str) -> int | None:
        # The output stream can end a moment before Docker records the exit code.
        deadline = time.monotonic() + 10
        while True:
            info = self._api.exec_inspect(exec_id)
            if not info.get("Running") or time.monotonic() > deadline:
                code = info.get("ExitCode")
                return None if code is None else int(code)
            time.sleep(0.05)
