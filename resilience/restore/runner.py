"""Runs a plan of steps, each with a `do` and an optional `undo`, timing and journaling each.

On a failure the steps already done are undone in reverse order (each undo journaled as a
rollback), so the service is left in a known mode; then the original error is raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resilience.errors import ResilienceError
from resilience.runs.journal import Journal

Details = dict[str, Any]


@dataclass
class Step:
    name: str
    description: str  # one line for the plan an operator confirms
    do: Callable[[Details], None]  # fills the details it wants journaled
    undo: Callable[[], Details | None] | None = None  # may return details to journal
    #: the service is back once this step is done (a switch's RTO ends here; what follows
    #: is tidying up)
    recovers: bool = False


@dataclass
class StepResult:
    name: str
    status: str
    duration_s: float
    details: Details = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunResult:
    ok: bool
    duration_s: float  # first step start to last step end
    steps: list[StepResult]
    rollbacks: list[StepResult]
    error: str | None = None
    halted: str | None = None  # why the undo stopped before the first step (UndoHalted)
    #: first step start to the end of the last step that ``recovers`` (else the whole run)
    rto_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def one(r: StepResult) -> dict[str, Any]:
            return {
                "name": r.name,
                "status": r.status,
                "duration_s": round(r.duration_s, 3),
                "details": r.details,
                "error": r.error,
            }

        return {
            "ok": self.ok,
            "duration_s": round(self.duration_s, 3),
            "steps": [one(s) for s in self.steps],
            "rollbacks": [one(r) for r in self.rollbacks],
            "error": self.error,
            "halted": self.halted,
            "rto_s": None if self.rto_s is None else round(self.rto_s, 3),
        }


class UndoHalted(ResilienceError):
    """An undo found that going on would lose data; the steps before it are left as they are
    (the message says what state that is and what to do)."""


class StepFailed(ResilienceError):
    """A step failed and the done steps were undone; `result` tells what happened."""

    def __init__(self, cause: BaseException, result: RunResult) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.result = result
        self.exit_code = getattr(cause, "exit_code", 1)


class Runner:
    def __init__(self, journal: Journal, progress: Callable[[str], None] | None = None) -> None:
        self.journal = journal
        self.progress = progress or (lambda _m: None)

    def run(self, steps: list[Step]) -> RunResult:
        started = time.monotonic()
        done: list[Step] = []
        results: list[StepResult] = []
        recovered: float | None = None
        for number, step in enumerate(steps, 1):
            self.progress(f"[{number}/{len(steps)}] {step.description}")
            t0 = time.monotonic()
            try:
                with self.journal.step(step.name) as record:
                    step.do(record.details)
                    status = record.status if record.status != "running" else "ok"
                    details = record.details
            except BaseException as exc:  # also KeyboardInterrupt: leave a known mode
                message = str(exc) or type(exc).__name__
                results.append(StepResult(step.name, "failed", time.monotonic() - t0, {}, message))
                self.progress(f"step {step.name} failed: {message}; undoing {len(done)} step(s)")
                rollbacks, halted = self._undo(done)
                result = RunResult(
                    False, time.monotonic() - started, results, rollbacks, message, halted
                )
                raise StepFailed(exc, result) from exc
            results.append(StepResult(step.name, status, time.monotonic() - t0, dict(details)))
            done.append(step)
            if step.recovers:
                recovered = time.monotonic() - started
        total = time.monotonic() - started
        return RunResult(True, total, results, [], rto_s=total if recovered is None else recovered)

    def _undo(self, done: list[Step]) -> tuple[list[StepResult], str | None]:
        """Undo in reverse; an undo that fails is reported and the rest still run, except
        :class:`UndoHalted`, which stops here: going on would lose data."""
        rollbacks: list[StepResult] = []
        for step in reversed(done):
            if step.undo is None:
                continue
            t0 = time.monotonic()
            try:
                with self.journal.rollback(f"undo {step.name}") as record:
                    record.details.update(step.undo() or {})
                # what the undo did (what it carried back) is in --json and the alert too
                rollbacks.append(
                    StepResult(step.name, "ok", time.monotonic() - t0, dict(record.details))
                )
            except UndoHalted as exc:
                rollbacks.append(
                    StepResult(step.name, "halted", time.monotonic() - t0, {}, str(exc))
                )
                self.progress(f"undo stopped at {step.name}: {exc}")
                return rollbacks, str(exc)
            except Exception as exc:  # keep undoing the rest; report every failure
                rollbacks.append(
                    StepResult(step.name, "failed", time.monotonic() - t0, {}, str(exc))
                )
        return rollbacks, None
