#!/usr/bin/env python3
"""A stand-in for Redis Enterprise's ``crdb-cli``, talking to a (simulated) cluster's REST API.

Only what vault_bridge runs, with the real command's arguments and output::

    crdb-cli crdb update --crdb-guid <GUID> --force [--no-wait]

prints ``Task <id> created``, then ``  ---> Status changed: queued -> started`` lines until the
task is ``finished`` (exit 0) or ``failed`` (its errors, exit 1). ``--no-wait`` returns after
creating the task. Standard library only, so that it runs in a bare ``python3`` container.

Where the cluster is (the real tool finds the local node on its own):

- ``CRDB_CLI_CONFIG``: a JSON file ``{"url", "username", "password_env", "ca_file"}``, or
- ``CRDB_CLI_URL``, ``CRDB_CLI_USERNAME``, ``CRDB_CLI_PASSWORD`` and ``CRDB_CLI_CA_FILE`` (or
  ``CRDB_CLI_CA_PEM``, the PEM itself). The password is read from the environment only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any

POLL_SECONDS = 0.02
TIMEOUT_SECONDS = 600.0


class CliError(Exception):
    pass


def _settings() -> dict[str, str]:
    path = os.environ.get("CRDB_CLI_CONFIG")
    if path:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        password = os.environ.get(str(data.get("password_env") or "CRDB_CLI_PASSWORD"), "")
        return {
            "url": str(data["url"]),
            "username": str(data["username"]),
            "password": password,
            "ca_file": str(data.get("ca_file") or ""),
            "ca_pem": "",
        }
    return {
        "url": os.environ.get("CRDB_CLI_URL", "https://localhost:9443"),
        "username": os.environ.get("CRDB_CLI_USERNAME", ""),
        "password": os.environ.get("CRDB_CLI_PASSWORD", ""),
        "ca_file": os.environ.get("CRDB_CLI_CA_FILE", ""),
        "ca_pem": os.environ.get("CRDB_CLI_CA_PEM", ""),
    }


class Api:
    def __init__(self, settings: dict[str, str]) -> None:
        self.url = settings["url"].rstrip("/")
        token = f"{settings['username']}:{settings['password']}".encode()
        self.auth = "Basic " + base64.b64encode(token).decode()
        self.context = ssl.create_default_context()
        if settings["ca_file"]:
            self.context.load_verify_locations(cafile=settings["ca_file"])
        elif settings["ca_pem"]:
            self.context.load_verify_locations(cadata=settings["ca_pem"])

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Authorization", self.auth)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise CliError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise CliError(f"{method} {path}: {exc}") from exc


def update(api: Api, guid: str, *, force: bool, wait: bool) -> int:
    task = api.call("POST", f"/v1/crdbs/{guid}/updates", {"force_update": force})
    task_id, status = task["id"], task["status"]
    print(f"Task {task_id} created", flush=True)
    if not wait:
        return 0
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while status not in ("finished", "failed"):
        if time.monotonic() > deadline:
            print(f"  ---> Timed out waiting for task {task_id} (status {status})", flush=True)
            return 1
        time.sleep(POLL_SECONDS)
        task = api.call("GET", f"/v1/crdb_tasks/{task_id}")
        if task["status"] != status:
            print(f"  ---> Status changed: {status} -> {task['status']}", flush=True)
            status = task["status"]
    if status == "failed":
        for error in task.get("errors") or []:
            print(
                f"  ---> Error: {error.get('cluster_name', '')}: {error.get('error_code', '')}: "
                f"{error.get('description', '')}",
                flush=True,
            )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crdb-cli")
    groups = parser.add_subparsers(dest="group", required=True)
    crdb = groups.add_parser("crdb").add_subparsers(dest="command", required=True)
    upd = crdb.add_parser("update", help="update an Active-Active database's configuration")
    upd.add_argument("--crdb-guid", required=True)
    upd.add_argument("--force", action="store_true", help="update even without changes")
    upd.add_argument("--no-wait", action="store_true", help="do not wait for the task")
    args = parser.parse_args(argv)
    try:
        return update(Api(_settings()), args.crdb_guid, force=args.force, wait=not args.no_wait)
    except CliError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
