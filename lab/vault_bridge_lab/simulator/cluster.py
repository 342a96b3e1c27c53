""":class:`SimulatedCluster`: one simulated cluster, its state, its listeners' lifecycle and the
controls tests use (faults, databases, upgrades)."""

from __future__ import annotations

import logging
import os
import socketserver
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vault_bridge.models.certificates import CertificateInfo, split_pem_chain
from vault_bridge.models.times import utc_now
from vault_bridge_lab.simulator.access import AccessControl, User
from vault_bridge_lab.simulator.certs import Installed, cached_rsa_key, key_pem, self_signed
from vault_bridge_lab.simulator.databases import Outage
from vault_bridge_lab.simulator.dbcerts import DbCertificates
from vault_bridge_lab.simulator.names import (
    INTERNODE_NAMES,
    KNOWN_NAMES,
    LISTENERS,
    MTLS_TRUSTED_CA,
    NAME_MIN_VERSION,
    Version,
    parse_version,
)
from vault_bridge_lab.simulator.ocsp import Fetch, OcspModel, https_fetch
from vault_bridge_lab.simulator.rest import (
    DEFAULT_USERS,
    Fault,
    Node,
    RecordedRequest,
    RestApi,
)
from vault_bridge_lab.simulator.routing import ApiError
from vault_bridge_lab.simulator.tls import (
    JOIN_TIMEOUT,
    CmHandler,
    MetricsHandler,
    ProxyHandler,
    RestHandler,
    TLSServer,
)
from vault_bridge_lab.simulator.world import DatabaseWorld

logger = logging.getLogger(__name__)


