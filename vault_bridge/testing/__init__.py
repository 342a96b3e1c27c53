"""Test doubles for vault_bridge: a simulated Redis Enterprise cluster on loopback."""
