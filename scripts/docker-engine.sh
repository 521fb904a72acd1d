#!/usr/bin/env bash
# A private Docker engine for the compose test (and for machines without one), started so that it leaves the
# host as it was: its own data/exec roots and socket, no iptables rules, no ip_forward, no default bridge
# (builds use the host network; compose's own networks still work). Needs root.
#
#   scripts/docker-engine.sh install          docker.io + debootstrap from Debian, compose v2 plugin from trixie
#   scripts/docker-engine.sh start            start dockerd (idempotent) and wait for it
#   scripts/docker-engine.sh base-image NAME  a local python3 base image (Debian bookworm minbase), no registry needed
#   scripts/docker-engine.sh stop             stop dockerd (and its containerd) and wait until it has exited
#   eval "$(scripts/docker-engine.sh env)"    DOCKER_HOST / DOCKER_CONFIG for docker and docker compose
#
# State lives in $SPECDEC_DOCKER_DIR (default: $SPECDEC_CACHE_DIR/docker or ~/.cache/specdec/docker), so images
# built once are reused by the next run.
set -euo pipefail

DIR=${SPECDEC_DOCKER_DIR:-${SPECDEC_CACHE_DIR:-$HOME/.cache/specdec}/docker}
SOCK=$DIR/docker.sock
PIDFILE=$DIR/dockerd.pid
COMPOSE_DEB_SUITE=trixie # bookworm has no compose v2; trixie's package needs only libc6 >= 2.34

export DOCKER_HOST=unix://$SOCK DOCKER_CONFIG=$DIR/config

need_root() {
    [ "$(id -u)" = 0 ] || { echo "docker-engine.sh: $1 needs root" >&2; exit 1; }
}

debian_mirror() {  # the mirror apt already uses (deb822 or one-line sources)
    local uri
    uri=$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
    [ -n "$uri" ] || uri=$(grep -hoE '^deb +[^ ]+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
    echo "${uri:-http://deb.debian.org/debian}"
}

install_compose_plugin() {
    local plugin=$DOCKER_CONFIG/cli-plugins/docker-compose
    [ -x "$plugin" ] && return
    # A private apt state: the host's package lists and sources stay untouched.
    local apt=$DIR/apt
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/unpacked" "$(dirname "$plugin")"
    echo "deb $(debian_mirror) $COMPOSE_DEB_SUITE main" >"$apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=-"
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::State::Status=/dev/null"
        -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
    apt-get "${opts[@]}" update -qq
    (cd "$apt/cache/archives" && apt-get "${opts[@]}" download -qq docker-compose)
    dpkg -x "$apt"/cache/archives/docker-compose_*.deb "$apt/unpacked"
    cp "$apt/unpacked/usr/libexec/docker/cli-plugins/docker-compose" "$plugin"
    rm -rf "$apt"
}

cmd_install() {
    need_root install
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        # Never let the package start a default dockerd (it would change the host firewall): policy-rc.d says no.
        local policy=/usr/sbin/policy-rc.d created=""
        if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1; fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
        [ -z "$created" ] || rm -f "$policy"
    fi
    mkdir -p "$DIR"
    install_compose_plugin
    docker compose version
}

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

cmd_start() {
    need_root start
    mkdir -p "$DIR/data" "$DIR/exec" "$DOCKER_CONFIG"
    if ! running; then
        rm -f "$PIDFILE" "$SOCK"
        # setsid: the daemon outlives this script but not `stop`; its log is kept beside its state.
        setsid dockerd --data-root "$DIR/data" --exec-root "$DIR/exec" --pidfile "$PIDFILE" -H "$DOCKER_HOST" \
            --iptables=false --ip6tables=false --ip-forward=false --bridge=none \
            >"$DIR/dockerd.log" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 100); do
        docker version >/dev/null 2>&1 && return
        sleep 0.2
    done
    echo "dockerd did not start; its log:" >&2
    tail -20 "$DIR/dockerd.log" >&2
    exit 1
}

cmd_stop() {
    running || { rm -f "$PIDFILE"; return; }
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 1 150); do  # dockerd stops its containers and containerd first
        kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE" "$SOCK"; return; }
        sleep 0.2
    done
    echo "dockerd ($pid) did not stop in 30 s; killing it" >&2
    kill -9 "$pid"
}

cmd_base_image() {
    need_root base-image
    local name=${1:?usage: docker-engine.sh base-image NAME}
    docker image inspect "$name" >/dev/null 2>&1 && { echo "$name exists"; return; }
    local rootfs=$DIR/rootfs
    rm -rf "$rootfs"
    # python3.11 matches the cp311 torch wheel; ca-certificates for pip over HTTPS.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
        "$(debian_mirror)" >"$DIR/debootstrap.log" 2>&1 || { tail -20 "$DIR/debootstrap.log" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$name" >/dev/null
    rm -rf "$rootfs"
    echo "$name built"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
base-image) shift && cmd_base_image "$@" ;;
env) echo "export DOCKER_HOST=$DOCKER_HOST DOCKER_CONFIG=$DOCKER_CONFIG" ;;
*) sed -n '2,12p' "$0" >&2 && exit 2 ;;
esac
