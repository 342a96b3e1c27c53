"""The one adapter for Vault (hvac): :class:`~vault_bridge.adapters.vault.client.VaultClient`,
made of the HTTP transport and its error table (``transport``), login and token upkeep
(``auth``) and the PKI calls (``pki``).
"""
