#!/usr/bin/env bash
# Smoke-test the sandbox image against a real Docker engine.
#
# Usage: images/smoke-test.sh [TAG]          TAG defaults to agentpod-sandbox:dev
#
#   1. run the image with the API port published on loopback, poll
#      GET /global/health until {"healthy":true,...}, print the run->healthy time;
#      check busybox (`docker exec … sh -c 'echo hi'`), rg and the image size;
#      check the ACP gateway on 4097: /health, 401 without the secret, 200 with
#      the secret written into /run/agentpod/gateway-secret;
#      check that the Claude Code and Codex ACP agents answer `initialize` as uid 1000
#      with a read-only root, no capabilities and no network;
#   2. run it with a named volume on /data, create a session (POST /session),
#      stop + remove + recreate the container on the same volume and check that
#      GET /session still lists the session.
# Everything it creates (containers, the volume) is removed on exit.
# Needs: docker, curl, python3 (free port lookup).
set -euo pipefail

TAG="${1:-agentpod-sandbox:dev}"
RUN_ID="agentpod-smoke-$$"
VOLUME="$RUN_ID-data"
CONTAINERS=()

log() { printf '[smoke] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

cleanup() {
    local c
    for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    docker volume rm -f "$VOLUME" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'log "FAIL: command failed at line $LINENO"' ERR

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now_ms() { date +%s%3N; }

# start NAME [docker run args…] -> sets PORT (OpenCode) and GW_PORT (ACP gateway)
# to the published loopback ports
# (not run in $(…): CONTAINERS must be updated in this shell for cleanup)
start() {
    local name="$1"; shift
    PORT="$(free_port)"
    GW_PORT="$(free_port)"
    CONTAINERS+=("$name")
    docker run -d --name "$name" -p "127.0.0.1:$PORT:4096" -p "127.0.0.1:$GW_PORT:4097" \
        --tmpfs /run/agentpod "$@" "$TAG" >/dev/null
}

# wait_healthy PORT NAME -> prints the health body; fails after 60 s
wait_healthy() {
    local port="$1" name="$2" body deadline=$(( $(date +%s) + 60 ))
    while (( $(date +%s) < deadline )); do
        # short per-request timeout: a request that lands while the server is
        # still starting can otherwise hang
        body="$(curl -fsS -m 2 "http://127.0.0.1:$port/global/health" 2>/dev/null || true)"
        if [[ "$body" == *'"healthy":true'* ]]; then echo "$body"; return 0; fi
        [[ "$(docker inspect -f '{{.State.Running}}' "$name")" == true ]] \
            || { docker logs "$name" >&2 || true; fail "$name exited"; }
        sleep 0.1
    done
    docker logs "$name" >&2 || true
    fail "$name not healthy after 60 s"
}

# acp_initialize AGENT -> the agent's reply to an ACP `initialize` request, run the way the gateway
# runs it in a sandbox (uid 1000, read-only root, /tmp tmpfs, no capabilities; codex-acp exits when
# its home under /data is not writable: a tmpfs stands in for the volume), without network.
# Neither agent exits when stdin closes, so the container is removed once it has answered.
ACP_INIT='{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":1,"clientCapabilities":{"fs":{"readTextFile":false,"writeTextFile":false},"terminal":false}}}'
acp_initialize() {
    local agent="$1" name="$RUN_ID-$1" line=""
    CONTAINERS+=("$name")
    coproc ACP_AGENT { exec docker run -i --rm --name "$name" --read-only --tmpfs /tmp --tmpfs /data:uid=1000,gid=1000 --cap-drop ALL \
        --user 1000:1000 --network none --entrypoint "$agent" "$TAG" 2>/dev/null; }
    local pid="$ACP_AGENT_PID"
    printf '%s\n' "$ACP_INIT" >&"${ACP_AGENT[1]}"
    IFS= read -r -t 60 line <&"${ACP_AGENT[0]}" || true
    docker rm -f "$name" >/dev/null 2>&1 || true
    wait "$pid" 2>/dev/null || true
    printf '%s\n' "$line"
}

docker image inspect "$TAG" >/dev/null 2>&1 || fail "image $TAG not found (run images/build.sh)"

# --- 1. start-up, shell, tools, size ----------------------------------------
c1="$RUN_ID-1"
t0="$(now_ms)"
start "$c1"
health="$(wait_healthy "$PORT" "$c1")"
t1="$(now_ms)"
log "healthy after $(( t1 - t0 )) ms: $health"

[[ "$(docker exec "$c1" sh -c 'echo hi')" == hi ]] || fail "busybox sh does not work"
log "docker exec sh -c 'echo hi': ok"
log "$(docker exec "$c1" rg --version | sed -n 1p)"
[[ "$(docker exec "$c1" sh -c 'test -w /tmp && test -w /data && test -w /workspace && echo ok')" == ok ]] \
    || fail "/tmp, /data or /workspace not writable"
secret="smoke-$RANDOM$RANDOM"
docker exec "$c1" sh -c "umask 077 && printf %s '$secret' > /run/agentpod/gateway-secret"
gw="http://127.0.0.1:$GW_PORT"
for _ in $(seq 100); do curl -fsS -m 2 "$gw/health" >/dev/null 2>&1 && break; sleep 0.1; done
[[ "$(curl -fsS -m 2 "$gw/health")" == *'"status":"ok"'* ]] || fail "ACP gateway /health did not answer"
[[ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "$gw/agents")" == 401 ]] \
    || fail "ACP gateway answered without the secret"
[[ "$(curl -fsS -m 2 -H "Authorization: Bearer $secret" "$gw/agents")" == *'"id":"opencode"'* ]] \
    || fail "ACP gateway did not list the opencode agent with the secret"
log "ACP gateway on 4097: health ok, 401 without the secret, agents listed with it"
for agent in claude-code-acp codex-acp; do
    reply="$(acp_initialize "$agent")"
    [[ "$reply" == *'"agentInfo":{'* && "$reply" == *'"protocolVersion":1'* ]] \
        || fail "$agent did not answer initialize: $reply"
    log "$agent: $(sed -n 's/.*"agentInfo":{\([^}]*\)}.*/\1/p' <<<"$reply")"
done
size="$(docker image inspect -f '{{.Size}}' "$TAG")"
log "image size: $(( size / 1000000 )) MB ($size bytes)"
t0="$(now_ms)"; docker stop "$c1" >/dev/null; t1="$(now_ms)"
log "docker stop took $(( t1 - t0 )) ms"
docker rm "$c1" >/dev/null

# --- 2. the OpenCode store survives container recreation --------------------
docker volume create "$VOLUME" >/dev/null
c2="$RUN_ID-2"
start "$c2" -v "$VOLUME:/data"
wait_healthy "$PORT" "$c2" >/dev/null
sid="$(curl -fsS -m 30 -X POST "http://127.0.0.1:$PORT/session" \
        -H 'content-type: application/json' -d '{"title":"agentpod smoke test"}' \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
[[ "$sid" == ses_* ]] || fail "POST /session returned no session id"
log "created session $sid"
docker stop "$c2" >/dev/null && docker rm "$c2" >/dev/null

c3="$RUN_ID-3"
start "$c3" -v "$VOLUME:/data"
wait_healthy "$PORT" "$c3" >/dev/null
sessions="$(curl -fsS -m 30 "http://127.0.0.1:$PORT/session")"
[[ "$sessions" == *"\"$sid\""* ]] || fail "session $sid missing after recreation: $sessions"
log "session $sid still listed after container recreation"

log "all checks passed"
