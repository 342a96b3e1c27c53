"""Vault's PKI engine in memory: one local CA per mount (``cryptography``), sign and issue,
revocations recorded, token upkeep counted, and failures queued per method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vault_bridge.config.durations import parse_duration
from vault_bridge.errors import VaultBridgeError, VaultPermissionError
from vault_bridge.models.certificates import IssuedCertificate, serial_hex
from vault_bridge.models.vault import MountIssuers, PkiIssuer, TokenInfo

BOTH_USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def subject(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class LocalCA:
    """A self-signed EC CA that signs leaves valid from ``now``."""

    def __init__(self, cn: str, now: datetime) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject(cn))
            .issuer_name(subject(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = to_pem(self.cert)

    def sign(
        self,
        public_key: Any,
        subject: x509.Name,
        *,
        not_before: datetime,
        lifetime: timedelta,
        sans: Sequence[x509.GeneralName] = (),
        usages: Sequence[x509.ObjectIdentifier] = BOTH_USAGES,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + lifetime)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        return builder.sign(self.key, hashes.SHA256())


class FakeVault:
    """Implements :class:`vault_bridge.adapters.ports.Vault`.

    ``fail["sign"]`` (or ``issue``, ``ca_chain``, ``revoke``, ``ensure_token``) is a queue of
    errors: each call raises the next one (``None``: that call succeeds), then calls succeed
    again. ``lifetime`` overrides
    the requested TTL (an issuer about to expire); ``usages`` the extended key usages.
    """

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.cas: dict[str, LocalCA] = {}
        self.fail: dict[str, list[VaultBridgeError | None]] = {}
        self.calls: list[str] = []
        self.revoked: list[tuple[str, str]] = []  # (mount, serial or "pem")
        self.lifetime: timedelta | None = None
        self.usages: Sequence[x509.ObjectIdentifier] = BOTH_USAGES
        self.logins = 0
        self.issuer_refs: list[str | None] = []  # the issuer_ref of each sign/issue
        self.next_accessor: str | None = None  # the next ensure_token logs in anew
        # A 403 from the queue came from a rejected token (expired, revoked), not the policy:
        # the next ensure_token looks it up and logs in anew.
        self.token_rejected = False
        self._info: TokenInfo | None = None

    def ca(self, mount: str) -> LocalCA:
        if mount not in self.cas:
            self.cas[mount] = LocalCA(f"Fake CA {mount}", self.clock())
        return self.cas[mount]

    def _call(self, method: str) -> None:
        self.calls.append(method)
        queue = self.fail.get(method)
        error = queue.pop(0) if queue else None
        if error is not None:
            if isinstance(error, VaultPermissionError) and self.token_rejected:
                self.next_accessor = f"accessor-{self.logins + 1}"
            raise error

    # -- VaultAuth ---------------------------------------------------------------------------

    @property
    def token_info(self) -> TokenInfo | None:
        return self._info

    @property
    def token_expires_at(self) -> datetime | None:
        return self._info.expire_time if self._info else None

    def ensure_token(self) -> TokenInfo:
        self._call("ensure_token")
        if self._info is None or self.next_accessor is not None:
            accessor = self.next_accessor or f"accessor-{self.logins + 1}"
            self.next_accessor = None
            self.logins += 1
            self._info = TokenInfo(
                accessor, 3600, True, self.clock() + timedelta(hours=1), ("vault-bridge",)
            )
        return self._info

    # -- VaultPki ----------------------------------------------------------------------------

    def _leaf(
        self,
        mount: str,
        public_key: Any,
        subject: x509.Name,
        sans: Sequence[x509.GeneralName],
        ttl: timedelta | str | None,
    ) -> dict[str, Any]:
        ca = self.ca(mount)
        requested = ttl if isinstance(ttl, timedelta) else parse_duration(ttl or "720h")
        lifetime = self.lifetime or requested
        cert = ca.sign(
            public_key,
            subject,
            not_before=self.clock() - timedelta(seconds=30),
            lifetime=lifetime,
            sans=sans,
            usages=self.usages,
        )
        return {
            "certificate": to_pem(cert),
            "issuing_ca": ca.pem,
            "ca_chain": [ca.pem],
            "serial_number": serial_hex(cert),
        }

    def sign(
        self,
        mount: str,
        role: str,
        csr_pem: str,
        *,
        common_name: str,
        alt_names: Sequence[str] = (),
        ip_sans: Sequence[str] = (),
        ttl: timedelta | str | None = None,
        issuer_ref: str | None = None,
    ) -> dict[str, Any]:
        """POST: /{mount}/sign/{role} (subject and SANs from the CSR, as Vault's defaults);
        ``issuer_ref`` is recorded, the mount's one CA signs."""
        self.issuer_refs.append(issuer_ref)
        self._call("sign")
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        try:
            sans: list[x509.GeneralName] = list(
                csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            )
        except x509.ExtensionNotFound:
            sans = []
        return self._leaf(mount, csr.public_key(), csr.subject, sans, ttl)

    def issue(
        self,
        mount: str,
        role: str,
        *,
        common_name: str,
        alt_names: Sequence[str] = (),
        ip_sans: Sequence[str] = (),
        ttl: timedelta | str | None = None,
        issuer_ref: str | None = None,
    ) -> IssuedCertificate:
        """POST: /{mount}/issue/{role} (the key made here, returned with the certificate)."""
        self.issuer_refs.append(issuer_ref)
        self._call("issue")
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.DNSName(n) for n in alt_names]
        data = self._leaf(mount, key.public_key(), subject(common_name), sans, ttl)
        data["private_key"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        return IssuedCertificate.from_vault(data)

    def ca_chain(self, mount: str) -> list[str]:
        """GET: /{mount}/cert/ca_chain"""
        self._call("ca_chain")
        return [self.ca(mount).pem]

    def mount_issuers(self, mount: str) -> MountIssuers:
        """LIST: /{mount}/issuers and each GET /{mount}/issuer/{id}/json: the one CA."""
        self._call("mount_issuers")
        pem = self.ca(mount).pem
        issuer_id = f"issuer-{mount}"
        issuer = PkiIssuer.from_vault(mount, {"certificate": pem, "issuer_id": issuer_id}, [pem])
        return MountIssuers(mount, (issuer,), issuer_id)

    def certificate_revoked(self, mount: str, serial: str) -> bool | None:
        """GET: /{mount}/cert/{serial} (revoked when ``revoke`` was called for it)."""
        self._call("certificate_revoked")
        return (mount, serial) in self.revoked

    def revoke(
        self, mount: str, *, serial: str | None = None, certificate: str | None = None
    ) -> None:
        """POST: /{mount}/revoke"""
        if (serial is None) == (certificate is None):
            raise ValueError("revoke needs exactly one of serial= or certificate=")
        self._call("revoke")
        self.revoked.append((mount, serial if serial is not None else "pem"))
