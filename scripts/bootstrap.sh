#!/usr/bin/env bash
# Prepare this machine for ad-sandbox, idempotently (Debian 12, as root for the system parts):
#   1. the Python venv in .venv with the package installed editable (re-done when
#      pyproject.toml changes),
#   2. docker.io, mmdebstrap, docker-compose and npm from apt when missing,
#   3. a running Docker engine (dockerd started in the background when `docker info` fails),
#   4. gVisor: runsc from apt, registered with that engine (merged into
#      /etc/docker/daemon.json, the engine reloaded) so agents can use
#      `sandbox.runtime: runsc`; skipped when not root or when DOCKER_HOST names another engine.
# Usage: scripts/bootstrap.sh [all|venv|docker|runsc]   (default: all)
set -euo pipefail

cd "$(dirname "$0")/.."
WHAT="${1:-all}"
DOCKERD_LOG="${AD_SANDBOX_DOCKERD_LOG:-/var/log/ad-sandbox-dockerd.log}"
DOCKER_WAIT_S=60

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
    # $@: apt-get install arguments; apt-get update runs at most once per bootstrap.
    [ "$(id -u)" -eq 0 ] || die "need root to install: $* (run as root or install them yourself)"
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}

ensure_venv() {
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install --no-install-recommends python3-venv
    fi
    [ -x .venv/bin/python ] || { say "creating .venv"; python3 -m venv .venv; }
    local want have=""
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    [ -f .venv/.bootstrap-stamp ] && have="$(cat .venv/.bootstrap-stamp)"
    if [ "$want" != "$have" ] || [ ! -x .venv/bin/ad-sandbox ]; then
        say "pip install -e '.[test]'"
        .venv/bin/python -m pip install -q --upgrade pip >&2
        .venv/bin/python -m pip install -q -e '.[test]' >&2
        printf '%s\n' "$want" > .venv/.bootstrap-stamp
    fi
}

ensure_tools() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    # The host firewall that keeps agents gateway-only (docker.io depends on it; be explicit).
    [ -x /usr/sbin/iptables-restore ] || command -v iptables-restore >/dev/null 2>&1 \
        || missing+=(iptables)
    command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
    # The compose stack's test (tests/e2e/test_compose.py) runs Debian's docker-compose 1.29.
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
    # npm only stages the claude binary on the host; recommends would pull a compiler.
    command -v npm >/dev/null 2>&1 || apt_install --no-install-recommends npm
}

ensure_dockerd() {
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "the Docker engine is not running; start it (as root: make docker)"
    local pidfile=/var/run/docker.pid
    if [ -f "$pidfile" ]; then
        local old
        old="$(cat "$pidfile" 2>/dev/null || true)"
        if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
            say "dockerd (pid $old) runs but does not answer yet; waiting for it"
        else
            say "removing stale $pidfile"
            rm -f "$pidfile"
        fi
    fi
    if [ ! -f "$pidfile" ]; then
        say "starting dockerd in the background (log: $DOCKERD_LOG)"
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    local deadline=$((SECONDS + DOCKER_WAIT_S))
    until docker info >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "Docker engine did not answer within ${DOCKER_WAIT_S}s; see $DOCKERD_LOG"
        fi
        sleep 1
    done
    say "Docker engine ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
}

ensure_runsc() {
    # Optional for users (only agents with sandbox.runtime: runsc need it), so without root
    # it is skipped; `ad-sandbox doctor` says how to register it later.
    if [ "$(id -u)" -ne 0 ]; then
        say "not root: gVisor (runsc) not set up (see \`ad-sandbox doctor\`)"
        return 0
    fi
    case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
        unix:///var/run/docker.sock|unix:///run/docker.sock) ;;
        *) say "DOCKER_HOST=$DOCKER_HOST: gVisor (runsc) not set up on that engine"; return 0 ;;
    esac
    [ -x /usr/bin/runsc ] || apt_install runsc
    .venv/bin/python -m orchestrator.runtime.gvisor register
}

case "$WHAT" in
    all) ensure_tools; ensure_venv; ensure_dockerd; ensure_runsc ;;
    venv) ensure_venv ;;
    docker) ensure_tools; ensure_dockerd ;;
    runsc) ensure_venv; ensure_dockerd; ensure_runsc ;;
    *) die "unknown target '$WHAT' (use all, venv, docker or runsc)" ;;
esac
