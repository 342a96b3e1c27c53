"""VaultClient against a real OpenBao dev server (TLS): auth methods, PKI, token upkeep, errors.

Nothing here mocks Vault. Kubernetes auth talks to a stand-in TokenReview endpoint on loopback.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup

from vault_bridge.adapters.vault.client import (
    AppRoleAuth,
    AuthMethod,
    CertAuth,
    KubernetesAuth,
    TokenAuth,
    VaultClient,
)
from vault_bridge.errors import ConfigError, VaultError, VaultPermissionError, VaultUnavailableError
from vault_bridge.models.certificates import IssuedCertificate

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# -- small helpers ---------------------------------------------------------------------------


class FakeClock:
    """An injectable clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class MiniCA:
    """A throwaway CA (cryptography only) for client certificates and the stand-in server."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def make(cls, cn: str) -> MiniCA:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def pem(self) -> str:
        return _cert_pem(self.cert)

    def leaf(self, cn: str, *, server: bool) -> tuple[str, str]:
        """(certificate PEM, key PEM) for a loopback server or a TLS client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    cn: str,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> str:
    """A CSR as the sign mode makes it: the SANs are in the CSR (roles use_csr_sans by default)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(cn))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in (cn, *dns)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(openbao: OpenBaoServer) -> Any:
    return openbao.client()


@pytest.fixture(scope="module")
def policy(root: Any, pki: PkiSetup) -> str:
    """A policy that can do what vault_bridge does on the test's issuing mount, nothing more."""
    m = pki.issuing_mount
    name = f"vault-bridge-{m}"
    root.sys.create_or_update_policy(
        name=name,
        policy=f"""
path "{m}/sign/*"   {{ capabilities = ["update"] }}
path "{m}/issue/*"  {{ capabilities = ["update"] }}
path "{m}/roles/*"  {{ capabilities = ["read"] }}
path "{m}/cert/*"   {{ capabilities = ["read"] }}
path "{m}/revoke"   {{ capabilities = ["update"] }}
""",
    )
    return name


