"""Typed values at the boundary: what the adapters make of Vault and cluster answers."""
