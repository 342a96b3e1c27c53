"""vault_bridge: certificates from Vault PKI for Redis Enterprise Software clusters."""

__version__ = "0.1.0"
