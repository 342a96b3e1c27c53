"""A state directory that is read-only, full or corrupt: `run --once` says so in one line,
exits 1, installs nothing it could not record, keeps what was there, and the next run with a
usable directory recovers."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from vault_bridge_lab.openbao import OpenBaoServer, PkiSetup
from vault_bridge_lab.simulator import SimulatedCluster

from tests.conftest import find_secrets
from tests.faults.conftest import NAMES, write_config
from tests.faults.outcome import assert_clear_failure, installed, invoke

pytestmark = [pytest.mark.fault("state"), pytest.mark.usefixtures("lab_env")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_state_directory(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    config = write_config(openbao, pki, [east], tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o500)
    before = installed(east, NAMES)
    try:
        assert_clear_failure(invoke("--config", config, "run", "--once"), 1, "state")
        assert installed(east, NAMES) == before
    finally:
        state.chmod(0o700)
    assert invoke("--config", config, "run", "--once").exit_code == 0


def _read_only_mounts() -> bool:
    """Whether this process may bind-mount a directory read-only in a mount namespace of its
    own (root, ``unshare -m``): the way to make a directory read-only even for root."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            "mount --bind -o ro / /mnt 2>/dev/null || mount -o remount,bind,ro /",
        ],
        capture_output=True,
        timeout=10,
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not _read_only_mounts(),
    reason="needs root with unshare -m and mount (non-root runs test_read_only_state_directory)",
)
def test_read_only_state_directory_for_root(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    """Root writes into a mode-0500 directory, so the directory is bind-mounted read-only in a
    mount namespace of the `run --once` process alone."""
    config = write_config(openbao, pki, [east], tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    before = installed(east, NAMES)
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    command = [sys.executable, "-m", "vault_bridge", "--config", str(config), "run", "--once"]
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, str(state), *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(proc.stdout, proc.stderr)  # the suite-wide secret scan sees every line
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "state" in errors[0], proc.stderr
    assert find_secrets(proc.stdout + proc.stderr) == []
    assert installed(east, NAMES) == before
    assert invoke("--config", str(config), "run", "--once").exit_code == 0


def test_state_path_is_a_file(
    openbao: OpenBaoServer, pki: PkiSetup, east: SimulatedCluster, tmp_path: Path
) -> None:
    """The unwritable location root cannot write either: the state directory is a file."""
    config = write_config(openbao, pki, [east], tmp_path)
    (tmp_path / "state").write_text("not a directory")
    before = installed(east, NAMES)
    assert_clear_failure(invoke("--config", config, "run", "--once"), 1, "state")
    assert installed(east, NAMES) == before
    (tmp_path / "state").unlink()
    assert invoke("--config", config, "run", "--once").exit_code == 0


def test_full_disk(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(openbao, pki, [east], tmp_path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    before = installed(east, NAMES)
    with pytest.MonkeyPatch.context() as disk:
        disk.setattr(os, "fsync", full)
        assert_clear_failure(invoke("--config", config, "run", "--once"), 1, "no space left")
    assert installed(east, NAMES) == before  # nothing installed that could not be recorded
    assert invoke("--config", config, "run", "--once").exit_code == 0


@pytest.mark.parametrize("content", [b"{not json", b"\x00\x01\x02", b'{"version": 99}', b"[]"])
def test_corrupt_state_file(
    openbao: OpenBaoServer,
    pki: PkiSetup,
    east: SimulatedCluster,
    tmp_path: Path,
    content: bytes,
) -> None:
    config = write_config(openbao, pki, [east], tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.json").write_bytes(content)
    before = installed(east, NAMES)
    ran = invoke("--config", config, "run", "--once")
    assert_clear_failure(ran, 1, "is corrupt", "a copy is kept")
    assert installed(east, NAMES) == before
    assert (state / "state.json").read_bytes() == content  # never overwritten
    kept = [p for p in state.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(kept) == 1 and kept[0].read_bytes() == content
    (state / "state.json").unlink()  # the operator removes it: the next run starts afresh
    assert invoke("--config", config, "run", "--once").exit_code == 0