class SimulatedCluster:
    """A Redis Enterprise Software cluster on loopback: REST API, cm, exporter, one endpoint.

    Starts like a new cluster, with self-signed certificates for every name its version knows.
    Use it as a context manager (start/stop). ``requests`` records every REST request and
    ``install_count`` counts installed certificates (a bulk request of three counts three).
    """

    def __init__(
        self,
        name: str = "sim",
        *,
        software_version: str = "7.22.2-14",
        node_versions: list[str] | None = None,
        users: dict[str, tuple[str, str]] | None = None,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
        clock: Callable[[], datetime] | None = None,
        world: DatabaseWorld | None = None,
        ocsp_fetch: Fetch | None = None,
        ocsp_ca_file: str | None = None,
    ) -> None:
        """``world``: the databases, CRDBs and tasks, shared with the other clusters given the
        same one (an Active-Active database spanning them); a world of its own by default.

        ``ocsp_fetch(url, request_der) -> response_der`` asks an OCSP responder (default: an
        HTTP POST, an https responder verified with ``ocsp_ca_file``)."""
        unknown = sorted(set(ports or {}) - set(LISTENERS))
        if unknown:
            raise ValueError(f"unknown listener(s) {unknown}; known: {', '.join(LISTENERS)}")
        self.name = name
        self.host = host
        self.requests: list[RecordedRequest] = []
        self.install_count = 0
        self.install_delay = 0.0  # seconds every install takes before it is applied
        # seconds the REST API drops every connection after an internode install (some 8.0
        # builds leave 9443 unreachable for minutes then: release notes RS208996)
        self.internode_outage = 0.0
        self._rest_down_until = 0.0
        self._partial_installs = 0
        self._ports = {listener: int((ports or {}).get(listener, 0)) for listener in LISTENERS}
        self._connect_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self._clock: Callable[[], datetime] = clock or utc_now
        self.access = AccessControl(
            {
                user: User(user, password, role)
                for user, (password, role) in (DEFAULT_USERS if users is None else users).items()
            }
        )
        self.ocsp = OcspModel(ocsp_fetch or https_fetch(ocsp_ca_file, timeout=5.0))
        self.db_certs = DbCertificates()
        #: TLS handshakes that failed, by listener (a refused client certificate among them).
        self.handshake_failures: dict[str, int] = {}
        self._handshakes = threading.Condition()
        self._lock = threading.RLock()
        self._nodes: list[Node] = []
        self._certs: dict[str, Installed] = {}
        self._faults: list[Fault] = []
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._servers: dict[str, TLSServer] = {}
        self._threads: list[threading.Thread] = []
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
        self._stopping = threading.Event()
        self._rest = RestApi(self)
        self.set_software_version(software_version, node_versions)
        self.world = world if world is not None else DatabaseWorld()
        self.world.attach(self)

    # ---- lifecycle

    def start(self) -> None:
        """Start every listener; they accept connections when this returns."""
        with self._lock:
            if self._servers:
                raise RuntimeError(f"simulated cluster {self.name} is already running")
            self._stopping.clear()
            self._tls_dir = tempfile.TemporaryDirectory(prefix=f"vault-bridge-sim-{self.name}-")
            try:
                for listener in LISTENERS:
                    self._contexts[listener] = self._server_context(self._certs[listener])
                handlers: dict[str, type[socketserver.BaseRequestHandler]] = {
                    "api": RestHandler,
                    "cm": CmHandler,
                    "metrics_exporter": MetricsHandler,
                    "proxy": ProxyHandler,
                }
                for listener in LISTENERS:
                    self._servers[listener] = TLSServer(
                        (self.host, self._ports[listener]),
                        handlers[listener],
                        label=f"sim-{self.name}-{listener}",
                        context=partial(self._context, listener),
                        cluster=self,
                    )
                    self._ports[listener] = int(self._servers[listener].server_address[1])
            except BaseException:
                servers, tls_dir = list(self._servers.values()), self._tls_dir
                self._servers, self._tls_dir = {}, None
                self._close(servers, [], tls_dir)
                raise
            for listener, server in self._servers.items():
                thread = threading.Thread(
                    target=server.serve, name=f"sim-{self.name}-{listener}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        logger.info(
            "simulated cluster %s (%s) listening: %s",
            self.name,
            self.software_version,
            ", ".join(f"{listener} {self.endpoint(listener)}" for listener in LISTENERS),
        )

    def stop(self) -> None:
        """Stop every listener, close every connection, join the threads. Idempotent."""
        self._stopping.set()  # ends injected delays early
        with self._lock:  # connection threads take the lock too: join them outside it
            servers, threads, tls_dir = list(self._servers.values()), self._threads, self._tls_dir
            self._servers, self._threads, self._tls_dir = {}, [], None
        self._close(servers, threads, tls_dir)
        if servers:
            logger.info("simulated cluster %s stopped", self.name)

    @staticmethod
    def _close(
        servers: list[TLSServer],
        threads: list[threading.Thread],
        tls_dir: tempfile.TemporaryDirectory[str] | None,
    ) -> None:
        for server in servers:
            server.wake()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        for server in servers:
            server.server_close()
            server.close_connections()
        if tls_dir is not None:
            tls_dir.cleanup()

    def __enter__(self) -> SimulatedCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- where it listens, what it serves

    @property
    def api_url(self) -> str:
        return f"https://{self.endpoint('api')}"

    def endpoint(self, name: str) -> str:
        """``host:port`` of one listener: "api", "cm", "metrics_exporter" or "proxy"."""
        if name not in LISTENERS:
            raise ValueError(f"no listener {name!r}; known: {', '.join(LISTENERS)}")
        port = self._ports[name]
        if not port:
            raise RuntimeError(f"simulated cluster {self.name} has not started: no {name} port")
        host = f"[{self._connect_host}]" if ":" in self._connect_host else self._connect_host
        return f"{host}:{port}"

    def bdb_endpoint(self, uid: int) -> str:
        """``host:port`` of the TLS endpoint of a database with a certificate of its own."""
        with self._lock:
            server = self._servers.get(f"bdb:{uid}")
            if server is None:
                raise KeyError(f"database {uid} on {self.name} has no endpoint of its own")
            port = int(server.server_address[1])
        host = f"[{self._connect_host}]" if ":" in self._connect_host else self._connect_host
        return f"{host}:{port}"

    def open_bdb_endpoint(self, uid: int) -> str:
        """Start the TLS endpoint of database ``uid`` (it serves the database's own
        certificate, or the cluster's proxy certificate while it has none); ``host:port``."""
        self.world.bdb_json(self.name, uid)  # the database exists
        key = f"bdb:{uid}"
        with self._lock:
            if not self._servers:
                raise RuntimeError(f"simulated cluster {self.name} is not running")
            if key not in self._servers:
                server = TLSServer(
                    (self.host, 0),
                    ProxyHandler,
                    label=f"sim-{self.name}-{key}",
                    context=partial(self._db_context, uid),
                    cluster=self,
                )
                self._servers[key] = server
                thread = threading.Thread(target=server.serve, name=server.label, daemon=True)
                thread.start()
                self._threads.append(thread)
        return self.bdb_endpoint(uid)

    def _db_context(self, uid: int) -> ssl.SSLContext:
        with self._lock:
            return self._contexts.get(f"bdb:{uid}") or self._contexts["proxy"]

    def _set_db_certificate(self, uid: int, installed: Installed) -> None:
        """A database's own certificate: new connections to its endpoint see it."""
        context = self._server_context(installed) if self._tls_dir is not None else None
        self.db_certs.put(uid, installed)
        with self._lock:
            if context is not None:
                self._contexts[f"bdb:{uid}"] = context
        self.world.certificates_changed(self.name)
        info = CertificateInfo.from_cert(installed.leaf)
        logger.info("cluster %s: database %s: certificate serial %s", self.name, uid, info.serial)

    def _delete_db_certificate(self, uid: int) -> bool:
        removed = self.db_certs.delete(uid)
        with self._lock:
            self._contexts.pop(f"bdb:{uid}", None)
        if removed:
            self.world.certificates_changed(self.name)
        return removed

    def installed_pem(self, name: str) -> str:
        """The chain (leaf first, as given) installed for a certificate name."""
        with self._lock:
            try:
                return self._certs[name].chain_pem
            except KeyError:
                raise KeyError(f"no {name!r} certificate installed on {self.name}") from None

    def api_ca_pem(self) -> str:
        """The PEM a client must trust for the current ``api`` certificate.

        The last certificate of the installed chain: the self-signed certificate itself on a
        new cluster. When a chain leaves its root out, this is the top intermediate; a client
        then trusts the root it got from Vault instead (or verifies with partial chains).
        """
        return split_pem_chain(self.installed_pem("api"))[-1]

    # ---- test controls

    def inject_fault(
        self,
        method: str,
        path: str,
        status: int,
        *,
        times: int = 1,
        delay: float = 0.0,
        body: dict[str, Any] | list[Any] | bytes | None = None,
    ) -> None:
        """The next ``times`` requests for ``method`` + exact ``path`` answer ``status`` after
        sleeping ``delay`` seconds; ``status`` 0 only delays them, then handles them normally.
        ``body``: the answer's JSON, or ``bytes`` sent as they are (a malformed answer)."""
        if status != 0 and not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status}")
        if times < 1 or delay < 0:
            raise ValueError("times must be at least 1 and delay not negative")
        if body is None:
            body = {
                "error_code": "injected",
                "description": f"injected fault: {status} for {method.upper()} {path}",
            }
        with self._lock:
            self._faults.append(Fault(method.upper(), path, status, times, delay, body))

    def partial_installs(self, times: int = 1) -> None:
        """The next ``times`` installs are applied but answer 409 "not all nodes have been
        updated" (requests/cluster/certificates/_index.md)."""
        with self._lock:
            self._partial_installs += times

    def _rest_down(self) -> bool:
        return time.monotonic() < self._rest_down_until

    def _take_partial(self) -> bool:
        with self._lock:
            if self._partial_installs <= 0:
                return False
            self._partial_installs -= 1
            return True

    def faults_pending(self) -> int:
        """How many injected faults no request has taken yet (a held request has taken its)."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def add_crdb(
        self,
        name: str,
        *,
        participants: list[SimulatedCluster] | None = None,
        guid: str | None = None,
    ) -> str:
        """An Active-Active database with an instance on each participant (default: this
        cluster only; others must share this cluster's ``world``). Returns its GUID."""
        members = participants if participants is not None else [self]
        for other in members:
            if other.world is not self.world:
                raise ValueError(f"cluster {other.name} does not share {self.name}'s world")
        return self.world.add_crdb(name, members, guid=guid)

    def add_bdb(
        self,
        name: str,
        *,
        replica_of: list[tuple[SimulatedCluster, int]] | None = None,
        enforce_client_authentication: bool = True,
        client_certs: list[str] | None = None,
        source_fields: dict[str, Any] | None = None,
    ) -> int:
        """A database on this cluster; ``replica_of``: a Replica Of destination of each
        ``(source cluster, source uid)`` (see :meth:`DatabaseWorld.add_bdb`). Returns its uid."""
        return self.world.add_bdb(
            self,
            name,
            replica_of=replica_of or [],
            enforce_client_authentication=enforce_client_authentication,
            client_certs=client_certs or [],
            source_fields=source_fields,
        )

    def bdb(self, uid: int) -> dict[str, Any]:
        """A database as ``GET /v1/bdbs/<uid>`` returns it."""
        return self.world.bdb_json(self.name, uid)

    def outages(self) -> list[Outage]:
        """Every sync outage of the world this cluster belongs to (see :class:`Outage`)."""
        return self.world.outages()

    def set_software_version(self, version: str, node_versions: list[str] | None = None) -> None:
        """Set every node to ``version`` (or each to ``node_versions``), as an upgrade would.

        Certificates a newer version brings (ldap_client, internode) appear self-signed.
        """
        versions = list(node_versions) if node_versions is not None else [version] * 3
        if not versions:
            raise ValueError("a cluster has at least one node")
        for item in [version, *versions]:
            parse_version(item)
        with self._lock:
            self.software_version = version
            self._nodes = [Node(uid, v) for uid, v in enumerate(versions, start=1)]
            self._add_default_certificates()

    # ---- state, used by the REST API and the listeners

    def _add_default_certificates(self) -> None:
        version = self._lowest_version()
        now = self._now()
        for name in sorted(KNOWN_NAMES - {MTLS_TRUSTED_CA} - set(self._certs)):
            if version < NAME_MIN_VERSION.get(name, ()):
                continue
            key: CertificateIssuerPrivateKeyTypes
            if name in INTERNODE_NAMES:
                key = cached_rsa_key(sorted(INTERNODE_NAMES).index(name))
            else:
                key = ec.generate_private_key(ec.SECP256R1())
            chain = self_signed(f"{name}.{self.name}.sim", key, self.host, now)
            leaf = x509.load_pem_x509_certificate(chain.encode())
            self._certs[name] = Installed(name, chain, key_pem(key), leaf)

    def _now(self) -> datetime:
        return self._clock()

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _lowest_version(self) -> Version:
        with self._lock:
            return min(parse_version(node.software_version) for node in self._nodes)

    def _nodes_snapshot(self) -> list[Node]:
        with self._lock:
            return list(self._nodes)

    def _certs_snapshot(self) -> dict[str, Installed]:
        with self._lock:
            return dict(self._certs)

    def _authenticate(
        self, authorization: str | None, peer: x509.Certificate | None = None
    ) -> User | None:
        return self.access.authenticate(authorization, peer)

    def _handshake_failed(self, listener: str, exc: BaseException) -> None:
        with self._handshakes:
            self.handshake_failures[listener] = self.handshake_failures.get(listener, 0) + 1
            self._handshakes.notify_all()

    def wait_for_handshake_failures(self, listener: str, count: int, timeout: float = 5.0) -> int:
        """Block until ``listener`` counted ``count`` failed handshakes (the server counts one
        a moment after the client saw its alert), or ``timeout``; returns the count."""
        with self._handshakes:
            self._handshakes.wait_for(
                lambda: self.handshake_failures.get(listener, 0) >= count, timeout
            )
            return self.handshake_failures.get(listener, 0)

    def add_certificate_user(self, name: str, subject: str, role: str = "admin") -> None:
        """A user with ``auth_method`` certificate and ``certificate_subject_line`` ``subject``
        (as ``POST /v1/users`` makes one)."""
        self.access.add_user(User(name, "", role, "certificate", subject))

    def set_access(self, **settings: Any) -> None:
        """Change the access settings as ``PUT /v1/cluster`` would (validated the same way)."""
        self.access.update(settings, self._lowest_version())
        self._refresh_api_context()

    def _refresh_api_context(self) -> None:
        """New REST connections see the current mTLS settings and ``mtls_trusted_ca``."""
        with self._lock:
            if self._servers and self._tls_dir is not None:
                self._contexts["api"] = self._server_context(self._certs["api"])

    def _check_name(self, name: str) -> None:
        """403 for a name this cluster's version does not know."""
        if name not in KNOWN_NAMES or self._lowest_version() < NAME_MIN_VERSION.get(name, ()):
            raise ApiError(403, "unknown_certificate_name", f"unknown certificate name {name!r}")

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.path == path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _apply(self, installed: list[Installed]) -> None:
        """Install validated certificates all at once; new connections see them."""
        self.world.advance()  # tasks that started before this install saw the old certificates
        contexts: dict[str, ssl.SSLContext] = {}
        for item in installed:
            if item.name in LISTENERS and self._tls_dir is not None:
                try:
                    contexts[item.name] = self._server_context(item)
                except (ssl.SSLError, OSError) as exc:
                    raise ApiError(
                        400, "invalid_certificate", f"{item.name}: TLS refused it: {exc}"
                    ) from exc
        with self._lock:
            for item in installed:
                self._certs[item.name] = item
            if self._servers:
                self._contexts.update(contexts)
            self.install_count += len(installed)
        if any(item.name == MTLS_TRUSTED_CA for item in installed):
            self._refresh_api_context()
        if any(item.name == "proxy" for item in installed):
            self.ocsp.proxy_changed()
        self.world.certificates_changed(self.name)
        if self.internode_outage > 0 and any(i.name in INTERNODE_NAMES for i in installed):
            self._rest_down_until = time.monotonic() + self.internode_outage
        for item in installed:
            info = CertificateInfo.from_cert(item.leaf)
            logger.info(
                "cluster %s: installed %s (serial %s, not after %s, sha256 %s)",
                self.name,
                item.name,
                info.serial,
                info.not_after.isoformat(),
                info.fingerprint,
            )

    def _context(self, listener: str) -> ssl.SSLContext:
        with self._lock:
            return self._contexts[listener]

    def _server_context(self, installed: Installed) -> ssl.SSLContext:
        """A server context for one certificate; the PEM lives on disk only while loading."""
        tls_dir = self._tls_dir
        if tls_dir is None:
            raise RuntimeError(f"simulated cluster {self.name} is not running")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The key goes to a 0600 file in the simulator's private 0700 directory, only while
        # OpenSSL loads it (load_cert_chain takes paths only).
        fd, path = tempfile.mkstemp(dir=tls_dir.name, suffix=".pem")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(installed.chain_pem.strip() + "\n")
                handle.write((installed.key_pem or "").strip() + "\n")
            context.load_cert_chain(path)
        finally:
            os.unlink(path)
        if installed.name == "api":
            self._verify_clients(context)
        return context

    def _verify_clients(self, context: ssl.SSLContext) -> None:
        """mTLS on the REST listener: with ``mtls_certificate_authentication`` on and a
        ``mtls_trusted_ca`` installed, a client certificate is asked for, and one that does not
        chain to it fails the handshake (a client without one goes on to Basic)."""
        trusted = self._certs.get(MTLS_TRUSTED_CA)
        if not self.access.mtls_on or trusted is None:
            return
        context.load_verify_locations(cadata=trusted.chain_pem)
        context.verify_mode = ssl.CERT_OPTIONAL

    def _metrics_text(self) -> str:
        now = self._now()
        lines = [
            "# HELP node_cert_expiration_seconds Seconds until the certificate expires.",
            "# TYPE node_cert_expiration_seconds gauge",
        ]
        for name, installed in sorted(self._certs_snapshot().items()):
            remaining = (installed.leaf.not_valid_after_utc - now).total_seconds()
            lines.append(f'node_cert_expiration_seconds{{logical_name="{name}"}} {remaining:.0f}')
        return "\n".join(lines) + "\n"
