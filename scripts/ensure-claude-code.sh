#!/usr/bin/env bash
# Claude Code (npm package @anthropic-ai/claude-code), pinned, for the end-to-end test in tests/vllm and the
# recipe in docs/agents.md: installed into <cache>/claude-code (cache: $THUNDER_CACHE or ~/.cache/thunder),
# never globally; npm's own cache goes to <cache>/npm. Installs node and npm with apt if they are missing.
# Idempotent and quick when the pinned version is there. Prints the `claude` path on stdout; exits non-zero
# with the reason on the first thing it cannot fix.
set -euo pipefail

VERSION=${CLAUDE_CODE_VERSION:-2.1.197}  # the version whose requests docs/agents.md describes
CACHE=${THUNDER_CACHE:-$HOME/.cache/thunder}
PREFIX=$CACHE/claude-code
CLAUDE=$PREFIX/node_modules/.bin/claude
export DEBIAN_FRONTEND=noninteractive

say() { echo "ensure-claude-code: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

installed_version() {
    # A scratch HOME: asking the version must not create ~/.claude; no update check, no telemetry.
    local home
    home=$(mktemp -d)
    HOME=$home DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
        timeout 60 "$CLAUDE" --version 2>/dev/null | awk '{print $1}' || true
    rm -rf "$home"
}

if [ -x "$CLAUDE" ] && [ "$(installed_version)" = "$VERSION" ]; then
    echo "$CLAUDE"
    exit 0
fi
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    [ "$(id -u)" -eq 0 ] || die "node and npm are missing; install them (apt-get install nodejs npm) or re-run as root"
    command -v apt-get >/dev/null || die "node and npm are missing and apt-get is not available: install Node.js 18+ by hand"
    say "installing nodejs and npm with apt"
    apt-get update -q >/dev/null || die "apt-get update failed; check the apt sources and the network"
    apt-get install -y -q nodejs npm >/dev/null || die "apt-get install nodejs npm failed"
fi
say "installing @anthropic-ai/claude-code@$VERSION into $PREFIX"
mkdir -p "$PREFIX" "$CACHE/npm"
npm install --prefix "$PREFIX" --cache "$CACHE/npm" --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/claude-code@$VERSION" >&2 || die "npm install @anthropic-ai/claude-code@$VERSION failed (see above)"
found=$(installed_version)
[ "$found" = "$VERSION" ] || die "$CLAUDE does not run as Claude Code $VERSION (it says '${found:-nothing}')"
echo "$CLAUDE"
