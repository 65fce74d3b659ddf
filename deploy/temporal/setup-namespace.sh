#!/bin/sh
# Registers AgentPod's namespace and the custom search attributes its workflows set.
# Idempotent: anything that already exists is left as it is.
set -eu

NAMESPACE=${NAMESPACE:-default}
RETENTION=${NAMESPACE_RETENTION:-72h}
ADDRESS=${TEMPORAL_ADDRESS:-temporal:7233}
SEARCH_ATTRIBUTES="AgentpodUserId AgentpodSandboxId AgentpodStatus"

# The CLI is pointed at an IPv4 address: inside compose networks a name can also resolve to an
# IPv6 address the server does not listen on.
host=${ADDRESS%:*}
port=${ADDRESS##*:}
ip=$(getent ahosts "$host" | awk '$2 == "STREAM" && $1 ~ /^[0-9.]+$/ { print $1; exit }')
ADDRESS="${ip:-$host}:$port"

# retry N CMD...: a freshly created namespace takes a few seconds to reach every server cache.
retry() {
    tries=$1
    shift
    n=1
    until "$@"; do
        [ "$n" -lt "$tries" ] || return 1
        n=$((n + 1))
        sleep 2
    done
}

echo "waiting for Temporal at $ADDRESS"
retry 60 temporal operator cluster health --address "$ADDRESS" >/dev/null

if temporal operator namespace describe --namespace "$NAMESPACE" --address "$ADDRESS" >/dev/null 2>&1; then
    echo "namespace $NAMESPACE exists"
else
    temporal operator namespace create --namespace "$NAMESPACE" --retention "$RETENTION" --address "$ADDRESS"
fi

for name in $SEARCH_ATTRIBUTES; do
    if retry 15 temporal operator search-attribute list --namespace "$NAMESPACE" --address "$ADDRESS" \
        | grep -qw "$name"; then
        echo "search attribute $name exists"
    else
        retry 15 temporal operator search-attribute create \
            --namespace "$NAMESPACE" --name "$name" --type Keyword --address "$ADDRESS"
    fi
done
echo "namespace $NAMESPACE is ready"
