"""The state directory: records, atomic writes and the lock, and the intent journal."""
