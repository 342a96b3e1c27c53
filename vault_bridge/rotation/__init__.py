"""Executes a plan through the adapters: issue, install, verify, and the follow-ups."""
