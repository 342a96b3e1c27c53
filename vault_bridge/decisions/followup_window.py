"""What the follow-ups decide while their window is open: pure functions of plain values.

Step 2 is planned (:mod:`vault_bridge.decisions.followup_plan`) and armed before the install;
these rules say, from what has been installed and verified since, which armed step may go
(:func:`may_go`), which is still wanted once the pass knows its verified changes and what must
be planned again without the others (:func:`settle`), which errors each change gets
(:func:`change_errors`), and how long the window stayed open (:func:`window_seconds`). The
coordinator in :mod:`vault_bridge.rotation.followups` carries them out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from vault_bridge.decisions.followup_plan import Key

StepKind = Literal["crdb", "replica", "client-cert"]

STAGE_SENT = "request_sent"
STAGE_FINISHED = "finished"


@dataclass(frozen=True)
class ArmedStep:
    """One planned step 2 action, as armed before the install."""

    kind: StepKind
    guid: str | None  # the CRDB of a "crdb" step
    clusters: tuple[str, ...]  # the changing clusters it follows
    keys: tuple[Key, ...]  # the changes it carries, as planned
    fired: bool = False  # given the go already (at an install's 200)
    cancelled: bool = False  # will not run (its thread gave up waiting)


def may_go(step: ArmedStep, installed: Collection[Key]) -> bool:
    """May it go, given the changes installed so far? A CRDB update once each of its changing
    clusters has one installed (syncing whatever is installed is always right); a database
    update only once every change it carries is installed."""
    if step.kind == "crdb":
        return {c for c, _ in installed} >= set(step.clusters)
    return set(step.keys) <= set(installed)


def still_wanted(step: ArmedStep, verified: Collection[Key]) -> bool:
    """Still to do once ``verified`` are the changes installed and verified? A CRDB update
    when any of its changes is; a database update only when all of them are."""
    if step.kind == "crdb":
        return any(k in verified for k in step.keys)
    return set(step.keys) <= set(verified)


@dataclass(frozen=True)
class Settlement:
    """What becomes of the armed steps once the verified changes are known."""

    fire: tuple[int, ...]  # indexes of the steps to give the go now
    cancel: tuple[int, ...]  # indexes of the steps that must not run
    keys: tuple[tuple[Key, ...], ...]  # per step, the verified changes it carries
    replan: tuple[Key, ...]  # verified changes no armed step takes care of: plan them again
    covered_guids: frozenset[str]  # CRDBs an armed step updates: not planned again


def settle(steps: Sequence[ArmedStep], armed: Iterable[Key], verified: Sequence[Key]) -> Settlement:
    """Give the go to the armed steps the verified changes need and cancel the others. A
    database update that also carries a change that did not make it is cancelled, and its
    verified changes are planned again without it; a CRDB update goes whatever made it."""
    wanted = set(verified)
    covered = set(armed)
    fire: list[int] = []
    cancel: list[int] = []
    guids: set[str] = set()
    for index, step in enumerate(steps):
        cancelled = step.cancelled
        if not step.fired and not cancelled and still_wanted(step, wanted):
            fire.append(index)
        elif not step.fired and not cancelled:
            cancel.append(index)
            cancelled = True
            if step.kind != "crdb":
                covered -= set(step.keys)
        if step.kind == "crdb" and not cancelled and step.guid is not None:
            guids.add(step.guid)
    return Settlement(
        fire=tuple(fire),
        cancel=tuple(cancel),
        keys=tuple(tuple(k for k in s.keys if k in wanted) for s in steps),
        replan=tuple(k for k in verified if k not in covered),
        covered_guids=frozenset(guids),
    )


def change_errors(
    planned: Iterable[Mapping[Key, str]],
    failed: Iterable[tuple[Sequence[Key], str]],
    keys: Collection[Key],
) -> dict[Key, str]:
    """The error of each change among ``keys``: what could not be planned, then every failed
    step that carried it (``failed``: the keys of a step and its error), joined by ``; ``."""
    errors = {k: v for plan in planned for k, v in plan.items() if k in keys}
    for step_keys, error in failed:
        for key in step_keys:
            errors[key] = f"{errors[key]}; {error}" if key in errors else error
    return errors


def window_seconds(
    install_at: float | None, sent: Sequence[float], done: Sequence[float]
) -> dict[str, float] | None:
    """How long the window of one cluster stayed open: from its install's 200 to the last step
    2 request sent, and to the last step finished. None when the install happened earlier (a
    replay) or no step followed it."""
    if install_at is None or not sent or not done:
        return None
    return {STAGE_SENT: max(sent) - install_at, STAGE_FINISHED: max(done) - install_at}
