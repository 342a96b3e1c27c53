#!/bin/sh
# One-shot setup for examples/docker-compose.yml: everything Vault (OpenBao) needs before
# vault-bridge starts. Runs in the `setup` service (the OpenBao image, for its `bao` CLI) with
# the dev server's root token; safe to run again against the same server.
#
#   1. a PKI secrets engine at pki/ with a root CA (a real deployment issues from an
#      intermediate, e.g. pki_int/, whose root stays offline);
#   2. the PKI role redis-enterprise, exactly what `vault-bridge vault-setup` writes for
#      compose/config.toml (server_flag and client_flag, only the configured names,
#      generate_lease=false);
#   3. the policy compose/vault-bridge.hcl, which is what `vault-bridge policy` prints for
#      compose/config.toml (tests/unit/test_examples.py keeps the two in step);
#   4. a periodic token with that policy alone (no `default` policy), written for the agent
#      to $TOKEN_DIR/token (mode 0400, owned by the agent's UID): its only Vault credential;
#   5. $CLUSTER_CA_DIR, owned by the agent's UID, for the simulated cluster to write its first
#      API certificate into (it replaces the file at every start).
#
# Environment: BAO_ADDR, BAO_TOKEN (required); TOKEN_DIR (default /out/vault-token),
# CLUSTER_CA_DIR (default /out/cluster-ca), POLICY_FILE (default /setup/vault-bridge.hcl),
# AGENT_UID / AGENT_GID (default 10001, the vault-bridge image's user).
# POSIX sh: the OpenBao image is Alpine (busybox ash).
set -eu

: "${BAO_ADDR:?set BAO_ADDR}" "${BAO_TOKEN:?set BAO_TOKEN}"
token_dir=${TOKEN_DIR:-/out/vault-token}
ca_dir=${CLUSTER_CA_DIR:-/out/cluster-ca}
policy_file=${POLICY_FILE:-/setup/vault-bridge.hcl}
agent_uid=${AGENT_UID:-10001}
agent_gid=${AGENT_GID:-10001}
mount=pki
role=redis-enterprise

say() { printf 'setup: %s\n' "$*" >&2; }

# Hand a path to the agent's user (only possible, and only needed, when running as root).
give() {
    if [ "$(id -u)" = 0 ]; then
        chown "$agent_uid:$agent_gid" "$@"
    fi
}

# --- wait for the server (compose already waits for its healthcheck; this bounds a manual run)
tries=0
until bao status >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
        say "OpenBao at $BAO_ADDR did not answer within 60 s"
        exit 1
    fi
    sleep 1
done

# --- 1. PKI mount and root CA, once
if bao secrets list -format=json | grep -q "\"$mount/\""; then
    say "$mount/ is mounted already; keeping its CA"
else
    bao secrets enable -path="$mount" -max-lease-ttl=87600h pki >/dev/null
    bao write "$mount/config/urls" \
        issuing_certificates="$BAO_ADDR/v1/$mount/ca" \
        crl_distribution_points="$BAO_ADDR/v1/$mount/crl" >/dev/null
    bao write -field=serial_number "$mount/root/generate/internal" \
        common_name="vault-bridge example root CA" issuer_name=root \
        key_type=rsa key_bits=2048 ttl=87600h >/dev/null
    say "mounted $mount/ and generated its root CA"
fi

# --- 2. the PKI role (one setting per line: tests/unit/test_examples.py compares them with
# what vault-bridge's vault-setup would write for compose/config.toml)
bao write "$mount/roles/$role" \
    server_flag=true \
    client_flag=true \
    key_type=any \
    key_bits=0 \
    allowed_domains="*.sim.example.com,localhost,sim.example.com,syncer.sim.example.com" \
    allow_bare_domains=true \
    allow_subdomains=false \
    allow_glob_domains=true \
    allow_wildcard_certificates=true \
    allow_localhost=true \
    allow_ip_sans=true \
    max_ttl=24h \
    generate_lease=false \
    key_usage="DigitalSignature,KeyEncipherment" >/dev/null
say "wrote $mount/roles/$role"

# --- 3. the agent's policy
bao policy write vault-bridge "$policy_file" >/dev/null
say "wrote policy vault-bridge from $policy_file"

# --- 4. the agent's token: periodic (renewed by the agent with renew-self, never reaching a
# max TTL), orphan (outlives the root token), with the vault-bridge policy only. The token
# goes straight into a file the agent alone can read; it is never printed.
umask 077
mkdir -p "$token_dir"
partial="$token_dir/.token.$$"
bao token create -policy=vault-bridge -no-default-policy -orphan -period=24h \
    -display-name=vault-bridge -field=token >"$partial"
chmod 0400 "$partial"
give "$partial"
mv -f "$partial" "$token_dir/token"
chmod 0700 "$token_dir"
give "$token_dir"
say "wrote a vault-bridge token to $token_dir/token"

# --- 5. the directory the simulated cluster writes its first API certificate into
mkdir -p "$ca_dir"
chmod 0755 "$ca_dir"
give "$ca_dir"
say "prepared $ca_dir; done"
