"""The emergency switch: PostgreSQL -> Baileys files (`to-files`) and back (`to-postgres`).

One switch is one :class:`~.session.SwitchSession` (target, options, events, open resources).
:func:`switch` reads top to bottom: the preflight's facts (:mod:`.preflight` gathers them,
:mod:`.refusals` judges them), the plan built once from them (:mod:`.plans`: its descriptions
are what the operator confirms, its steps what runs), confirm, run (:mod:`.runner`). To files,
the files come from one source chosen once (:mod:`.sources`: a live export, the kept directory,
the newest snapshot or the mirror's copy). When PostgreSQL is unreachable the stop runs beside
the install of the copy (waited for before the code and flags change). The RTO ends with
verify (:mod:`.verify`: the service's log lines and health, never a file we wrote); the
directory the new one replaced is removed after it (a failed switch leaves it as
``.previous-company_<id>-<stamp>``; the next export sweeps it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resilience.errors import InputError, ResilienceError
from resilience.infra.progress import NO_METERS, Meters
from resilience.restore.facts import Direction, Preflight, ToFilesFacts
from resilience.restore.plans import ToFiles, ToPostgres, plan_for
from resilience.restore.preflight import preflight
from resilience.restore.refusals import REFUSALS
from resilience.restore.runner import Runner, RunResult, Step
from resilience.restore.session import Events, SwitchOptions, SwitchSession
from resilience.restore.target import Target
from resilience.runs.journal import Journal

__all__ = [
    "Direction",
    "Preflight",
    "SwitchOutcome",
    "ToFiles",
    "ToPostgres",
    "build_plan",
    "plan_for",
    "preflight",
    "run_switch",
    "switch",
]


def build_plan(target: Target, facts: Preflight, *, force: bool) -> list[Step]:
    """The steps for ``facts`` outside a run (a look at the plan; tests)."""
    options = SwitchOptions(force=force)
    session = SwitchSession(target, facts.direction, options, Events(Journal("plan")))
    return plan_for(session, facts)


# --- one call for commands and drills -------------------------------------------------------------
@dataclass
class SwitchOutcome:
    preflight: Preflight
    result: RunResult | None  # None for a dry run
    #: client-server round trips to PostgreSQL, preflight and export together (to-files)
    round_trips: int | None = None
    preflight_s: float = 0.0  # how long the preflight took (part of the RTO)

    @property
    def rto_s(self) -> float | None:
        """The preflight, then first step start to the service verified (the whole run when
        no step recovers); None for a dry run. An operator's time to confirm is not in it."""
        if self.result is None:
            return None
        rto = self.result.rto_s
        return self.preflight_s + (self.result.duration_s if rto is None else rto)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"preflight": self.preflight.to_dict()}
        if self.result is not None and self.rto_s is not None:
            data["run"] = self.result.to_dict()
            data["rto_s"] = round(self.rto_s, 3)
            data["preflight_s"] = round(self.preflight_s, 3)
        if self.round_trips is not None:
            data["db_round_trips"] = self.round_trips
        return data


def run_switch(
    target: Target,
    direction: Direction,
    *,
    journal: Journal,
    dry_run: bool = False,
    force: bool = False,
    confirm: Callable[[Preflight], bool] | None = None,
    progress: Callable[[str], None] | None = None,
    meters: Meters = NO_METERS,
) -> SwitchOutcome:
    """The switch of ``target`` in ``direction`` as one session (:func:`switch` of it): without
    ``confirm`` nobody is asked, so the run is unattended."""
    session = SwitchSession(
        target,
        direction,
        SwitchOptions(dry_run=dry_run, force=force, unattended=confirm is None),
        Events(journal, progress, meters),
        confirm,
    )
    return switch(session)


def switch(session: SwitchSession) -> SwitchOutcome:
    """Preflight, plan, (confirm), run. Raises on refusal, or on failure after undoing the done
    steps (:class:`~.runner.StepFailed`). PM2 is reached through one connection for the whole
    run; to files, the preflight's database connection is kept for the export."""
    with session.opened():
        started = time.perf_counter()
        facts, steps = _checked_preflight(session)
        preflight_s = time.perf_counter() - started
        if session.options.dry_run:
            session.events.event("dry-run", "dry run: nothing changed")
            return SwitchOutcome(facts, None, session.round_trips)
        confirm = session.confirm
        if confirm is not None and not confirm(facts):  # the operator's time: not RTO
            raise InputError("not confirmed: nothing changed")
        result = Runner(session.journal, session.events.say).run(steps)
        return SwitchOutcome(facts, result, session.round_trips, preflight_s)


def _checked_preflight(session: SwitchSession) -> tuple[Preflight, list[Step]]:
    """The facts and the plan built from them, or the refusal (raised after starting again a
    service whose stop the preflight had begun)."""

    def begin_stop(_facts: ToFilesFacts) -> None:
        session.begin_stop()
        session.events.event(
            "stop-begun",
            "every check that needs no database passed: the service is stopped while the "
            "database answers the preflight",
        )

    direction = session.direction
    try:
        facts = preflight(
            session.target,
            direction,
            force=session.options.force,
            link=session.link,
            # unattended, a live database to ask: the stop need not wait for the preflight's
            # statement (on a slow database, a whole round trip)
            before_query=begin_stop if session.early_stop else None,
        )
        steps = _plan_or_none(session, facts)
        facts.plan = [step.description for step in steps or []]
        session.events.event("preflight", f"{direction} preflight", **facts.to_dict())
        if facts.problems or steps is None:
            kind = REFUSALS.get(facts.refusal, InputError)
            refused = kind(f"preflight refused {direction}: " + "; ".join(facts.problems))
            refused.details = {"preflight": facts.to_dict()}
            raise refused
    except BaseException as failed:
        if session.stopping is None:
            raise
        note = session.start_again()
        if isinstance(failed, ResilienceError) and failed.details:  # refused: said in one
            again = type(failed)(str(failed) + note)  # line, with what was done
            again.details = failed.details
            raise again from None
        raise
    return facts, steps


def _plan_or_none(session: SwitchSession, facts: Preflight) -> list[Step] | None:
    """The plan; None when the facts already refuse the switch and no plan can be made of
    them (an unreadable switch state is one of the problems then)."""
    try:
        return plan_for(session, facts)
    except ResilienceError:
        if facts.problems:
            return None
        raise
