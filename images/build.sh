#!/usr/bin/env bash
# Build the AgentPod sandbox image (OpenCode agent server) FROM scratch.
#
# Usage:  images/build.sh [TAG]                 TAG defaults to agentpod-sandbox:dev
# Env:    AGENTPOD_OPENCODE_VERSION=X.Y.Z       OpenCode release to pin (default below)
#         AGENTPOD_FORCE_BUILD=1                run `docker build` even when up to date
#
# No base image is pulled. The script
#   1. fetches the npm package opencode-linux-x64@VERSION with `npm pack` into
#      images/.build/npm/ (once per version) and extracts the `opencode` binary,
#   2. freezes the ACP gateway (gateway/ in this repo) with PyInstaller into a
#      standalone directory, cached in images/.build/gateway/<source hash>/,
#   3. assembles a build context in images/.build/context/ from host files:
#      the glibc files that `ldd` lists for opencode, rg and the gateway, a static
#      busybox with applet links, rg, a CA bundle, minimal /etc files and empty dirs,
#   4. fingerprints that context and runs `docker build` only when the
#      fingerprint differs from the one stored as a label on the existing image.
# Missing host tools (static busybox, ripgrep) are installed with apt-get.
# Env:    AGENTPOD_GATEWAY_PYTHON=python3       interpreter that builds the gateway
#         (needs venv and a shared libpython; its version is part of the cache key)
set -euo pipefail

DEFAULT_OPENCODE_VERSION=1.18.34
OPENCODE_VERSION="${AGENTPOD_OPENCODE_VERSION:-$DEFAULT_OPENCODE_VERSION}"
TAG="${1:-agentpod-sandbox:dev}"
NPM_PACKAGE=opencode-linux-x64

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
SRC="$HERE/sandbox"
CACHE="$HERE/.build"
CTX="$CACHE/context"

