"""Bounds of ``[agent] concurrency``, shared by the configuration and the CLI's option (this
module imports nothing, so the CLI can name them without loading the configuration schema)."""

DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 64
