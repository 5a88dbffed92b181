"""The drill journal: what happened during a run, with timestamps, as data (after chaostoolkit's).

A :class:`Journal` records the steady state before and after, each step of the method and each
rollback (start and end in UTC ISO 8601, duration from a monotonic clock, status, error, details
the caller fills), free-form events, and the final status and measurements (RTO, key counts,
digests, loss window...). :meth:`Journal.to_dict` is the JSON form; :mod:`resilience.runs.html`
renders it.

Redaction: every string that leaves the journal (:meth:`Journal.to_dict`, hence the JSON and the
HTML) has passwords of DSNs (URL and `password=` forms) and every value given to
:meth:`Journal.register_secret` replaced by ``***``. It is applied on output, so a secret
registered late is still removed from what was recorded before.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from resilience.errors import DataError
from resilience.infra.fsutil import atomic_write
from resilience.infra.redact import Redactor

SCHEMA_VERSION = 1

StepStatus = Literal["running", "ok", "failed", "skipped"]
RunStatus = Literal["running", "completed", "failed", "aborted"]
Phase = Literal["before", "after"]

_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PASSWORD_KV_RE = re.compile(r"(?i)(\b\w*password\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&;,]+)")


def now_iso() -> str:
    """The current UTC time in ISO 8601 with microseconds (``...+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


# --- records ---------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """One step (or rollback): filled by :meth:`Journal.step`; ``details`` is the caller's."""

    name: str
    kind: Literal["step", "rollback"] = "step"
    status: StepStatus = "running"
    started_at: str = ""
    ended_at: str | None = None
    duration_s: float | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        """Mark the step skipped (it ends normally but did nothing)."""
        self.status = "skipped"
        self.details.setdefault("reason", reason)

    def fail(self, message: str) -> None:
        """Mark the step failed without raising (a check that found the result wrong)."""
        self.status = "failed"
        self.error = message

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration_s,
            "error": self.error,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepRecord:
        return cls(
            name=str(data["name"]),
            kind=data.get("kind", "step"),
            status=data.get("status", "ok"),
            started_at=str(data.get("started_at", "")),
            ended_at=data.get("ended_at"),
            duration_s=data.get("duration_s"),
            error=data.get("error"),
            details=dict(data.get("details") or {}),
        )


@dataclass
class Event:
    at: str
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "message": self.message, "data": self.data}