log() { printf '[build.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v docker >/dev/null || die "docker is not installed"
[[ "$OPENCODE_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+([-.][0-9A-Za-z.]+)?$ ]] \
    || die "bad OpenCode version: $OPENCODE_VERSION"

# --- host tools -------------------------------------------------------------
apt_install() {
    command -v apt-get >/dev/null || die "need $* but apt-get is not available"
    log "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; }
}

# A static executable makes ldd fail ("not a dynamic executable").
is_static() { [[ -x "$1" ]] && ! ldd "$1" >/dev/null 2>&1; }

BUSYBOX=/bin/busybox
is_static "$BUSYBOX" || apt_install busybox-static
is_static "$BUSYBOX" || die "$BUSYBOX is missing or not statically linked"

command -v rg >/dev/null || apt_install ripgrep
RG="$(command -v rg)"

# --- OpenCode binary --------------------------------------------------------
TARBALL="$CACHE/npm/$NPM_PACKAGE-$OPENCODE_VERSION.tgz"
OPENCODE_BIN="$CACHE/opencode/$OPENCODE_VERSION/opencode"

if [[ ! -s "$TARBALL" ]]; then
    command -v npm >/dev/null || die "npm is needed to fetch $NPM_PACKAGE@$OPENCODE_VERSION"
    log "fetching $NPM_PACKAGE@$OPENCODE_VERSION"
    mkdir -p "$CACHE/npm"
    tmp="$(mktemp -d "$CACHE/npm/tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$NPM_PACKAGE@$OPENCODE_VERSION" >/dev/null) \
        || die "npm pack $NPM_PACKAGE@$OPENCODE_VERSION failed (see \`npm view $NPM_PACKAGE versions\`)"
    mv "$tmp/$NPM_PACKAGE-$OPENCODE_VERSION.tgz" "$TARBALL"
    rm -rf "$tmp"; trap - EXIT
    rm -f "$OPENCODE_BIN"
fi

if [[ ! -x "$OPENCODE_BIN" ]]; then
    log "extracting opencode from $(basename "$TARBALL")"
    dir="$(dirname "$OPENCODE_BIN")"
    rm -rf "$dir" && mkdir -p "$dir"
    tar -xzf "$TARBALL" -C "$dir" --strip-components=2 package/bin/opencode
    chmod 755 "$OPENCODE_BIN"
    got="$("$OPENCODE_BIN" --version 2>/dev/null | tail -n1)"
    [[ "$got" == "$OPENCODE_VERSION" ]] \
        || { rm -rf "$dir"; die "extracted opencode reports version '$got', expected $OPENCODE_VERSION"; }
fi

# --- ACP gateway: a standalone build of gateway/ ----------------------------
# The image has no Python, so PyInstaller freezes the gateway with the interpreter
# and the packages it imports into one directory (glibc comes from the image).
# Building takes ~10 s plus a one-time venv, so the result is cached under a key
# made of everything that goes into it: the gateway's source, the pinned
# requirements, the entry script, the interpreter's version and this recipe.
GATEWAY_PYTHON="${AGENTPOD_GATEWAY_PYTHON:-python3}"
GATEWAY_RECIPE="pyinstaller --onedir --strip --collect-submodules uvicorn v1"
gateway_key() {
    {
        echo "$GATEWAY_RECIPE"
        "$GATEWAY_PYTHON" -c 'import sys, platform; print(sys.version, platform.machine())'
        cd "$REPO"
        find gateway -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        sha256sum images/gateway/requirements.txt images/gateway/entry.py
    } | sha256sum | cut -c1-16
}
command -v "$GATEWAY_PYTHON" >/dev/null || die "$GATEWAY_PYTHON is needed to build the ACP gateway"
GATEWAY_KEY="$(gateway_key)"
GATEWAY_BUILD="$CACHE/gateway/$GATEWAY_KEY/agentpod-gateway"
GATEWAY_VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/gateway/agentpod_gateway/__init__.py")"

if [[ ! -x "$GATEWAY_BUILD/agentpod-gateway" ]]; then
    venv="$CACHE/gateway/venv-$("$GATEWAY_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-$(sha256sum "$HERE/gateway/requirements.txt" | cut -c1-12)"
    if [[ ! -x "$venv/bin/pyinstaller" ]]; then
        log "creating the gateway build venv ($(basename "$venv"))"
        rm -rf "$venv"
        "$GATEWAY_PYTHON" -m venv "$venv" || die "$GATEWAY_PYTHON -m venv failed (Debian: apt-get install python3-venv)"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$HERE/gateway/requirements.txt" >&2 \
            || { rm -rf "$venv"; die "installing the gateway build requirements failed"; }
    fi
    log "building the ACP gateway $GATEWAY_VERSION (key $GATEWAY_KEY)"
    work="$(mktemp -d "$CACHE/gateway/tmp.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    (cd "$REPO" && "$venv/bin/pyinstaller" --onedir --strip --noconfirm --clean --log-level WARN \
        --name agentpod-gateway --paths "$REPO/gateway" --collect-submodules uvicorn \
        --distpath "$work/dist" --workpath "$work/build" --specpath "$work" \
        "$HERE/gateway/entry.py" >&2) || die "PyInstaller failed to build the gateway"
    got="$("$work/dist/agentpod-gateway/agentpod-gateway" --version 2>/dev/null || true)"
    [[ "$got" == "$GATEWAY_VERSION" ]] || die "the built gateway reports version '$got', expected $GATEWAY_VERSION"
    rm -rf "$(dirname "$GATEWAY_BUILD")" && mkdir -p "$(dirname "$GATEWAY_BUILD")"
    mv "$work/dist/agentpod-gateway" "$GATEWAY_BUILD"
    rm -rf "$work"; trap - EXIT
    # Keep only the newest few builds: every gateway change makes a new one.
    ls -1dt "$CACHE"/gateway/*/agentpod-gateway 2>/dev/null | tail -n +4 | xargs -r dirname | xargs -r rm -rf
fi

# --- build context ----------------------------------------------------------
# Copy a host file to the same path under the root $1, resolving symlinks.
put() { mkdir -p "$1$(dirname "$2")" && cp -L "$2" "$1$2"; }

# Shared libraries (and the ELF interpreter) that ldd lists for a binary.
libs_of() {
    ldd "$1" | awk '
        /not found/          { print "MISSING " $1; next }
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\//           { print $1 }'
}

# The host libraries the gateway needs: all of its launcher's (it loads them
# before it knows about _internal/, e.g. libz), and for the bundled .so files
# those PyInstaller deliberately leaves out (glibc).
gateway_libs() {
    local internal="$GATEWAY_BUILD/_internal" elf
    libs_of "$GATEWAY_BUILD/agentpod-gateway"
    find "$internal" -type f \( -name '*.so' -o -name '*.so.*' \) -print \
        | while read -r elf; do LD_LIBRARY_PATH="$internal" libs_of "$elf"; done \
        | grep -v "^$internal/" || true
}

rm -rf "$CTX"
mkdir -p "$CTX/base" "$CTX/agent-home" "$CTX/opencode/usr/local/bin" "$CTX/gateway/usr/local/bin" "$CTX/gateway/usr/local/lib" \
    "$CTX/entrypoint/usr/local/bin"
B="$CTX/base"

for lib in $( { libs_of "$OPENCODE_BIN"; libs_of "$RG"; gateway_libs; } | sort -u); do
    [[ "$lib" == MISSING ]] && die "ldd reports a missing library for opencode, rg or the gateway"
    put "$B" "$lib"
done

install -D -m 755 "$BUSYBOX" "$B/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [[ "$applet" == busybox || "$applet" == */* ]] && continue
    ln -s busybox "$B/bin/$applet"
done
mkdir -p "$B/usr/bin" && ln -s ../../bin/busybox "$B/usr/bin/env"   # for #!/usr/bin/env
install -D -m 755 "$RG" "$B/usr/local/bin/rg"

mkdir -p "$B/etc"
# The agent runs as `agent` (1000): the container is started with that user (see docker_engine.py).
printf 'root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/data:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$B/etc/passwd"
printf 'root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n' > "$B/etc/group"
# Without this file glibc asks DNS before /etc/hosts (breaks --add-host names).
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$B/etc/nsswitch.conf"
for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [[ -s "$ca" ]]; then
        install -D -m 644 "$ca" "$B/etc/ssl/certs/ca-certificates.crt"
        break
    fi
done

mkdir -p "$B/run/agentpod" "$B/tmp"
chmod 1777 "$B/tmp"
# Secrets-bearing config lands here (a tmpfs owned by the agent at run time): private.
chmod 700 "$B/run/agentpod"
# /data and /workspace belong to the agent: the Dockerfile copies them with --chown, and Docker gives a
# new named volume the owner and mode of the image directory it is mounted on.
mkdir -p "$CTX/agent-home/data" "$CTX/agent-home/workspace"
chmod 755 "$CTX/agent-home/data" "$CTX/agent-home/workspace"

ln "$OPENCODE_BIN" "$CTX/opencode/usr/local/bin/opencode" 2>/dev/null \
    || cp "$OPENCODE_BIN" "$CTX/opencode/usr/local/bin/opencode"
cp -al "$GATEWAY_BUILD" "$CTX/gateway/usr/local/lib/agentpod-gateway" 2>/dev/null \
    || cp -a "$GATEWAY_BUILD" "$CTX/gateway/usr/local/lib/agentpod-gateway"
# PyInstaller's launcher finds its _internal/ next to the real path of the executable.
ln -s ../lib/agentpod-gateway/agentpod-gateway "$CTX/gateway/usr/local/bin/agentpod-gateway"
install -m 755 "$SRC/agentpod-entrypoint" "$CTX/entrypoint/usr/local/bin/agentpod-entrypoint"
cp "$SRC/Dockerfile" "$CTX/Dockerfile"

# --- build only when something changed --------------------------------------
fingerprint() {
    (
        cd "$CTX"
        echo "opencode=$OPENCODE_VERSION gateway=$GATEWAY_VERSION"
        find . -printf '%y %m %p -> %l\n' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -c1-16
}
FP="$(fingerprint)"
current="$(docker image inspect -f '{{ index .Config.Labels "agentpod.build.inputs" }}' "$TAG" 2>/dev/null || true)"

if [[ "$current" == "$FP" && "${AGENTPOD_FORCE_BUILD:-0}" != 1 ]]; then
    log "$TAG is up to date (opencode $OPENCODE_VERSION, inputs $FP)"
else
    # The legacy builder is enough; use it when the buildx plugin is absent.
    if [[ -z "${DOCKER_BUILDKIT:-}" ]] && ! docker buildx version >/dev/null 2>&1; then
        export DOCKER_BUILDKIT=0
    fi
    log "building $TAG (opencode $OPENCODE_VERSION, inputs $FP)"
    previous="$(docker image inspect -f '{{ .Id }}' "$TAG" 2>/dev/null || true)"
    docker build --quiet \
        --build-arg "OPENCODE_VERSION=$OPENCODE_VERSION" \
        --build-arg "GATEWAY_VERSION=$GATEWAY_VERSION" \
        --label "agentpod.build.inputs=$FP" \
        -t "$TAG" "$CTX" >/dev/null
    # Drop the image this tag pointed at before, unless it is still tagged or
    # used by a container (then `docker rmi` refuses, which is fine).
    if [[ -n "$previous" && "$previous" != "$(docker image inspect -f '{{ .Id }}' "$TAG")" ]] \
        && [[ "$(docker image inspect -f '{{ len .RepoTags }}' "$previous" 2>/dev/null)" == 0 ]]; then
        docker rmi "$previous" >/dev/null 2>&1 || true
    fi
fi

size="$(docker image inspect -f '{{ .Size }}' "$TAG")"
log "$TAG ready: $(docker image inspect -f '{{ .Id }}' "$TAG" | cut -c1-19), $((size / 1000000)) MB"
