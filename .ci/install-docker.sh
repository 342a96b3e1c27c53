#!/usr/bin/env bash
# Make sure a Docker daemon answers on this machine.
#
# Idempotent: installs what is missing of docker.io, debootstrap and
# docker-compose (v1, for the compose example's check) from the Debian mirror
# (one `apt-get update`, only when something is missing), starts `dockerd` in
# the background unless a daemon already answers, and waits (bounded) until `docker info` answers.
#
# Called by .ci/run in CI (root, non-interactive); a developer can run it too
# (it uses sudo when not root).
#
# Environment:
#   DOCKERD_LOG           dockerd's log file      (default /var/log/dockerd-ci.log)
#   DOCKERD_WAIT_SECONDS  how long to wait for it  (default 60)
#   DOCKERD_EXTRA_ARGS    extra dockerd flags, word-split (default none)
set -euo pipefail

log_file="${DOCKERD_LOG:-/var/log/dockerd-ci.log}"
wait_seconds="${DOCKERD_WAIT_SECONDS:-60}"
packages=(docker.io debootstrap docker-compose)

say() { printf 'install-docker: %s\n' "$*" >&2; }

if [[ $EUID -eq 0 ]]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
else
    as_root() { say "must run as root (no sudo found): $*"; exit 1; }
fi

docker_answers() {
    # The client may be newer than the daemon; it negotiates the API version.
    timeout 10 docker info >/dev/null 2>&1
}

# --- packages -----------------------------------------------------------------
missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    say "installing: ${missing[*]}"
    # env: sudo would drop an exported DEBIAN_FRONTEND.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # --no-install-recommends: skips apparmor, git, needrestart, ... (not needed
    # to run dockerd here) and saves a good part of the download.
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "packages present: ${packages[*]}"
fi

# --- daemon -------------------------------------------------------------------
if docker_answers; then
    say "docker daemon already answers"
    exit 0
fi

dockerd_pid() {
    local pid
    pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

pid="$(dockerd_pid)"
if [[ -n "$pid" ]]; then
    say "dockerd already running (pid $pid); waiting for it to answer"
else
    # A pid file left by a daemon that died makes the next dockerd refuse to start.
    as_root rm -f /var/run/docker.pid
    say "starting dockerd (log: $log_file)"
    # setsid + every stream redirected: the daemon must not keep the caller's
    # pipes open (a test harness capturing our output would otherwise hang).
    # shellcheck disable=SC2086  # DOCKERD_EXTRA_ARGS is meant to be word-split
    as_root bash -c "setsid dockerd ${DOCKERD_EXTRA_ARGS:-} >>'$log_file' 2>&1 </dev/null &"
fi

deadline=$((SECONDS + wait_seconds))
until docker_answers || { [[ $EUID -ne 0 ]] && as_root timeout 10 docker info >/dev/null 2>&1; }; do
    if ((SECONDS >= deadline)); then
        say "dockerd did not answer within ${wait_seconds}s; last lines of $log_file:"
        as_root tail -n 40 "$log_file" >&2 || true
        exit 1
    fi
    sleep 0.5
done
if ! docker_answers; then
    say "dockerd runs, but $(id -un) may not use /var/run/docker.sock (add yourself to group docker)"
    exit 1
fi
say "docker daemon answers after $((SECONDS))s: $(docker info --format '{{.ServerVersion}} {{.Driver}} cgroup v{{.CgroupVersion}}' 2>/dev/null)"
