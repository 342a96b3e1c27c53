"""Pure: how an install request is built and sent to a cluster.

The body of one item (:class:`CertUpload`), and which endpoint carries which certificates
(:func:`install_batches`): ``PUT /v1/cluster/certificates`` (bulk, 7.22.2+) with internode
certificates in a request of their own, or ``PUT /v1/cluster/update_cert`` one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vault_bridge.models.certificates import CertificateInfo, CertName, IssuedCertificate
from vault_bridge.models.cluster import BULK_MIN_VERSION


@dataclass(frozen=True)
class CertUpload:
    """One item of an install request. The key is never part of ``repr``."""

    name: str
    certificate: str
    key: str | None = field(repr=False)  # None: a CA bundle (mtls_trusted_ca) takes no key

    @classmethod
    def of(cls, name: str, issued: IssuedCertificate) -> CertUpload:
        """The item for ``issued``: the leaf with its intermediates, and the key."""
        return cls(name, issued.chain_pem, issued.private_key)

    @classmethod
    def with_root(
        cls, name: str, issued: IssuedCertificate, mount_chain: Sequence[str] = ()
    ) -> CertUpload:
        """The item with the whole chain, the self-signed root included: the leaf, Vault's
        ``ca_chain`` as given, then the roots of ``mount_chain`` (the mount's CA chain) that
        are not in it yet."""
        parts = [issued.certificate.strip() + "\n", *(p.strip() + "\n" for p in issued.ca_chain)]
        for pem in mount_chain:
            block = pem.strip() + "\n"
            if block not in parts and CertificateInfo.from_pem(pem).self_signed:
                parts.append(block)
        return cls(name, "".join(parts), issued.private_key)

    def as_json(self) -> dict[str, str]:
        item = {"name": self.name, "certificate": self.certificate}
        if self.key is not None:
            item["key"] = self.key
        return item


@dataclass(frozen=True)
class InstallBatch:
    """Certificates sent to a cluster together."""

    endpoint: str  # "bulk" (PUT /v1/cluster/certificates) or "update_cert"
    names: tuple[str, ...]


def install_batches(names: Sequence[str], version: tuple[int, ...]) -> list[InstallBatch]:
    """How to send ``names``: one bulk request for the ordinary certificates and one for the
    internode ones on 7.22.2+, else one ``update_cert`` request per certificate."""
    if version >= BULK_MIN_VERSION:
        internode = tuple(n for n in names if CertName(n).internode)
        ordinary = tuple(n for n in names if not CertName(n).internode)
        return [InstallBatch("bulk", group) for group in (ordinary, internode) if group]
    return [InstallBatch("update_cert", (n,)) for n in names]
