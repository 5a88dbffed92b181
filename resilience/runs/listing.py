"""The run records under `RESILIENCE_RUNS_DIR`, read back: a list newest first (`runs.list`) and
their retention (`runs.prune`).

Each record's outcome: `ok`, `failed`, `aborted`, `dry run` (a dry run's record: its
`dry-run` event, or `dry_run` in its measurements) or `refused` (failed before any step ran:
a preflight, a lock or an input refused it). Dry runs and refusals are kept
`RESILIENCE_RUNS_KEEP_DAYS_MINOR` days, every other record `RESILIENCE_RUNS_KEEP_DAYS`.
A record that cannot be read is listed as `unreadable` and never deleted.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from resilience.config import Settings
from resilience.runs.record import JOURNAL_JSON

MINOR = ("dry run", "refused")


@dataclass
class RunSummary:
    path: Path
    started_at: datetime | None
    command: str
    company_id: str | None
    outcome: str
    rto_s: float | None
    duration_s: float | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "command": self.command,
            "company_id": self.company_id,
            "outcome": self.outcome,
            "rto_s": self.rto_s,
            "duration_s": self.duration_s,
            "error": self.error,
        }


def _dry(data: dict[str, Any]) -> bool:
    if any(e.get("kind") == "dry-run" for e in data.get("events") or [] if isinstance(e, dict)):
        return True
    measurements = data.get("measurements") or {}
    if measurements.get("dry_run") is True:
        return True
    return any(isinstance(v, dict) and v.get("dry_run") is True for v in measurements.values())


def _outcome(data: dict[str, Any]) -> str:
    if _dry(data):
        return "dry run"
    status = data.get("status")
    if status == "completed":
        return "ok"
    if status == "failed" and not data.get("steps"):
        return "refused"
    return str(status)


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def read_run(directory: Path) -> RunSummary:
    try:
        data: Any = json.loads((directory / JOURNAL_JSON).read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return RunSummary(directory, None, directory.name, None, "unreadable", None, None, str(exc))
    title = str(data.get("title") or directory.name)
    command, _, company = title.partition(" ")
    failure = next(
        (
            str(e.get("message"))
            for e in data.get("events") or []
            if isinstance(e, dict) and e.get("kind") == "failure"
        ),
        None,
    )
    rto = (data.get("measurements") or {}).get("rto_s")
    duration = data.get("duration_s")
    return RunSummary(
        directory,
        _time(data.get("started_at")),
        command,
        company or None,
        _outcome(data),
        float(rto) if isinstance(rto, int | float) else None,
        float(duration) if isinstance(duration, int | float) else None,
        failure,
    )


def list_runs(runs_dir: Path, *, limit: int | None = None) -> list[RunSummary]:
    """Every record under `runs_dir`, newest first (by the time in its name)."""
    if not runs_dir.is_dir():
        return []
    dirs = sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
    if limit is not None:
        dirs = dirs[:limit]
    return [read_run(d) for d in dirs]


def prune_runs(
    settings: Settings, *, dry_run: bool = True, now: datetime | None = None
) -> dict[str, Any]:
    """Delete the records past their retention (with ``dry_run``: only say which)."""
    moment = now or datetime.now(UTC)
    keep = timedelta(days=settings.runs_keep_days)
    keep_minor = timedelta(days=settings.runs_keep_days_minor)
    expired: list[RunSummary] = []
    kept = 0
    for run in list_runs(settings.runs_dir):
        if run.started_at is None:  # unreadable: never deleted
            kept += 1
            continue
        limit = keep_minor if run.outcome in MINOR else keep
        if moment - run.started_at > limit:
            expired.append(run)
        else:
            kept += 1
    if not dry_run:
        for run in expired:
            shutil.rmtree(run.path, ignore_errors=True)
    return {
        "ok": True,
        "dry_run": dry_run,
        "runs_dir": str(settings.runs_dir),
        "deleted" if not dry_run else "would_delete": [r.to_dict() for r in expired],
        "kept": kept,
        "keep_days": settings.runs_keep_days,
        "keep_days_minor": settings.runs_keep_days_minor,
    }
