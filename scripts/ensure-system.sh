#!/usr/bin/env bash
# Make sure the system parts Thunder needs are installed and running (Debian, as root):
#   - a Docker Engine that answers `docker info` (installs docker.io, starts dockerd without systemd)
#   - debootstrap and busybox-static, which build the sandbox images (python -m thunder_env.images)
# Idempotent, non-interactive, and quick when everything is already there (no apt call at all).
# Exits non-zero with the reason on the first thing it cannot fix.
set -euo pipefail

DOCKERD_LOG=${THUNDER_DOCKERD_LOG:-/var/log/thunder-dockerd.log}
DOCKERD_WAIT_S=${THUNDER_DOCKERD_WAIT_S:-60}
export DEBIAN_FRONTEND=noninteractive
# Root's tools (dockerd, debootstrap) live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { echo "ensure-system: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "$1 needs root; re-run as root (sudo $0)"
}

apt_updated=0
apt_install() {
    need_root "installing $*"
    command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian-based systems; install $* by hand"
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        apt-get update -q >/dev/null || die "apt-get update failed; check the apt sources and the network"
        apt_updated=1
    fi
    say "apt-get install $*"
    apt-get install -y -q --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed; run it by hand to see why"
}

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

engine_answers() {
    docker info >/dev/null 2>&1
}

dockerd_running() {
    if command -v pidof >/dev/null; then pidof dockerd >/dev/null; else pgrep -x dockerd >/dev/null; fi
}

ensure_docker() {
    engine_answers && return 0
    if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null; then
        apt_install docker.io
    fi
    engine_answers && return 0
    need_root "starting dockerd"
    local pid=""
    if dockerd_running; then
        say "dockerd is running but not answering yet; waiting"
    else
        say "starting dockerd (log: $DOCKERD_LOG)"
        # setsid + nohup: dockerd outlives this script and its terminal; no systemd on this host.
        # (Without job control the job is no group leader, so setsid execs in place: $! is dockerd.)
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
        pid=$!
    fi
    local waited=0
    until engine_answers; do
        if [ "$waited" -ge "$DOCKERD_WAIT_S" ]; then
            say "last lines of $DOCKERD_LOG:"
            tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "the Docker Engine did not answer within ${DOCKERD_WAIT_S} s (dockerd left running; re-run to wait again or stop it); see $DOCKERD_LOG"
        fi
        if { [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; } && ! dockerd_running; then
            say "last lines of $DOCKERD_LOG:"
            tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "dockerd exited during start-up; see $DOCKERD_LOG"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "Docker Engine is up"
}

ensure_build_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    # The image needs the static build: the plain busybox package links against libc.
    pkg_installed busybox-static || missing+=(busybox-static)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

ensure_docker
ensure_build_tools
