"""The vault-bridge lab: what the tests and the demo run against, never the runtime.

A simulated Redis Enterprise cluster built from the vendor's REST API pages (``simulator``),
an OpenBao dev-server runner (``openbao``), a ``crdb-cli`` stand-in (``crdb_cli``), the lab
configuration (``lab``) and ``vault-bridge demo`` (``demo``).
"""
