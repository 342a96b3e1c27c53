"""Revoking the certificates we replaced: superseded ones after the grace period, orphans at once.

:func:`revoke_due` ends every agent step and every one-shot pass. The queue is
``State.superseded`` (:mod:`vault_bridge.state.records`); whether an entry is due, waits or is dropped is
decided by :func:`vault_bridge.decisions.schedule.revocation_decision`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import timedelta

from vault_bridge.adapters.ports import Vault
from vault_bridge.decisions.schedule import after_failure, revocation_decision
from vault_bridge.errors import LeaseLostError, VaultError, VaultPermissionError
from vault_bridge.models.times import iso
from vault_bridge.rotation.login import LoginCertificate
from vault_bridge.state.journal import IntentJournal
from vault_bridge.state.records import Superseded, log_change

logger = logging.getLogger(__name__)


def revoke_due(
    keeper: IntentJournal,
    vault: Vault,
    *,
    enabled: bool,
    rng: random.Random,
    blocked_for: timedelta,
    prove: Callable[[str], object] | None = None,
) -> None:
    """Revoke the superseded certificates whose grace period is over (``POST <mount>/revoke``
    by serial, by PEM for a role that keeps no copy); drop the expired ones. ``prove`` ([ha]):
    raises :class:`LeaseLostError` unless this replica still leads the cluster; checked right
    before each revocation, which is skipped (its new leader revokes it) when it raises."""
    state = keeper.state
    if state is None or not state.superseded or not keeper.healthy:
        return
    changed = False
    for entry in list(state.superseded):
        now = keeper.clock()
        decision = revocation_decision(
            not_after=entry.not_after,
            revoke_after=entry.revoke_after,
            replacement_done=state.replacement_done(entry),
            backoff=entry.backoff,
            now=now,
        )
        if decision == "drop":
            state.superseded.remove(entry)
            changed = True
            logger.debug("superseded %s expired: nothing to revoke", entry.serial)
            continue
        if decision == "wait" or not enabled or not _still_leads(prove, entry.cluster):
            continue
        try:
            vault.ensure_token()
            try:
                vault.revoke(entry.mount, serial=entry.serial)
            except VaultError as exc:
                if exc.status not in (400, 404) or not entry.pem:
                    raise
                vault.revoke(entry.mount, certificate=entry.pem)  # role with no_store
        except VaultPermissionError as exc:
            logger.error(
                "cannot revoke %s of %s on %s: %s (configuration error; retried at the "
                "next resync or reload)",
                entry.serial,
                entry.name,
                entry.cluster,
                exc,
            )
            retry = replace(entry, next_attempt=now + blocked_for)
            state.superseded[state.superseded.index(entry)] = retry
        except VaultError as exc:
            if exc.status in (400, 404):
                logger.warning("%s cannot be revoked, dropped: %s", entry.serial, exc)
                state.superseded.remove(entry)
            else:
                backoff = after_failure(
                    entry.backoff, now=now, not_after=entry.not_after, rng=rng, error=str(exc)
                )
                logger.warning(
                    "revoking %s failed (%s); retrying at %s",
                    entry.serial,
                    exc,
                    iso(backoff.next_attempt),
                )
                retry = replace(entry, failures=backoff.failures, next_attempt=backoff.next_attempt)
                state.superseded[state.superseded.index(entry)] = retry
        else:
            state.superseded.remove(entry)
            log_change(
                f"revoked the {entry.reason} certificate",
                cluster=entry.cluster,
                certificate=entry.name,
                serial=entry.serial,
                not_after=entry.not_after,
            )
        changed = True
    if changed:
        keeper.save_quietly()


LOGIN = "login"  # the state's name for a cluster's login certificate (cluster/login)


def queue_replaced_logins(
    keeper: IntentJournal, logins: Iterable[LoginCertificate], *, across_restarts: bool
) -> None:
    """Queue the login certificates no request presents any more for revocation after
    ``revoke_grace`` (through :func:`revoke_due`, like a superseded cluster certificate):
    each one this process replaced, and (``across_restarts``: the process owns the state
    alone, no ``[ha]``) the one an earlier process held, remembered as ``<cluster>/login``.
    Only the held certificate is never queued."""
    state = keeper.state
    if state is None or not keeper.healthy:
        return
    now = keeper.clock()
    revoke_after = now + keeper.settings.agent.revoke_grace
    queued = {(e.mount, e.serial) for e in state.superseded}
    changed = False
    for login in logins:
        spec = login.spec
        key = (spec.cluster, LOGIN)
        held = login.held
        held_serial = held.serial if held is not None else None
        old: list[Superseded] = [
            Superseded(
                spec.cluster, LOGIN, r.serial, spec.pki_mount, r.not_after, revoke_after, pem=r.pem
            )
            for r in login.take_replaced()
        ]
        record = state.record(key)
        if across_restarts and record.serial and record.mount and record.not_after:
            old.append(
                Superseded(
                    spec.cluster, LOGIN, record.serial, record.mount, record.not_after, revoke_after
                )
            )
        for entry in old:
            if entry.serial == held_serial or (entry.mount, entry.serial) in queued:
                continue
            state.superseded.append(entry)
            queued.add((entry.mount, entry.serial))
            changed = True
            log_change(
                "login certificate replaced (revoked after revoke_grace)",
                cluster=entry.cluster,
                certificate=LOGIN,
                serial=entry.serial,
                not_after=entry.not_after,
            )
        if held is None and across_restarts and record.serial:
            del state.certificates[key]  # queued: not remembered twice
            changed = True
        elif held is not None and across_restarts and record.serial != held.serial:
            info = held.info
            state.update(
                key,
                serial=held.serial,
                not_before=info.not_before,
                not_after=info.not_after,
                fingerprint=info.fingerprint,
                mount=spec.pki_mount,
            )
            changed = True
    if changed:
        keeper.save_quietly()


def _still_leads(prove: Callable[[str], object] | None, cluster: str) -> bool:
    """[ha]: a fresh proof that this replica leads ``cluster`` (always True without)."""
    if prove is None:
        return True
    try:
        prove(cluster)
    except LeaseLostError as exc:
        logger.info("not revoking for cluster %s: %s", cluster, exc)
        return False
    return True
