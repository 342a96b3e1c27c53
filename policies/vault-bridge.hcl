# vault-bridge: least-privilege policy for examples/config.toml.
# <mount>/cert/ca_chain, LIST <mount>/issuers, <mount>/issuer/<id>/json and
# <mount>/cert/<serial> need no policy (unauthenticated PKI paths).
# Nothing under sys/, no other mount, role or secret.

# sign a CSR made here for east/cm, east/api, east/proxy, east/syncer, east/metrics_exporter
path "pki_int/sign/redis-enterprise" {
  capabilities = ["update"]
}

# validate --connect checks the role's flags before anything is issued
path "pki_int/roles/redis-enterprise" {
  capabilities = ["read"]
}

# revoke superseded certificates after the grace period ([agent] revoke_superseded)
path "pki_int/revoke" {
  capabilities = ["update"]
}

# keep the agent's own token alive
path "auth/token/renew-self" {
  capabilities = ["update"]
}

# read the agent's own token TTL
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
