"""The listeners of a simulated cluster: TLS servers that take the certificate installed when
each connection arrives, and the handlers behind them (REST, cm page, exporter, database)."""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

from cryptography import x509

from vault_bridge_lab.simulator.routing import ApiError

if TYPE_CHECKING:
    from vault_bridge_lab.simulator.cluster import SimulatedCluster

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
HANDSHAKE_TIMEOUT: Final = 10.0  # a client that connects and stalls holds only its own thread
IDLE_TIMEOUT: Final = 120.0  # keep-alive and proxy connections idle longer than this are closed
JOIN_TIMEOUT: Final = 5.0


class TLSServer(socketserver.TCPServer):
    """A TCP listener whose connections are TLS-wrapped, each in its own thread.

    The handshake happens in the connection's thread with the context current at that moment,
    so a stalled client blocks nobody and a new connection sees the newest certificate.
    """

    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[socketserver.BaseRequestHandler],
        *,
        label: str,
        context: Callable[[], ssl.SSLContext],
        cluster: SimulatedCluster,
    ) -> None:
        self.label = label
        self.cluster = cluster
        self._context = context
        self._lock = threading.Lock()
        self._wakers: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._closing = False
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            super().__init__(address, handler)
            self.socket.setblocking(False)
        except BaseException:
            self._wake_r.close()
            self._wake_w.close()
            raise

    def serve(self) -> None:
        """Accept until :meth:`wake`; each connection gets its own daemon thread."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        sock, address = self.socket.accept()
                    except OSError:
                        continue
                    self._start_connection(sock, address)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _start_connection(self, sock: socket.socket, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(
            target=self._serve_connection,
            args=(sock, address),
            name=f"{self.label}-conn",
            daemon=True,
        )
        with self._lock:
            if self._closing:
                sock.close()
                return
            self._threads.add(thread)
            thread.start()  # under the lock: close_connections() never joins an unstarted thread

    def _serve_connection(self, raw: socket.socket, address: Any) -> None:
        # A duplicate of the descriptor lets close_connections() shut the connection down
        # whichever object (plain or TLS socket) holds it at that moment.
        waker = raw.dup()
        with self._lock:
            if self._closing:
                waker.close()
                raw.close()
                self._threads.discard(threading.current_thread())
                return
            self._wakers.add(waker)
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT)
            try:
                tls = self._context().wrap_socket(raw, server_side=True)
            except OSError as exc:
                logger.debug("%s: handshake with %s failed: %s", self.label, address, exc)
                self.cluster._handshake_failed(self.label.rsplit("-", 1)[-1], exc)
                return
            with tls:
                try:
                    self.finish_request(tls, address)
                except OSError as exc:
                    logger.debug("%s: connection from %s ended: %s", self.label, address, exc)
                except Exception:
                    logger.exception("%s: connection from %s failed", self.label, address)
        finally:
            raw.close()  # a no-op once wrap_socket has taken the descriptor
            with self._lock:
                self._wakers.discard(waker)
                waker.close()
                self._threads.discard(threading.current_thread())

    def close_connections(self) -> None:
        """Shut every open connection down and wait for their threads."""
        with self._lock:
            self._closing = True
            for waker in self._wakers:
                with contextlib.suppress(OSError):
                    waker.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()


class _QuietHandler(BaseHTTPRequestHandler):
    """HTTP over an already-wrapped TLS socket; access lines go to the debug log."""

    server_version = "SimulatedRedisEnterprise/1.0"
    sys_version = ""
    timeout = IDLE_TIMEOUT

    @property
    def cluster(self) -> SimulatedCluster:
        return cast(TLSServer, self.server).cluster

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s: " + format, cast(TLSServer, self.server).label, *args)

    def _send(
        self,
        status: int,
        content_type: str,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class RestHandler(_QuietHandler):
    """The REST API: HTTP/1.1 keep-alive, JSON in and out; the logic is in :class:`RestApi`."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_POST = do_DELETE = do_PATCH = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "length_required", "send the body with Content-Length", close=True)
        raw_length = self.headers.get("Content-Length") or "0"
        try:
            length = int(raw_length)
        except ValueError as exc:
            raise ApiError(400, "invalid_request", "bad Content-Length", close=True) from exc
        if length < 0 or length > MAX_BODY_BYTES:
            raise ApiError(413, "payload_too_large", "the body is too large", close=True)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        if self.cluster._rest_down():  # the API is away: the connection drops unanswered
            self.close_connection = True
            return
        der = cast(ssl.SSLSocket, self.connection).getpeercert(binary_form=True)
        peer = x509.load_der_x509_certificate(der) if der else None
        response = self.cluster._rest.handle(
            self.command,
            self.path,
            self.headers.get("Authorization"),
            self._read_body,
            headers={k: v for k, v in self.headers.items() if k.lower() == "x-task-id"},
            peer=peer,
        )
        headers = dict(response.headers)
        if response.close:
            headers["Connection"] = "close"  # also makes BaseHTTPRequestHandler close
        body = response.body
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._send(response.status, "application/json", payload, headers)


class CmHandler(_QuietHandler):
    """The Cluster Manager UI: one small page on every path."""

    def do_GET(self) -> None:
        page = f"<!doctype html><title>Redis Enterprise: {self.cluster.name}</title>\n"
        self._send(200, "text/html; charset=utf-8", page.encode())


class MetricsHandler(_QuietHandler):
    """The Prometheus exporter: ``node_cert_expiration_seconds`` per certificate."""

    def do_GET(self) -> None:
        if urlsplit(self.path).path not in ("/metrics", "/v2"):
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        text = self.cluster._metrics_text()
        self._send(200, "text/plain; version=0.0.4; charset=utf-8", text.encode())


class ProxyHandler(socketserver.BaseRequestHandler):
    """A database endpoint: after the handshake, ``+PONG`` to every read, until EOF."""

    def handle(self) -> None:
        conn = cast(ssl.SSLSocket, self.request)
        conn.settimeout(IDLE_TIMEOUT)
        while conn.recv(65536):
            conn.sendall(b"+PONG\r\n")
