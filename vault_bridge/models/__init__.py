"""Typed values at the boundary: what the adapters make of Vault and cluster answers; and
time (``times``: ``utc_now`` and the ISO 8601 forms, defined once).
"""
