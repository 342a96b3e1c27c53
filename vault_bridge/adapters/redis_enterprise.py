"""The one adapter for a Redis Enterprise cluster's REST API (a ``requests.Session``).

Each public method is one endpoint; its docstring names the verb and path. JSON answers become
typed values here. Trust: the API's TLS certificate is always verified, against ``ca_file``
and the Vault CA chain once vault_bridge manages the ``api`` certificate, or against a pinned
SHA-256 fingerprint; ``insecure_skip_verify`` turns it off (with a warning at every start).
"""

from vault_bridge.adapters.rest.access import AccessEndpoints
from vault_bridge.adapters.rest.certificates import CertificateEndpoints
from vault_bridge.adapters.rest.databases import DatabaseEndpoints
from vault_bridge.adapters.rest.ocsp import OcspEndpoints


class ClusterClient(AccessEndpoints, CertificateEndpoints, DatabaseEndpoints, OcspEndpoints):
    """REST client of one cluster. ``sleep`` is injected so retries never block tests.

    The transport is :class:`vault_bridge.adapters.rest.transport.ClusterTransport`; each
    endpoint group is in its own module of :mod:`vault_bridge.adapters.rest`."""
