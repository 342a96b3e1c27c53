"""The one adapter for Vault (hvac): authentication, token upkeep and the PKI calls."""
