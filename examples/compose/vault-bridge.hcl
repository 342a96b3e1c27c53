# vault-bridge: least-privilege policy for examples/compose/config.toml.
# <mount>/cert/ca_chain, LIST <mount>/issuers, <mount>/issuer/<id>/json and
# <mount>/cert/<serial> need no policy (unauthenticated PKI paths).
# Nothing under sys/, no other mount, role or secret.

# sign a CSR made here for sim/cm, sim/api, sim/proxy, sim/syncer, sim/metrics_exporter
path "pki/sign/redis-enterprise" {
  capabilities = ["update"]
}

# validate --connect checks the role's flags before anything is issued
path "pki/roles/redis-enterprise" {
  capabilities = ["read"]
}

# revoke superseded certificates after the grace period ([agent] revoke_superseded)
path "pki/revoke" {
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
