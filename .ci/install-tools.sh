#!/usr/bin/env bash
# Debian packages some tests need beside dockerd (idempotent; one `apt-get update`, only when
# something is missing):
#   prometheus  for `promtool check rules` on examples/monitoring/alerts.yml
# Called by .ci/run in CI (root, non-interactive); a developer can run it too.
set -euo pipefail
packages=(prometheus)
say() { printf 'install-tools: %s\n' "$*" >&2; }
if [[ $EUID -eq 0 ]]; then as_root() { "$@"; }; else as_root() { sudo "$@"; }; fi
missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # --no-install-recommends: promtool needs none of the server's web assets.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
command -v promtool >/dev/null && say "promtool: $(promtool --version 2>&1 | head -n 1)"
