"""Pure: OCSP stapling and the proxy certificate.

The cluster asks the responder the proxy certificate names in its Authority Information Access
(``GET /v1/ocsp`` shows it, read-only). With stapling on, a proxy certificate that names no
responder would be stapled as UNKNOWN, which breaks client handshakes: it must not be
installed. ``ocsp_responder = "vault"`` wants the Vault mount's own endpoint there
(``<vault>/v1/<mount>/ocsp``, from the mount's ``config/urls`` ``ocsp_servers``).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from vault_bridge.models.certificates import load_leaf


def vault_ocsp_url(vault_address: str, mount: str) -> str:
    """The OCSP endpoint of a Vault PKI mount."""
    return f"{vault_address.rstrip('/')}/v1/{mount.strip('/')}/ocsp"


def ocsp_urls(pem: str) -> list[str]:
    """The OCSP responder URLs in a certificate's Authority Information Access."""
    try:
        aia = load_leaf(pem).extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except x509.ExtensionNotFound:
        return []
    return [
        str(item.access_location.value)
        for item in aia.value
        if item.access_method == AuthorityInformationAccessOID.OCSP
    ]


def refuse_proxy(pem: str, *, stapling_on: bool) -> str | None:
    """Why a new proxy certificate must not be installed (None: it may)."""
    if stapling_on and not ocsp_urls(pem):
        return (
            "OCSP stapling is on and the new proxy certificate names no OCSP responder: its "
            "status would be UNKNOWN and client handshakes would fail (set ocsp_servers in the "
            "mount's config/urls)"
        )
    return None
