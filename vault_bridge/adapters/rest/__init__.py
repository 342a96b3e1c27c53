"""The Redis Enterprise REST client's parts: transport, trust, error shapes and the endpoint
groups, composed into :class:`vault_bridge.adapters.redis_enterprise.ClusterClient`."""