@pytest.fixture
def make_client(openbao: OpenBaoServer) -> Iterator[Callable[..., VaultClient]]:
    """Build VaultClients pinned to the dev CA; all are closed after the test."""
    made: list[VaultClient] = []

    def make(auth: AuthMethod, **kw: Any) -> VaultClient:
        kw.setdefault("ca_cert", openbao.ca_cert)
        client = VaultClient(openbao.address, auth=auth, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def token_file(root: Any, policy: str, tmp_path: Path) -> Callable[..., Path]:
    """Write a fresh token with the test policy into a file (ttl configurable)."""

    def make(ttl: str = "1h", name: str = "token") -> Path:
        auth = root.auth.token.create(policies=[policy], ttl=ttl, renewable=True)["auth"]
        return _write(tmp_path / name, auth["client_token"] + "\n")

    return make


def _accessor_of(path: Path, root: Any) -> str:
    return str(root.auth.token.lookup(path.read_text().strip())["data"]["accessor"])


# -- token auth ------------------------------------------------------------------------------


def test_token_auth_from_file_rereads_a_changed_file(
    make_client: Callable[..., VaultClient],
    token_file: Callable[..., Path],
    root: Any,
    policy: str,
    pki: PkiSetup,
) -> None:
    path = token_file()
    client = make_client(TokenAuth(token_file=path))
    info = client.login()
    assert info.accessor == _accessor_of(path, root)
    assert policy in info.policies
    assert info.renewable and 3500 < info.ttl_seconds <= 3600
    assert client.read_role(pki.issuing_mount, "redis").name == "redis"

    before = client.request_count
    assert client.ensure_token() == info  # unchanged file, fresh token: nothing to do
    assert client.request_count == before

    token_file(name="token.new").replace(path)  # rotated by whoever provides it
    new_info = client.ensure_token()
    assert new_info.accessor == _accessor_of(path, root) != info.accessor


def test_token_auth_from_env(
    make_client: Callable[..., VaultClient],
    token_file: Callable[..., Path],
    root: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = token_file(name="a"), token_file(name="b")
    monkeypatch.setenv("VAULT_TOKEN", first.read_text().strip())
    client = make_client(TokenAuth())
    assert client.login().accessor == _accessor_of(first, root)
    monkeypatch.setenv("VAULT_TOKEN", second.read_text().strip())
    assert client.ensure_token().accessor == _accessor_of(second, root)

    monkeypatch.delenv("VAULT_TOKEN")
    with pytest.raises(ConfigError, match="VAULT_TOKEN"):
        make_client(TokenAuth()).login()


def test_rejected_token_names_its_source_not_its_value(
    make_client: Callable[..., VaultClient], tmp_path: Path
) -> None:
    secret = "s.not-a-real-token-" + uuid.uuid4().hex
    path = _write(tmp_path / "token", secret)
    client = make_client(TokenAuth(token_file=path))
    with pytest.raises(VaultPermissionError) as err:
        client.login()
    assert err.value.status == 403
    assert str(path) in str(err.value)
    assert "rejected" in str(err.value)
    assert secret not in str(err.value) and secret not in repr(err.value)


# -- AppRole ---------------------------------------------------------------------------------


@dataclass
class AppRole:
    mount: str
    name: str
    role_id: str
    root: Any
    secret_ids: list[str] = field(default_factory=list)

    def new_secret_id(self) -> str:
        data = self.root.auth.approle.generate_secret_id(self.name, mount_point=self.mount)
        self.secret_ids.append(data["data"]["secret_id"])
        return self.secret_ids[-1]


@pytest.fixture
def approle(root: Any, policy: str) -> Callable[..., AppRole]:
    def make(**role_params: Any) -> AppRole:
        mount = f"approle-{uuid.uuid4().hex[:8]}"
        root.sys.enable_auth_method("approle", path=mount)
        params = {"token_policies": [policy], "token_ttl": "1h", **role_params}
        root.auth.approle.create_or_update_approle("vault-bridge", mount_point=mount, **params)
        role_id = root.auth.approle.read_role_id("vault-bridge", mount_point=mount)["data"]
        return AppRole(mount, "vault-bridge", role_id["role_id"], root)

    return make


def test_approle_reads_the_secret_id_file_at_each_login(
    make_client: Callable[..., VaultClient],
    approle: Callable[..., AppRole],
    policy: str,
    pki: PkiSetup,
    tmp_path: Path,
) -> None:
    role = approle(secret_id_num_uses=1)  # each secret ID works once
    sid_file = _write(tmp_path / "secret-id", role.new_secret_id())
    client = make_client(AppRoleAuth(role.role_id, sid_file, mount=role.mount))
    first = client.login()
    assert policy in first.policies
    assert first.ttl_seconds == 3600 and first.renewable
    assert client.read_role(pki.issuing_mount, "redis").allow_any_name

    with pytest.raises(VaultError) as err:  # the used-up secret ID is still in the file
        client.login()
    assert err.value.status == 400
    assert role.secret_ids[0] not in str(err.value)

    _write(sid_file, role.new_secret_id())  # the file is re-read: the new one is used
    second = client.login()
    assert second.accessor != first.accessor


def test_missing_secret_id_file_is_a_config_error(
    make_client: Callable[..., VaultClient], approle: Callable[..., AppRole], tmp_path: Path
) -> None:
    role = approle()
    client = make_client(AppRoleAuth(role.role_id, tmp_path / "absent", mount=role.mount))
    with pytest.raises(ConfigError, match="absent"):
        client.login()


def test_secrets_never_reach_the_logs(
    make_client: Callable[..., VaultClient],
    approle: Callable[..., AppRole],
    pki: PkiSetup,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    role = approle()
    secret_id = role.new_secret_id()
    client = make_client(AppRoleAuth(role.role_id, _write(tmp_path / "sid", secret_id), role.mount))
    client.login()
    issued = client.issue(pki.issuing_mount, "redis-ec", common_name="logs.example.com")
    token = client._hvac.token
    assert token and issued.private_key
    assert "logged in to Vault" in caplog.text
    for secret in (secret_id, token, issued.private_key.strip().splitlines()[1]):
        assert secret not in caplog.text
    assert token not in repr(client) and issued.private_key not in repr(issued)


# -- cert auth -------------------------------------------------------------------------------


def test_cert_auth_with_a_client_certificate(
    make_client: Callable[..., VaultClient],
    root: Any,
    policy: str,
    pki: PkiSetup,
    tmp_path: Path,
) -> None:
    client_ca = MiniCA.make("vault-bridge clients")
    mount = f"cert-{uuid.uuid4().hex[:8]}"
    root.sys.enable_auth_method("cert", path=mount)
    root.write_data(
        f"auth/{mount}/certs/vault-bridge",
        data={"certificate": client_ca.pem, "token_policies": [policy], "token_ttl": "10m"},
    )
    cert_pem, key_pem = client_ca.leaf("vault-bridge-agent", server=False)
    cert_file, key_file = _write(tmp_path / "c.pem", cert_pem), _write(tmp_path / "c.key", key_pem)

    client = make_client(CertAuth(cert_file, key_file, name="vault-bridge", mount=mount))
    info = client.login()
    assert policy in info.policies and info.ttl_seconds == 600
    assert client.read_role(pki.issuing_mount, "redis").name == "redis"

    other_cert, other_key = MiniCA.make("strangers").leaf("intruder", server=False)
    stranger = make_client(
        CertAuth(
            _write(tmp_path / "o.pem", other_cert),
            _write(tmp_path / "o.key", other_key),
            name="vault-bridge",
            mount=mount,
        )
    )
    with pytest.raises(VaultError) as err:
        stranger.login()
    assert err.value.status in (400, 403)
    assert f"auth/{mount}/login" in (err.value.url or "")


# -- kubernetes auth -------------------------------------------------------------------------


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt(key: ec.EllipticCurvePrivateKey, claims: dict[str, Any]) -> str:
    """An ES256 JWT shaped like a projected service-account token."""
    header = _b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "test"}).encode())
    body = _b64url(json.dumps(claims).encode())
    der = key.sign(f"{header}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{header}.{body}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class TokenReviewServer:
    """A stand-in for the Kubernetes API: POST /apis/authentication.k8s.io/v1/tokenreviews.

    Answers ``authenticated`` for the JWTs it knows and records each review it gets.
    """

    def __init__(self, ca: MiniCA, known: dict[str, tuple[str, str, str]]) -> None:
        self.ca = ca
        self.known = known  # jwt -> (namespace, service account, uid)
        self.reviews: list[dict[str, Any]] = []
        cert_pem, key_pem = ca.leaf("kubernetes", server=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            _write(Path(tmp) / "c.pem", cert_pem)
            _write(Path(tmp) / "k.pem", key_pem)
            context.load_cert_chain(Path(tmp) / "c.pem", Path(tmp) / "k.pem")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                review = json.loads(self.rfile.read(length) or b"{}")
                bearer = self.headers.get("Authorization", "")
                outer.reviews.append({"path": self.path, "review": review, "bearer": bearer})
                if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
                    self._send(404, {"kind": "Status", "status": "Failure", "code": 404})
                    return
                token = review.get("spec", {}).get("token", "")
                status: dict[str, Any] = {"authenticated": False}
                if token in outer.known:
                    ns, sa, uid = outer.known[token]
                    status = {
                        "authenticated": True,
                        "user": {"username": f"system:serviceaccount:{ns}:{sa}", "uid": uid},
                        "audiences": review.get("spec", {}).get("audiences") or [],
                    }
                self._send(
                    201,
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "spec": review.get("spec", {}),
                        "status": status,
                    },
                )

            def _send(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> TokenReviewServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def test_kubernetes_auth_against_a_stand_in_token_review(
    make_client: Callable[..., VaultClient],
    root: Any,
    policy: str,
    pki: PkiSetup,
    tmp_path: Path,
) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    uid = str(uuid.uuid4())

    def claims(sa: str, sa_uid: str) -> dict[str, Any]:
        return {
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": f"system:serviceaccount:redis:{sa}",
            "aud": ["vault"],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "kubernetes.io": {
                "namespace": "redis",
                "serviceaccount": {"name": sa, "uid": sa_uid},
            },
        }

    good = _jwt(signer, claims("vault-bridge", uid))
    unknown = _jwt(signer, claims("vault-bridge", str(uuid.uuid4())))  # right shape, not known
    api_ca = MiniCA.make("stand-in kubernetes CA")
    with TokenReviewServer(api_ca, {good: ("redis", "vault-bridge", uid)}) as k8s:
        mount = f"kubernetes-{uuid.uuid4().hex[:8]}"
        root.sys.enable_auth_method("kubernetes", path=mount)
        root.write_data(
            f"auth/{mount}/config",
            data={
                "kubernetes_host": k8s.url,
                "kubernetes_ca_cert": api_ca.pem,
                "disable_local_ca_jwt": True,  # no pod here: no local SA token or CA to load
            },
        )
        root.write_data(
            f"auth/{mount}/role/vault-bridge",
            data={
                "bound_service_account_names": ["vault-bridge"],
                "bound_service_account_namespaces": ["redis"],
                "audience": "vault",
                "token_policies": [policy],
                "token_ttl": "15m",
            },
        )
        jwt_file = _write(tmp_path / "sa-token", good)
        client = make_client(KubernetesAuth("vault-bridge", jwt_file=jwt_file, mount=mount))
        info = client.login()
        assert policy in info.policies and info.ttl_seconds == 900
        assert client.read_role(pki.issuing_mount, "redis").name == "redis"
        # OpenBao reviewed our JWT, with the JWT itself as bearer (no token_reviewer_jwt set).
        assert k8s.reviews[-1]["review"]["spec"]["token"] == good
        assert k8s.reviews[-1]["bearer"] == f"Bearer {good}"
        assert k8s.reviews[-1]["review"]["spec"]["audiences"] == ["vault"]

        _write(jwt_file, unknown)  # re-read at each login
        with pytest.raises(VaultPermissionError) as err:
            client.login()
        assert err.value.status == 403
        assert unknown not in str(err.value)
        assert len(k8s.reviews) == 2


# -- PKI -------------------------------------------------------------------------------------


@pytest.fixture
def pki_client(
    make_client: Callable[..., VaultClient], token_file: Callable[..., Path]
) -> VaultClient:
    client = make_client(TokenAuth(token_file=token_file()))
    client.login()
    return client


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_sign_a_local_csr(pki_client: VaultClient, pki: PkiSetup, kind: str) -> None:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    dns, ips = ("*.re-east.example.com", "re-east.example.com"), ("10.0.0.7",)
    data = pki_client.sign(
        pki.issuing_mount,
        "redis",
        _csr(key, "proxy.re-east.example.com", dns, ips),
        common_name="proxy.re-east.example.com",
        alt_names=dns,
        ip_sans=ips,
        ttl="24h",
    )
    assert "private_key" not in data
    issued = IssuedCertificate.from_vault(data, private_key=_key_pem(key))
    cert = x509.load_pem_x509_certificate(issued.certificate.encode())
    assert _spki(cert.public_key()) == _spki(key.public_key())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) >= {
        "proxy.re-east.example.com",
        "*.re-east.example.com",
        "re-east.example.com",
    }
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    lifetime = issued.not_after - datetime.now(UTC)
    assert timedelta(hours=23) < lifetime <= timedelta(hours=24, minutes=1)
    # remove_roots_from_chain=false: intermediate then root
    assert pki.intermediate_pem is not None
    assert [c.strip() for c in issued.ca_chain] == [
        pki.intermediate_pem.strip(),
        pki.root_pem.strip(),
    ]
    assert issued.chain_pem.count("BEGIN CERTIFICATE") == 2  # leaf + intermediate


@pytest.mark.parametrize(
    ("role", "key_class"),
    [("redis-rsa", rsa.RSAPublicKey), ("redis-ec", ec.EllipticCurvePublicKey)],
)
def test_issue(pki_client: VaultClient, pki: PkiSetup, role: str, key_class: type) -> None:
    issued = pki_client.issue(
        pki.issuing_mount,
        role,
        common_name="syncer.re-east.example.com",
        alt_names=["re-east.example.com"],
        ip_sans=["127.0.0.1"],
        ttl="2h",
    )
    cert = x509.load_pem_x509_certificate(issued.certificate.encode())
    key = serialization.load_pem_private_key(issued.private_key.encode(), password=None)
    assert isinstance(cert.public_key(), key_class)
    assert _spki(cert.public_key()) == _spki(key.public_key())
    assert issued.lease_id is None
    assert issued.info.subject == "CN=syncer.re-east.example.com"
    assert len(issued.ca_chain) == 2


def test_issue_with_a_lease(pki_client: VaultClient, pki: PkiSetup, root: Any) -> None:
    root.secrets.pki.create_or_update_role(
        "redis-lease",
        extra_params={"allow_any_name": True, "key_type": "ec", "generate_lease": True},
        mount_point=pki.issuing_mount,
    )
    issued = pki_client.issue(pki.issuing_mount, "redis-lease", common_name="lease.example.com")
    assert issued.lease_id and issued.lease_id.startswith(f"{pki.issuing_mount}/issue/redis-lease/")


def test_read_role(pki_client: VaultClient, pki: PkiSetup) -> None:
    role = pki_client.read_role(pki.issuing_mount, "redis-rsa")
    assert role.mount == pki.issuing_mount and role.name == "redis-rsa"
    assert role.server_flag and role.client_flag
    assert (role.key_type, role.key_bits) == ("rsa", 2048)
    assert role.max_ttl_seconds == 8760 * 3600
    assert not role.generate_lease and not role.no_store
    assert role.allow_any_name and role.allow_ip_sans
    assert role.allowed_domains == ()

    with pytest.raises(VaultError) as err:
        pki_client.read_role(pki.issuing_mount, "nope")
    assert not isinstance(err.value, VaultPermissionError | VaultUnavailableError)
    assert err.value.status == 404
    assert f"PKI role {pki.issuing_mount}/roles/nope does not exist" in str(err.value)


def test_ca_chain(pki_client: VaultClient, pki: PkiSetup) -> None:
    chain = pki_client.ca_chain(pki.issuing_mount)
    assert pki.intermediate_pem is not None
    assert [c.strip() for c in chain] == [pki.intermediate_pem.strip(), pki.root_pem.strip()]
    root_only = pki_client.ca_chain(pki.issuing_mount.replace("pki-", "pki-root-", 1))
    assert [c.strip() for c in root_only] == [pki.root_pem.strip()]


@pytest.mark.parametrize("by", ["serial", "certificate"])
def test_revoke(pki_client: VaultClient, pki: PkiSetup, root: Any, by: str) -> None:
    issued = pki_client.issue(pki.issuing_mount, "redis-ec", common_name="revoke.example.com")
    if by == "serial":
        pki_client.revoke(pki.issuing_mount, serial=issued.serial)
    else:
        pki_client.revoke(pki.issuing_mount, certificate=issued.certificate)
    read = root.secrets.pki.read_certificate(issued.serial, mount_point=pki.issuing_mount)
    assert read["data"]["revocation_time"] > 0

    with pytest.raises(ValueError, match="exactly one"):
        pki_client.revoke(pki.issuing_mount)


def test_permission_denied_names_path_and_capability(
    make_client: Callable[..., VaultClient], root: Any, pki: PkiSetup, tmp_path: Path
) -> None:
    m = pki.issuing_mount
    root.sys.create_or_update_policy(
        name=f"read-only-{m}", policy=f'path "{m}/roles/*" {{ capabilities = ["read"] }}'
    )
    token = root.auth.token.create(policies=[f"read-only-{m}"], ttl="10m")["auth"]["client_token"]
    client = make_client(TokenAuth(token_file=_write(tmp_path / "t", token)))
    client.login()
    assert client.read_role(m, "redis").name == "redis"
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(VaultPermissionError) as err:
        client.sign(m, "redis", _csr(key, "x.example.com"), common_name="x.example.com")
    exc = err.value
    assert exc.message == f"permission denied: the policy needs 'update' on {m}/sign/redis"
    assert (exc.method, exc.status) == ("POST", 403)
    assert exc.url == f"{client.address}/v1/{m}/sign/redis"
    assert token not in str(exc) and token not in repr(exc)
    assert exc.__cause__ is not None  # re-raised from hvac's error

    # A 403 makes the next ensure_token check the token: it is fine, so no new login.
    before = client.request_count
    assert client.ensure_token().accessor == client.lookup_self().accessor
    assert client.request_count == before + 2


# -- token upkeep ----------------------------------------------------------------------------


def test_short_ttl_token_is_renewed_after_two_thirds(
    make_client: Callable[..., VaultClient],
    token_file: Callable[..., Path],
    root: Any,
) -> None:
    clock = FakeClock()
    path = token_file(ttl="4s")
    client = make_client(TokenAuth(token_file=path), clock=clock)
    info = client.login()
    assert info.renewable and info.ttl_seconds in (3, 4)
    assert client.token_expires_at == clock.now + timedelta(seconds=info.ttl_seconds)

    clock.advance(info.ttl_seconds * 0.6)  # before 2/3: nothing
    count = client.request_count
    assert client.ensure_token() is info
    assert client.request_count == count

    clock.advance(info.ttl_seconds * 0.1)  # past 2/3: one renew-self
    renewed = client.ensure_token()
    assert client.request_count == count + 1
    assert renewed.accessor == info.accessor and renewed.ttl_seconds == 4
    assert client.token_expires_at == clock.now + timedelta(seconds=4)

    # The token is revoked behind our back: renewing fails, logging in again re-reads the
    # file, which still holds the dead token: a clear error, no loop.
    root.auth.token.revoke_accessor(info.accessor)
    clock.advance(3)
    with pytest.raises(VaultPermissionError, match="rejected"):
        client.ensure_token()

    token_file(ttl="4s", name="fresh").replace(path)
    assert client.ensure_token().accessor not in (info.accessor, "")


def test_failed_renewal_logs_in_again(
    make_client: Callable[..., VaultClient], approle: Callable[..., AppRole], tmp_path: Path
) -> None:
    role = approle(token_ttl="4s")
    sid_file = _write(tmp_path / "sid", role.new_secret_id())
    clock = FakeClock()
    client = make_client(AppRoleAuth(role.role_id, sid_file, mount=role.mount), clock=clock)
    first = client.login()
    assert first.ttl_seconds == 4 and first.renewable
    role.root.auth.token.revoke_accessor(first.accessor)

    clock.advance(3)
    count = client.request_count
    second = client.ensure_token()  # renew-self refused -> log in again
    assert client.request_count == count + 2
    assert second.accessor != first.accessor


def test_rejected_token_is_replaced_by_a_new_login(
    make_client: Callable[..., VaultClient],
    approle: Callable[..., AppRole],
    pki: PkiSetup,
    tmp_path: Path,
) -> None:
    role = approle()
    client = make_client(
        AppRoleAuth(role.role_id, _write(tmp_path / "sid", role.new_secret_id()), role.mount)
    )
    first = client.ensure_token()  # never logged in: logs in
    role.root.auth.token.revoke_accessor(first.accessor)
    with pytest.raises(VaultPermissionError):
        client.read_role(pki.issuing_mount, "redis")
    second = client.ensure_token()  # lookup-self is refused -> log in again
    assert second.accessor != first.accessor
    assert client.read_role(pki.issuing_mount, "redis").name == "redis"


def test_renewal_capped_by_max_ttl_leads_to_a_new_login(
    make_client: Callable[..., VaultClient], approle: Callable[..., AppRole], tmp_path: Path
) -> None:
    role = approle(token_ttl="4s", token_max_ttl="4s")
    sid_file = _write(tmp_path / "sid", role.new_secret_id())
    clock = FakeClock()
    client = make_client(AppRoleAuth(role.role_id, sid_file, mount=role.mount), clock=clock)
    first = client.login()
    time.sleep(1.1)  # Vault caps by real time (whole seconds): let the max TTL shrink
    clock.advance(2.8)
    renewed = client.ensure_token()
    assert renewed.accessor == first.accessor and renewed.ttl_seconds < 4  # capped
    clock.advance(renewed.ttl_seconds * 0.7)
    relogged = client.ensure_token()  # renewing cannot extend it any more: log in
    assert relogged.accessor != first.accessor and relogged.ttl_seconds == 4


# -- outages ---------------------------------------------------------------------------------


def test_sealed_and_stopped_vault_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with OpenBaoServer(tls=True) as server:
        assert server.ca_cert is not None
        ca_copy = tmp_path / "ca.pem"  # stop() removes the server's files, the CA included
        ca_copy.write_text(Path(server.ca_cert).read_text())
        monkeypatch.setenv("VAULT_TOKEN", server.root_token)
        with VaultClient(server.address, auth=TokenAuth(), ca_cert=str(ca_copy)) as client:
            assert client.login().expire_time is None  # root token: never expires
            assert client.ensure_token().ttl_seconds == 0
            assert client.health() is True
            server.client().sys.seal()

            count = client.request_count
            assert client.health() is False
            with pytest.raises(VaultUnavailableError) as err:
                client.read_role("pki", "redis")
            assert err.value.status == 503
            assert client.request_count == count + 2

            server.stop()
            count = client.request_count
            assert client.health() is False
            with pytest.raises(VaultUnavailableError) as err:
                client.sign("pki", "redis", "csr", common_name="x")
            assert err.value.status is None
            assert err.value.url == f"{server.address}/v1/pki/sign/redis"
            assert isinstance(err.value.__cause__, OSError)
            assert client.request_count == count + 2  # one attempt each, no hidden retries
            assert server.root_token not in str(err.value)


# -- TLS trust -------------------------------------------------------------------------------


def test_pinned_ca_wins_over_requests_ca_bundle(
    openbao: OpenBaoServer,
    make_client: Callable[..., VaultClient],
    token_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert openbao.ca_cert is not None
    path = token_file()

    # The environment points requests at the system bundle, which does not hold the dev CA:
    # the pinned dev CA is used all the same.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)
    monkeypatch.setenv("CURL_CA_BUNDLE", SYSTEM_BUNDLE)
    pinned = make_client(TokenAuth(token_file=path), ca_cert=openbao.ca_cert)
    assert pinned.health() is True
    assert pinned.login().ttl_seconds > 0

    # Without a pin, the environment's bundle applies: the dev CA is not in it.
    unpinned = make_client(TokenAuth(token_file=path), ca_cert=None)
    with pytest.raises(VaultError, match="TLS verification"):
        unpinned.login()

    # The environment now trusts the dev CA, but the pin names an unrelated CA: refused.
    unrelated = _write(tmp_path / "unrelated-ca.pem", MiniCA.make("unrelated").pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", openbao.ca_cert)
    monkeypatch.setenv("CURL_CA_BUNDLE", openbao.ca_cert)
    wrong = make_client(TokenAuth(token_file=path), ca_cert=str(unrelated))
    with pytest.raises(VaultError) as err:
        wrong.login()
    assert not isinstance(err.value, VaultUnavailableError)  # a trust problem, not an outage
    assert str(unrelated) in str(err.value)
    assert isinstance(err.value.__cause__, OSError)
    with pytest.raises(VaultError, match="TLS verification"):
        wrong.health()

    # ... and with no pin the environment's (dev) CA is used.
    assert make_client(TokenAuth(token_file=path), ca_cert=None).login().ttl_seconds > 0

    # A pinned CA file that is missing is an error naming the file, never a silent fallback.
    missing = make_client(TokenAuth(token_file=path), ca_cert=str(tmp_path / "gone.pem"))
    with pytest.raises(VaultError, match=r"gone\.pem"):
        missing.login()


# -- namespaces ------------------------------------------------------------------------------


def test_namespace_is_sent(
    openbao: OpenBaoServer,
    make_client: Callable[..., VaultClient],
    root: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = f"team-{uuid.uuid4().hex[:6]}"
    root.write_data(f"sys/namespaces/{ns}", data={})
    in_ns = openbao.client()
    in_ns.adapter.namespace = ns
    in_ns.sys.enable_secrets_engine("pki", path="pki")
    in_ns.secrets.pki.create_or_update_role(
        "redis", extra_params={"allow_any_name": True}, mount_point="pki"
    )
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    client = make_client(TokenAuth(), namespace=ns)
    client.login()
    assert client.read_role("pki", "redis").name == "redis"
    outside = make_client(TokenAuth())
    outside.login()
    with pytest.raises(VaultError) as err:
        outside.read_role("pki", "redis")
    assert err.value.status == 404


# -- a whole rotation with each login method ------------------------------------------------


@pytest.mark.parametrize("method", ["approle", "cert"])
def test_full_rotation_with_login_method(
    approle: Callable[..., AppRole],
    root: Any,
    policy: str,
    pki: PkiSetup,
    openbao: OpenBaoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    from vault_bridge_lab.lab import (
        ADMIN_PASSWORD,
        PASSWORD_ENV,
        ROTATED,
        cluster_table,
        lab_config,
    )
    from vault_bridge_lab.simulator import SimulatedCluster

    from vault_bridge.config.loading import parse_config
    from vault_bridge.rotation.app import build

    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.setenv(PASSWORD_ENV, ADMIN_PASSWORD)
    auth: dict[str, Any]
    if method == "approle":
        role = approle()
        secret_file = _write(tmp_path / "secret-id", role.new_secret_id())
        auth = {
            "method": "approle",
            "role_id": role.role_id,
            "secret_id_file": str(secret_file),
            "mount": role.mount,
        }
    else:
        client_ca = MiniCA.make("vault-bridge clients")
        mount = f"cert-{uuid.uuid4().hex[:8]}"
        root.sys.enable_auth_method("cert", path=mount)
        root.write_data(
            f"auth/{mount}/certs/agent",
            data={"certificate": client_ca.pem, "token_policies": [policy]},
        )
        cert_pem, key_pem = client_ca.leaf("vault-bridge-agent", server=False)
        auth = {
            "method": "cert",
            "cert_file": str(_write(tmp_path / "c.pem", cert_pem)),
            "key_file": str(_write(tmp_path / "c.key", key_pem)),
            "name": "agent",
            "mount": mount,
        }
    with SimulatedCluster("east") as sim:
        doc = lab_config(
            openbao,
            pki,
            [cluster_table(sim, tmp_path, role="redis")],
            state_dir=tmp_path / "state",
            defaults={"key_type": "ec", "key_bits": 256},
            auth=auth,
        )
        with build(parse_config(doc), sleep=lambda s: None) as app:
            result = app.rotator.run_once()
            assert result.ok, result.summary()
            assert sorted(o.name for o in result.outcomes) == sorted(ROTATED)
            assert {s.state for s in app.rotator.status().statuses} == {"ok"}