class Journal:
    """The record of one drill or restore run. Safe to append to from several threads."""

    def __init__(self, title: str, run_id: str | None = None) -> None:
        self.title = title
        self.run_id = run_id or uuid.uuid4().hex
        self.status: RunStatus = "running"
        self.deviated = False
        self.started_at: str | None = None
        self.ended_at: str | None = None
        self.duration_s: float | None = None
        self.steady_states: dict[str, dict[str, Any]] = {}
        self.steps: list[StepRecord] = []
        self.rollbacks: list[StepRecord] = []
        self.events: list[Event] = []
        self.measurements: dict[str, Any] = {}
        self._redactor = Redactor()
        self._lock = threading.Lock()
        self._started_mono: float | None = None

    # --- recording -------------------------------------------------------------------------

    def register_secret(self, value: str) -> None:
        """Make sure ``value`` never appears in any output of this journal."""
        self._redactor.register(value)

    def start(self) -> None:
        """Mark the start of the run (done automatically by the first record; idempotent)."""
        with self._lock:
            if self.started_at is None:
                self.started_at = now_iso()
                self._started_mono = time.monotonic()

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def steady_state(self, phase: Phase, data: Mapping[str, Any]) -> None:
        """Record the steady state measured ``before`` the fault or ``after`` the method."""
        if phase not in ("before", "after"):
            raise ValueError(f"steady state phase must be 'before' or 'after', not {phase!r}")
        self.start()
        with self._lock:
            self.steady_states[phase] = {"at": now_iso(), "data": dict(data)}

    @contextlib.contextmanager
    def _record(self, name: str, kind: Literal["step", "rollback"]) -> Iterator[StepRecord]:
        self.start()
        record = StepRecord(name=name, kind=kind, started_at=now_iso())
        with self._lock:
            (self.steps if kind == "step" else self.rollbacks).append(record)
        began = time.monotonic()
        try:
            yield record
        except BaseException as exc:
            record.status = "failed"
            record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise
        else:
            if record.status == "running":
                record.status = "ok"
        finally:
            record.duration_s = max(0.0, time.monotonic() - began)
            record.ended_at = now_iso()

    def step(self, name: str) -> contextlib.AbstractContextManager[StepRecord]:
        """Time one step: ``with journal.step("export") as s: s.details["keys"] = n``.

        An exception marks the step failed with its message and propagates.
        """
        return self._record(name, "step")

    def rollback(self, name: str) -> contextlib.AbstractContextManager[StepRecord]:
        """Like :meth:`step`, for undoing something (listed apart)."""
        return self._record(name, "rollback")

    def add(self, record: StepRecord) -> None:
        """Append a step or rollback timed elsewhere (the steps of a run this one started,
        read from that run's own journal), by its ``kind``."""
        self.start()
        with self._lock:
            (self.steps if record.kind == "step" else self.rollbacks).append(record)

    def event(self, kind: str, message: str, **data: Any) -> None:
        """Record something that happened at a point in time (fault injected, alert seen...)."""
        self.start()
        with self._lock:
            self.events.append(Event(at=now_iso(), kind=kind, message=message, data=data))

    def finish(
        self,
        status: Literal["completed", "failed", "aborted"],
        deviated: bool,
        measurements: Mapping[str, Any] | None = None,
    ) -> None:
        """Close the run with its status, whether the steady state deviated, and its numbers."""
        if status not in ("completed", "failed", "aborted"):
            raise ValueError(f"journal status must be completed, failed or aborted, not {status!r}")
        if self.finished:
            raise ValueError(f"journal {self.run_id} is already finished ({self.status})")
        self.start()
        with self._lock:
            self.status = status
            self.deviated = bool(deviated)
            self.measurements.update(measurements or {})
            self.ended_at = now_iso()
            began = self._started_mono if self._started_mono is not None else time.monotonic()
            self.duration_s = max(0.0, time.monotonic() - began)

    # --- output ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The journal as plain JSON data, redacted."""
        with self._lock:
            data: dict[str, Any] = {
                "schema": SCHEMA_VERSION,
                "title": self.title,
                "run_id": self.run_id,
                "status": self.status,
                "deviated": self.deviated,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "duration_s": self.duration_s,
                "steady_states": {
                    phase: dict(state) for phase, state in self.steady_states.items()
                },
                "steps": [record.to_dict() for record in self.steps],
                "rollbacks": [record.to_dict() for record in self.rollbacks],
                "events": [event.to_dict() for event in self.events],
                "measurements": dict(self.measurements),
            }
        return cast(dict[str, Any], self._redactor.data(data))

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as indented JSON, atomically; returns the path."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False, ensure_ascii=False)
        return atomic_write_text(Path(path), text + "\n")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Journal:
        """A journal from :meth:`to_dict` output (already redacted: secrets are not restored)."""
        try:
            journal = cls(str(data["title"]), run_id=str(data["run_id"]))
            journal.status = data.get("status", "running")
            journal.deviated = bool(data.get("deviated", False))
            journal.started_at = data.get("started_at")
            journal.ended_at = data.get("ended_at")
            journal.duration_s = data.get("duration_s")
            journal.steady_states = {
                str(phase): dict(state)
                for phase, state in (data.get("steady_states") or {}).items()
            }
            journal.steps = [StepRecord.from_dict(item) for item in data.get("steps") or []]
            journal.rollbacks = [StepRecord.from_dict(item) for item in data.get("rollbacks") or []]
            journal.events = [
                Event(
                    at=str(item["at"]),
                    kind=str(item["kind"]),
                    message=str(item["message"]),
                    data=dict(item.get("data") or {}),
                )
                for item in data.get("events") or []
            ]
            journal.measurements = dict(data.get("measurements") or {})
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise DataError(f"not a journal: {type(exc).__name__} {exc}") from None
        return journal


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (0644: reports are meant to be read) atomically."""
    return atomic_write(path, text.encode("utf-8"), mode=0o644)
