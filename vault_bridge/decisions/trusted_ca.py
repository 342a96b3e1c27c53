"""Pure: what a cluster's ``mtls_trusted_ca`` must hold.

The bundle trusts every issuer of the PKI mount that issues the client certificates (each
issuer's certificate and its chain), so that during a CA change both the old and the new CA are
trusted. A CA the mount no longer has stays in the bundle while a certificate in use (the one
vault_bridge logs in with) still chains to it: the bundle never drops what a login needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from vault_bridge.models.certificates import fingerprint, load_leaf, split_pem_chain


@dataclass(frozen=True)
class TrustedCaPlan:
    """The bundle to install (PEMs in a stable order) and whether it differs from the
    installed one; ``kept``: CAs kept only because a certificate in use needs them."""

    pems: tuple[str, ...]
    change: bool
    kept: tuple[str, ...] = ()

    @property
    def bundle(self) -> str:
        return "".join(p.strip() + "\n" for p in self.pems)


def _unique(pems: Iterable[str]) -> list[tuple[str, x509.Certificate]]:
    out: list[tuple[str, x509.Certificate]] = []
    seen: set[str] = set()
    for pem in pems:
        for block in split_pem_chain(pem):
            cert = load_leaf(block)
            digest = fingerprint(cert)
            if digest not in seen:
                seen.add(digest)
                out.append((block, cert))
    return out


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def chain_of(leaf_pem: str, candidates: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The CAs among ``candidates`` that ``leaf_pem`` chains to, issuer first."""
    path: list[x509.Certificate] = []
    current = load_leaf(leaf_pem)
    while True:
        parent = next(
            (c for c in candidates if c not in path and c != current and _signed_by(current, c)),
            None,
        )
        if parent is None:
            return path
        path.append(parent)
        if parent.issuer == parent.subject:
            return path
        current = parent


def plan_trusted_ca(
    mount_pems: Sequence[str],
    installed_pem: str | None,
    in_use: Sequence[str] = (),
) -> TrustedCaPlan:
    """The bundle for ``mtls_trusted_ca``.

    ``mount_pems``: every issuer certificate and chain of the mount (from its issuer list);
    ``installed_pem``: the bundle the cluster holds now; ``in_use``: leaf PEMs of certificates
    in use that must keep working (the login certificate).
    """
    wanted = _unique(mount_pems)
    if not wanted:
        raise ValueError("the mount has no CA certificate to trust")
    digests = {fingerprint(cert) for _, cert in wanted}
    installed = _unique([installed_pem]) if installed_pem else []
    kept: list[str] = []
    installed_certs = [cert for _, cert in installed]
    for leaf in in_use:
        for ca in chain_of(leaf, installed_certs):
            digest = fingerprint(ca)
            if digest not in digests:
                digests.add(digest)
                pem = next(p for p, c in installed if c is ca)
                wanted.append((pem, ca))
                kept.append(pem)
    change = {fingerprint(c) for _, c in installed} != digests
    return TrustedCaPlan(tuple(p for p, _ in wanted), change, tuple(kept))
