"""Pure decisions: renewal and classification, install batches, schedule and backoff,
the follow-up plan and the rules of its window, the Vault policy and the token rule. No I/O,
no clock reads: the current time and every fact are passed in (enforced by import-linter).
"""
