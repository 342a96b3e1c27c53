#!/usr/bin/env bash
# Make the local Python base image (vault-bridge-base:bookworm) when it is missing.
#
# No container registry is reachable here, so `FROM python:3.11-slim` cannot be
# pulled. Instead a minimal Debian bookworm with python3 is bootstrapped from the
# Debian mirror apt already uses and imported into Docker:
#
#   debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
#       bookworm <dir> <mirror>
#   tar -C <dir> -c . | docker import - vault-bridge-base:bookworm
#
# The root filesystem is cached as a tarball, so a restarted dockerd or an empty
# data dir re-imports in seconds instead of bootstrapping again (about 50 s).
#
# Usage: scripts/base-image.sh [--force]   (--force: bootstrap again, replace cache and image)
#
# Environment:
#   VAULT_BRIDGE_CACHE       cache directory          (default /var/cache/vault-bridge)
#   VAULT_BRIDGE_BASE_IMAGE  image tag to create      (default vault-bridge-base:bookworm)
#   DEBOOTSTRAP_MIRROR       Debian mirror URL        (default: the one in apt's sources)
set -euo pipefail

suite=bookworm
include=python3,python3-venv,ca-certificates
# Bump when the trimming below changes: it is part of the cache key.
recipe=2
image="${VAULT_BRIDGE_BASE_IMAGE:-vault-bridge-base:${suite}}"
cache_dir="${VAULT_BRIDGE_CACHE:-/var/cache/vault-bridge}"
# The cache key names everything that changes the root filesystem.
tarball="${cache_dir}/base-${suite}-minbase-$(printf '%s' "$include $recipe" | sha256sum | cut -c1-12).tar"
force=false

say() { printf 'base-image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

case "${1:-}" in
    "") ;;
    --force) force=true ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
esac

if ! $force && docker image inspect "$image" >/dev/null 2>&1; then
    say "$image present; nothing to do"
    exit 0
fi

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap needs it)"
docker info >/dev/null 2>&1 || die "docker daemon not answering: run .ci/install-docker.sh"

# The Debian mirror apt is configured with (the reachable one here), for $suite.
apt_mirror() {
    local f
    # deb822 (*.sources): a stanza with "Types: deb", a "Suites:" containing $suite.
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -e "$f" ]] || continue
        awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = suites = uris = ""
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            tolower($1) == "types:"  { $1 = ""; types = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            tolower($1) == "uris:"   { $1 = ""; uris = $0; sub(/^ +/, "", uris) }
            END { if (!found) flush() }
        ' "$f"
    done
    # One-line format: deb [options] URL suite components...
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -e "$f" ]] || continue
        awk -v suite="$suite" '
            $1 != "deb" { next }
            { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } }
            $(i + 1) == suite { print $i; exit }
        ' "$f"
    done
}

lock="${cache_dir}/.base-image.lock"
mkdir -p "$cache_dir"
# One builder at a time (CI job and a developer, or two test sessions).
exec 9>"$lock"
flock -w 600 9 || die "another base-image.sh holds $lock"
if ! $force && docker image inspect "$image" >/dev/null 2>&1; then
    say "$image made meanwhile by another run; nothing to do"
    exit 0
fi

if $force || [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing: run .ci/install-docker.sh"
    mirror="${DEBOOTSTRAP_MIRROR:-$(apt_mirror | head -n 1)}"
    [[ -n "$mirror" ]] || die "no Debian mirror for $suite in /etc/apt/sources.list(.d); set DEBOOTSTRAP_MIRROR"
    rootfs="$(mktemp -d "${cache_dir}/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs" "$tarball.tmp"' EXIT
    say "debootstrap $suite from $mirror (about 50 s)"
    start=$SECONDS
    if ! debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror" \
        >"${cache_dir}/debootstrap.log" 2>&1; then
        tail -n 30 "${cache_dir}/debootstrap.log" >&2
        [[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (log: ${cache_dir}/debootstrap.log)"
    fi
    say "debootstrap took $((SECONDS - start)) s"
    # Trim what a runtime image never needs (downloaded .debs, apt lists and caches,
    # manuals, message translations: 33 MB of the 156), and keep later `apt-get
    # install`s in derived images from adding them back, as Debian's slim images do.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias \
        -exec rm -rf {} + 2>/dev/null || true
    find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv -f "$tarball.tmp" "$tarball"
    # Older recipes' tarballs are dead weight now.
    find "$cache_dir" -maxdepth 1 -name "base-${suite}-minbase-*.tar" ! -path "$tarball" -delete
    rm -rf "$rootfs"
    trap - EXIT
    say "cached $(du -h "$tarball" | cut -f1) at $tarball"
else
    say "using cached root filesystem $tarball"
fi

start=$SECONDS
# An imported image has no config: give it the PATH and locale a Dockerfile's
# `ENV PATH=...:$PATH` expects to extend.
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase --include=$include $suite" \
    "$tarball" "$image" >/dev/null
say "imported $image in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%d MB", $1 / 1e6}'))"
