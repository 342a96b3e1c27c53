"""vault_bridge: certificates from Vault PKI for Redis Enterprise Software clusters."""

from typing import Any


def __getattr__(name: str) -> Any:
    # The version is looked up on first use only: importing the package stays cheap.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("vault-bridge")  # written once, in pyproject.toml
        except PackageNotFoundError:  # pragma: no cover - a source tree not installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
