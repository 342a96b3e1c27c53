"""Configuration: the TOML schema (pydantic), loading, and the fully resolved settings."""
