"""A relay in front of the real OpenBao server that misbehaves on demand: answers a status of
its own (a sealed Vault's 503, a 500, a proxy's 502 page), a malformed body, or holds a request
before forwarding it. Vault itself stays real; only the network in between lies."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import requests

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Rule:
    prefix: str  # request path prefix, e.g. "/v1/pki" ("" for every path)
    status: int = 0  # 0: forward (after ``delay``)
    body: bytes = b""
    delay: float = 0.0


class VaultRelay:
    def __init__(self, upstream: str, ca_cert: str | None) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self._session = requests.Session()
        self._session.verify = ca_cert or True
        self._session.trust_env = False
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rule = relay.rule_for(self.path)
                if rule is not None and rule.delay:
                    time.sleep(rule.delay)
                if rule is not None and rule.status:
                    self._answer(rule.status, rule.body, "application/json")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                upstream = relay._session.request(
                    self.command, relay.upstream + self.path, data=body, headers=headers, timeout=30
                )
                self._answer(
                    upstream.status_code,
                    upstream.content,
                    upstream.headers.get("Content-Type", "application/json"),
                )

            def _answer(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _handle

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                return None  # a client that went away mid-answer is none of the test's business

        self._server = QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def rule_for(self, path: str) -> Rule | None:
        return next((r for r in self.rules if path.startswith(r.prefix)), None)

    def fail(self, prefix: str, status: int, body: bytes | str = b"", delay: float = 0.0) -> None:
        raw = body.encode() if isinstance(body, str) else body
        self.rules.append(Rule(prefix, status, raw, delay))

    def clear(self) -> None:
        self.rules.clear()

    def __enter__(self) -> VaultRelay:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._session.close()
