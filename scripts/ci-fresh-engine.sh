#!/usr/bin/env bash
# Run CI (.ci/run) from a fresh clone against a brand-new Docker engine.
#
# A long-used engine hides assumptions (a bridge gateway that a new engine does not list, images,
# volumes and networks left by earlier runs). This starts a second dockerd with its own empty data
# root, exec root, pid file, socket and bridge, clones the committed HEAD into an empty directory,
# points DOCKER_HOST at the new engine and runs .ci/run there. The new engine is stopped and its
# files removed afterwards, whatever happens; the machine's own engine is never touched.
#
# Usage:  scripts/ci-fresh-engine.sh [--keep]      (as root; --keep leaves the run directory)
# Env:    FRESH_SUBNET=10.213.0.1/24                the new bridge's address
#         PYTEST_ARGS=...                           passed on to `make test`
set -euo pipefail

keep=0
[[ "${1:-}" == --keep ]] && keep=1
repo="$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)"
run="$(mktemp -d /tmp/agentpod-fresh-engine.XXXXXX)"
bridge="apfresh$$"
bridge="${bridge:0:15}"
subnet="${FRESH_SUBNET:-10.213.0.1/24}"
sock="$run/docker.sock"
log() { printf '[fresh-engine] %s\n' "$*" >&2; }

command -v dockerd >/dev/null || { log "dockerd is not installed (Debian: apt-get install docker.io)"; exit 1; }
[[ $(id -u) == 0 ]] || { log "run as root: it starts a Docker engine"; exit 1; }

cleanup() {
    local status=$?
    if [[ -f "$run/dockerd.pid" ]]; then
        log "stopping the fresh engine"
        # Containers and volumes of the run go with the engine's data root.
        DOCKER_HOST="unix://$sock" docker ps -aq 2>/dev/null | xargs -r env DOCKER_HOST="unix://$sock" docker rm -f >/dev/null 2>&1 || true
        kill "$(cat "$run/dockerd.pid")" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$(cat "$run/dockerd.pid")" 2>/dev/null || break; sleep 1; done
    fi
    ip link delete "$bridge" 2>/dev/null || true
    # overlay mounts of the engine may linger for a moment after it exits
    grep -o " $run/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    if ((keep)); then log "kept $run"; else rm -rf "$run"; fi
    exit "$status"
}
trap cleanup EXIT INT TERM

log "bridge $bridge ($subnet), run directory $run"
ip link add name "$bridge" type bridge
ip addr add "$subnet" dev "$bridge"
ip link set "$bridge" up

mkdir -p "$run/data" "$run/exec"
# --iptables=false: the machine's own engine owns the DOCKER chains; two daemons rewriting them
# fight. Published ports still work through Docker's userland proxy.
dockerd --data-root "$run/data" --exec-root "$run/exec" --pidfile "$run/dockerd.pid" \
    --host "unix://$sock" --bridge "$bridge" --iptables=false --ip-masq=false \
    >"$run/dockerd.log" 2>&1 </dev/null &
export DOCKER_HOST="unix://$sock"
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info >/dev/null 2>&1 || { log "the fresh engine did not start:"; tail -n 30 "$run/dockerd.log" >&2; exit 1; }
log "fresh engine $(docker version --format '{{.Server.Version}}') up; bridge IPAM: $(docker network inspect bridge --format '{{json .IPAM.Config}}')"
log "images: $(docker images -q | wc -l), volumes: $(docker volume ls -q | wc -l), containers: $(docker ps -aq | wc -l)"

log "cloning $(git -C "$repo" rev-parse --short HEAD) into $run/clone"
git clone --quiet --no-hardlinks "$repo" "$run/clone"
cd "$run/clone"
started=$(date +%s)
status=0
bash .ci/run || status=$?
log ".ci/run exited $status after $(( $(date +%s) - started )) s"
log "left on the fresh engine: $(docker ps -aq | wc -l) containers, $(docker volume ls -q | wc -l) volumes, $(docker network ls -q | wc -l) networks"
exit "$status"
