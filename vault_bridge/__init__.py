"""vault_bridge: certificates from Vault PKI for Redis Enterprise Software clusters."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vault-bridge")  # written once, in pyproject.toml
except PackageNotFoundError:  # pragma: no cover - running from a source tree not installed
    __version__ = "0+unknown"
