"""Where the agent (the state journal) and the follow-ups plug into a pass: the protocols and
the no-op and database adapters of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from vault_bridge.config.settings import CertSpec
from vault_bridge.models.certificates import (
    CertChange,
    InstalledCertificate,
    IssuedCertificate,
)
from vault_bridge.rotation.results import Change

logger = logging.getLogger(__name__)


class RotationHooks(Protocol):
    """Points where the agent (state journal) and the follow-ups plug into a pass."""

    def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
        """Called before asking Vault; raising skips the certificate (e.g. runaway guard).
        ``explicit``: the operator asked for this certificate (``issue``); it is passed only
        when true."""

    def issued(self, spec: CertSpec, issued: IssuedCertificate) -> None:
        """Called once Vault issued (before the install)."""

    def before_install(self, cluster: str, changes: Sequence[Change]) -> None:
        """Called right before the install request (write the intent)."""

    def installed(self, changes: Sequence[Change]) -> None:
        """Called once per pass with every verified install, before the follow-ups run
        (record that the installs happened and the follow-ups are pending)."""

    def completed(self, changes: Sequence[Change]) -> None:
        """Called when the changes and their follow-ups are done (clear the intent)."""


class FollowUpRunner(Protocol):
    """Runs the Active-Active and Replica Of follow-ups for changed certificates."""

    def run(self, changes: Sequence[CertChange]) -> dict[tuple[str, str], str]:
        """Returns an error message by (cluster, name) for each follow-up that failed."""
        ...


class FollowUpWindow(Protocol):
    """The follow-ups of one pass's proxy/syncer installs, open around them."""

    @property
    def refused(self) -> Mapping[str, str]:
        """By cluster: why its proxy/syncer install must not go ahead in this pass."""
        ...

    def installed(self, cluster: str, names: Sequence[str]) -> None:
        """The install request on ``cluster`` answered 200 for ``names`` (proxy/syncer)."""
        ...

    def finish(self, changes: Sequence[CertChange]) -> dict[tuple[str, str], str]:
        """Step 2 for the installed and verified ``changes``; an error by (cluster, name)."""
        ...


@runtime_checkable
class WindowedFollowUps(FollowUpRunner, Protocol):
    """A follow-up runner that opens a window around the installs, to keep the time between
    step 1 and step 2 short: :class:`vault_bridge.rotation.followups.FollowUps`."""

    def window(
        self, clusters: Sequence[str], changes: Sequence[CertChange] = ()
    ) -> AbstractContextManager[FollowUpWindow]:
        """Opened right before installing ``changes`` (proxy/syncer) on ``clusters``
        (discovery, tasks in flight, the lock, step 2 armed); closed once step 2 is over."""
        ...


class _WithoutWindow:
    """The window of a runner that has none (or of no runner): step 2 after the installs."""

    refused: Mapping[str, str] = {}

    def __init__(self, runner: FollowUpRunner | None) -> None:
        self._runner = runner

    def installed(self, cluster: str, names: Sequence[str]) -> None:
        return None

    def finish(self, changes: Sequence[CertChange]) -> dict[tuple[str, str], str]:
        if not changes or self._runner is None:
            return {}
        return self._runner.run(changes)


class NoHooks:
    def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
        return None

    def issued(self, spec: CertSpec, issued: IssuedCertificate) -> None:
        return None

    def before_install(self, cluster: str, changes: Sequence[Change]) -> None:
        return None

    def installed(self, changes: Sequence[Change]) -> None:
        return None

    def completed(self, changes: Sequence[Change]) -> None:
        return None


class _DatabaseHooks:
    """The rotation hooks as a database certificate (``bdb:<database>``) calls them."""

    def __init__(self, hooks: RotationHooks) -> None:
        self.hooks = hooks

    def before_issue(self, spec: CertSpec, *, explicit: bool = False) -> None:
        if explicit:
            self.hooks.before_issue(spec, explicit=True)
        else:
            self.hooks.before_issue(spec)

    def issued(self, spec: CertSpec, issued: IssuedCertificate) -> None:
        self.hooks.issued(spec, issued)

    def before_install(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None:
        self.hooks.before_install(cluster, [Change(cluster, name, issued, previous)])

    def installed(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None:
        self.hooks.installed([Change(cluster, name, issued, previous)])

    def completed(
        self,
        cluster: str,
        name: str,
        issued: IssuedCertificate,
        previous: InstalledCertificate | None,
    ) -> None:
        self.hooks.completed([Change(cluster, name, issued, previous)])
