#!/usr/bin/env python3
"""Developer entry point: needs only Python 3.11+.

    python3 dev.py demo        # OpenBao + a simulated cluster on loopback, one full rotation
    python3 dev.py test        # lint, types, import layers and the whole suite with coverage
    python3 dev.py test -k x   # extra arguments go to pytest
    python3 dev.py lint        # ruff, mypy --strict (package, lab, tests, benchmarks), import-linter
    python3 dev.py unit        # the unit suite alone: no servers, no sleeping

Creates (or reuses) ``.venv`` next to this file and installs the runtime (``.``, with its test
dependencies) and the lab (``lab/``) whenever either ``pyproject.toml`` changed since the last
install.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("VAULT_BRIDGE_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".vault-bridge-installed"
PROJECTS = (ROOT, ROOT / "lab")  # the runtime distribution and the lab beside it


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before the venv exists
        sys.exit(f"vault-bridge needs Python 3.11 or later; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    digest = hashlib.sha256()
    for project in PROJECTS:
        digest.update((project / "pyproject.toml").read_bytes())
    wanted = digest.hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    print("installing vault-bridge and its test dependencies into .venv", flush=True)
    subprocess.run(
        [
            str(PY),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
            f"{ROOT}[test]",
            "-e",
            str(ROOT / "lab"),
        ],
        check=True,
    )
    STAMP.write_text(wanted + "\n")


def run(*args: str) -> int:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    print("+", " ".join(args), flush=True)
    return subprocess.run(list(args), cwd=ROOT, env=env).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "lint", "unit"):
        print(__doc__)
        return 2
    ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return run(str(BIN / "vault-bridge"), "demo")
    if command == "unit":
        return pytest_exit(run(str(PY), "-m", "pytest", "tests/unit", *rest))
    lint = [
        (str(BIN / "ruff"), "check", "."),
        (str(BIN / "ruff"), "format", "--check", "."),
        (
            str(BIN / "mypy"),
            "--strict",
            "vault_bridge",
            "lab/vault_bridge_lab",
            "tests",
            "benchmarks",
        ),
        (str(BIN / "lint-imports"),),
    ]
    for step in lint:
        code = run(*step)
        if code:
            return code
    if command == "lint":
        return 0
    coverage = ("--cov=vault_bridge", "--cov-report=term:skip-covered")
    return pytest_exit(run(str(PY), "-m", "pytest", *coverage, *rest))


def pytest_exit(code: int) -> int:
    if code == 5:
        print("pytest collected no tests: that is a failure here", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
