"""In-memory fakes of the ports (:mod:`vault_bridge.adapters.ports`): Vault PKI with a local CA,
a cluster that keeps what is installed and fails when told to, a clock whose sleep advances
it. ``tests/fakes/conformance.py`` has mypy check each against its Protocol."""
