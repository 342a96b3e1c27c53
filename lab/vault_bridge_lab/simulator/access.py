"""Who may call a simulated cluster's REST API: users (password or certificate), Basic
authentication, mutual TLS on the REST listener, and the writable cluster settings behind them.

From the vendor pages ``security/certificates/certificate-based-authentication.md`` and
``security/access-control/disable-basic-authentication.md``:

- ``mtls_certificate_authentication`` (with ``mtls_trusted_ca`` installed) makes the REST
  listener ask for a client certificate; one that does not chain to ``mtls_trusted_ca`` is
  refused in the handshake;
- a verified client certificate logs in the user whose ``auth_method`` is ``certificate`` and
  whose ``certificate_subject_line`` equals the certificate's RFC 2253 subject, after the
  optional subject validation (``mtls_client_cert_subject_validation_type``);
- ``control_plane_basic_authentication`` (8.2+) false: Basic credentials answer 401.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from vault_bridge_lab.simulator.names import Version
from vault_bridge_lab.simulator.routing import ApiError, invalid_request

BASIC_AUTH_OFF_MIN_VERSION: Final[Version] = (8, 2)
#: From 8.2 an ECDSA certificate for these names is refused at upload when the ciphers that
#: serve it are RSA only (release notes 8.2.0-25): control plane for cm/api/metrics_exporter,
#: data plane for proxy.
ECDSA_CHECK_MIN_VERSION: Final[Version] = (8, 2)
CIPHER_SETTING_OF: Final[Mapping[str, str]] = {
    "api": "control_cipher_suites",
    "cm": "control_cipher_suites",
    "metrics_exporter": "control_cipher_suites",
    "proxy": "data_cipher_list",
}
_DEFAULT_TLS12: Final = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
)
CIPHER_KEYS: Final = (
    "control_cipher_suites",
    "data_cipher_list",
    "control_cipher_suites_tls_1_3",
    "data_cipher_suites_tls_1_3",
)
SUBJECT_VALIDATION_TYPES: Final = ("disabled", "san_cn", "full_subject")
_SUBJECT_KEYS: Final = {"CN", "OU", "O", "C", "L", "ST"}


@dataclass(frozen=True)
class User:
    name: str
    password: str = field(repr=False)
    role: str
    auth_method: str = "regular"  # or "certificate"
    certificate_subject_line: str = ""


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid_request(f"{key} must be a boolean")
    return value


def _subjects(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise invalid_request("mtls_authorized_subjects must be a list of objects")
    for item in value:
        if not isinstance(item, dict) or not item or set(item) - _SUBJECT_KEYS:
            raise invalid_request(
                f"mtls_authorized_subjects items take the keys {', '.join(sorted(_SUBJECT_KEYS))}"
            )
    return [dict(item) for item in value]


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


class AccessControl:
    """Users, credentials and the access settings of one simulated cluster."""

    def __init__(self, users: Mapping[str, User]) -> None:
        self._lock = threading.Lock()
        self._users = dict(users)
        self.settings: dict[str, Any] = {
            "mtls_certificate_authentication": False,
            "mtls_client_cert_subject_validation_type": "disabled",
            "mtls_authorized_subjects": [],
            "control_plane_basic_authentication": True,
            "control_cipher_suites": _DEFAULT_TLS12,
            "data_cipher_list": _DEFAULT_TLS12,
            "control_cipher_suites_tls_1_3": "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
            "data_cipher_suites_tls_1_3": "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
        }

    @property
    def mtls_on(self) -> bool:
        return bool(self.settings["mtls_certificate_authentication"])

    def add_user(self, user: User) -> None:
        with self._lock:
            if user.name in self._users:
                raise ApiError(409, "user_exists", f"a user named {user.name!r} exists")
            self._users[user.name] = user

    def users(self) -> list[User]:
        with self._lock:
            return list(self._users.values())

    # ---- PUT /v1/cluster (the access settings)

    def update(self, body: Mapping[str, Any], version: Version) -> dict[str, Any]:
        """Validate and apply the access keys of a ``PUT /v1/cluster`` body; the changes."""
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key in ("mtls_certificate_authentication", "control_plane_basic_authentication"):
                changes[key] = _bool(key, value)
            elif key == "mtls_client_cert_subject_validation_type":
                if value not in SUBJECT_VALIDATION_TYPES:
                    raise invalid_request(
                        f"{key} must be one of {', '.join(SUBJECT_VALIDATION_TYPES)}"
                    )
                changes[key] = value
            elif key == "mtls_authorized_subjects":
                changes[key] = _subjects(value)
            elif key in CIPHER_KEYS:
                if not isinstance(value, str) or not value.strip():
                    raise invalid_request(f"{key} must be a non-empty cipher string")
                changes[key] = value
        if "control_plane_basic_authentication" in changes and version < BASIC_AUTH_OFF_MIN_VERSION:
            raise invalid_request(
                "control_plane_basic_authentication needs Redis Enterprise 8.2 or later"
            )
        with self._lock:
            self.settings.update(changes)
        return changes

    def rsa_only(self, name: str) -> bool:
        """Whether the TLS 1.2 ciphers serving certificate ``name`` are all RSA ones."""
        setting = CIPHER_SETTING_OF.get(name)
        if setting is None:
            return False
        entries = [e for e in str(self.settings[setting]).split(":") if e and e[0] not in "!-"]
        return bool(entries) and all("RSA" in e.upper() for e in entries)

    # ---- authentication

    def authenticate(self, authorization: str | None, peer: x509.Certificate | None) -> User | None:
        """The user a request authenticates as, or None (401).

        ``peer``: the client certificate the TLS layer verified against ``mtls_trusted_ca``.
        """
        if peer is not None and self.mtls_on:
            return self._by_certificate(peer)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "basic" or not self.settings["control_plane_basic_authentication"]:
            return None
        try:
            username, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        with self._lock:
            user = self._users.get(username)
        if user is None or user.auth_method != "regular":
            return None
        if not hmac.compare_digest(user.password.encode(), password.encode()):
            return None
        return user

    def _by_certificate(self, peer: x509.Certificate) -> User | None:
        if not self._subject_allowed(peer):
            return None
        subject = peer.subject.rfc4514_string()
        with self._lock:
            for user in self._users.values():
                if user.auth_method == "certificate" and user.certificate_subject_line == subject:
                    return user
        return None

    def _subject_allowed(self, peer: x509.Certificate) -> bool:
        kind = self.settings["mtls_client_cert_subject_validation_type"]
        allowed: list[dict[str, Any]] = self.settings["mtls_authorized_subjects"]
        if kind == "disabled":
            return True
        cns = _attr(peer, NameOID.COMMON_NAME)
        if kind == "san_cn":
            try:
                sans = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                names = [*cns, *sans.get_values_for_type(x509.DNSName)]
            except x509.ExtensionNotFound:
                names = cns
            return any(item.get("CN") in names for item in allowed)
        fields = {
            "CN": NameOID.COMMON_NAME,
            "O": NameOID.ORGANIZATION_NAME,
            "C": NameOID.COUNTRY_NAME,
            "L": NameOID.LOCALITY_NAME,
            "ST": NameOID.STATE_OR_PROVINCE_NAME,
        }
        for item in allowed:
            if all(
                _attr(peer, oid) == ([item[k]] if k in item else []) for k, oid in fields.items()
            ) and sorted(_attr(peer, NameOID.ORGANIZATIONAL_UNIT_NAME)) == sorted(
                item.get("OU", [])
            ):
                return True
        return False

    # ---- POST /v1/users

    def create_user(self, body: Any) -> User:
        """A user from a ``POST /v1/users`` body (the keys the simulator models)."""
        if not isinstance(body, dict):
            raise invalid_request("the body must be a JSON object")
        known = {"name", "email", "password", "role", "auth_method", "certificate_subject_line"}
        extra = sorted(set(body) - known)
        if extra:
            raise invalid_request(f"unknown key(s): {', '.join(extra)}")
        name = body.get("email") or body.get("name")
        role = body.get("role")
        method = body.get("auth_method", "regular")
        if not isinstance(name, str) or not name or not isinstance(role, str) or not role:
            raise invalid_request("'email' (or 'name') and 'role' are required")
        if method == "certificate":
            subject = body.get("certificate_subject_line")
            if not isinstance(subject, str) or not subject.startswith("CN="):
                raise invalid_request(
                    "certificate_subject_line is required: an RFC 2253 subject starting with CN="
                )
            if ", " in subject:
                raise invalid_request("certificate_subject_line has a space after a comma")
            if "password" in body:
                raise invalid_request("a certificate user takes no password")
            user = User(name, "", role, "certificate", subject)
        elif method == "regular":
            password = body.get("password")
            if not isinstance(password, str) or not password:
                raise invalid_request("'password' is required for auth_method 'regular'")
            user = User(name, password, role)
        else:
            raise invalid_request(f"auth_method {method!r} is not supported here")
        self.add_user(user)
        return user
