"""One adapter per outside system: Vault (``vault``), the Redis Enterprise REST API
(``redis_enterprise``), TLS probing (``tls_probe``), crdb-cli / docker exec (``crdb_runners``);
and the file lock both the state directory and the follow-ups take (``file_lock``);
``ports`` holds the Protocols the core takes instead of the concrete adapters.
"""
