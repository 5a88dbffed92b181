"""Continuous WAL archiving that never blocks the server: a local spool and a pusher.

PostgreSQL runs as its own user and cannot run our virtualenv, so its `archive_command` only
copies each segment into the spool, atomically (a hidden temp name, fsync, rename, fsync of the
directory), and fails when the copy fails: PostgreSQL then keeps the segment and retries.
The pusher (`backup.wal-push`, one pass; `backup.wal-daemon`, a loop under PM2) sends every
spooled file to every region with `barman-cloud-wal-archive`'s own code,
RESILIENCE_WAL_PUSH_PROCESSES uploads at once per region and both regions at once (as
pgBackRest's asynchronous archive-push with process-max), oldest first, and deletes it from the
spool only once every region has it. Every region's uploads run in one process of barman's
Python (`walbatch.py`), each segment compressed once for all regions, not one process per
segment and region, which spent most of its time starting Python.
A region's first failure stops new uploads to it for the pass; segments already under way
finish, so a region may hold later segments than one it lacks: that gap is named in the result
(and the restore refuses to pass it, `resilience.backup.pitr`) until the next pass fills it.
A region that is down never blocks archiving: the spool grows, and an alert fires when it holds
more than RESILIENCE_WAL_SPOOL_ALERT_SEGMENTS files or its oldest is older than
RESILIENCE_WAL_SPOOL_ALERT_AGE seconds. Once the region is back it is caught up.

Which archive has which file is kept in the spool, `<spool>/.pushed/<region>.<bucket>.<prefix>/`
(a changed bucket or prefix starts from nothing).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resilience.alerting.channels import notify
from resilience.backup.barman import archives
from resilience.backup.walupload import push_regions
from resilience.config import Settings
from resilience.errors import ConfigError, PartialFailure, ResilienceError
from resilience.infra.fsutil import atomic_write
from resilience.infra.s3 import regions_from_settings
from resilience.runs.record import recorded_run

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

#: What archive_command puts in the spool: segments, partial segments, backup labels, histories.
WAL_FILE_RE = re.compile(
    r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$"
)
PUSHED_DIR = ".pushed"
STATE_FILE = ".pusher.json"


def archive_command(spool: Path) -> str:
    """The `archive_command` that copies a segment into `spool` atomically (PostgreSQL's %p and
    %f); it fails, and PostgreSQL retries, when the spool is missing or not writable."""
    d = shlex.quote(str(spool))
    part = f"{d}/.%f.part"
    return f"cp %p {part} && sync {part} && mv -f {part} {d}/%f && sync {d}"


@dataclass
class SpoolState:
    files: int
    oldest: str | None
    oldest_age_s: float | None

    def to_dict(self) -> dict[str, Any]:
        age = None if self.oldest_age_s is None else round(self.oldest_age_s, 1)
        return {"files": self.files, "oldest": self.oldest, "oldest_age_s": age}


@dataclass
class PushResult:
    pushed: dict[str, list[str]] = field(default_factory=dict)  # region -> files sent now
    errors: dict[str, str] = field(default_factory=dict)  # region -> why it failed
    #: region -> spooled files it lacks though it holds a later one (a gap until filled)
    gaps: dict[str, list[str]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)  # in every region now, gone from spool
    spool: SpoolState | None = None
    alerts: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    record: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pushed": {r: len(files) for r, files in self.pushed.items()},
            "pushed_files": self.pushed,
            "errors": self.errors,
            "gaps": self.gaps,
            "removed": len(self.removed),
            "spool": self.spool.to_dict() if self.spool else None,
            "alerts": self.alerts,
            "duration_s": round(self.duration_s, 3),
            "record": str(self.record) if self.record else None,
        }


class WalSpool:
    """The spool directory archive_command writes into, and what each region has of it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def problem(self) -> str | None:
        """Why archive_command cannot write here (None when it can)."""
        if not self.dir.is_dir():
            return f"WAL spool {self.dir} is missing"
        if not os.access(self.dir, os.W_OK | os.X_OK):
            return f"WAL spool {self.dir} is not writable"
        return None

    def files(self) -> list[str]:
        """Spooled WAL files, oldest first (WAL names sort in write order)."""
        try:
            names = [e.name for e in os.scandir(self.dir) if e.is_file()]
        except OSError:
            return []
        return sorted(n for n in names if WAL_FILE_RE.fullmatch(n))

    def state(self, now: float | None = None) -> SpoolState:
        files = self.files()
        if not files:
            return SpoolState(0, None, None)
        try:
            mtime = (self.dir / files[0]).stat().st_mtime
        except OSError:
            return SpoolState(len(files), files[0], None)
        return SpoolState(len(files), files[0], max(0.0, (now or time.time()) - mtime))

    def _marks(self, region: str) -> Path:
        return self.dir / PUSHED_DIR / region

    def has(self, region: str, name: str) -> bool:
        return (self._marks(region) / name).exists()

    def mark(self, region: str, name: str) -> None:
        marks = self._marks(region)
        marks.mkdir(parents=True, exist_ok=True, mode=0o700)
        (marks / name).touch()

    def remove(self, name: str, regions: list[str]) -> None:
        """Delete a file every region has, then its marks (a crash in between re-pushes it:
        barman-cloud-wal-archive accepts the same segment twice)."""
        with contextlib.suppress(FileNotFoundError):
            (self.dir / name).unlink()
        for region in regions:
            with contextlib.suppress(FileNotFoundError):
                (self._marks(region) / name).unlink()

    # --- alert cooldowns kept across runs (cron and daemon alike) ------------------------------
    def _state_path(self) -> Path:
        return self.dir / STATE_FILE

    def last_alerts(self) -> dict[str, float]:
        try:
            data = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): float(v) for k, v in data.get("alerted", {}).items()}

    def save_alerts(self, alerted: dict[str, float]) -> None:
        with contextlib.suppress(OSError):
            atomic_write(self._state_path(), json.dumps({"alerted": alerted}).encode())


def push_once(
    settings: Settings,
    *,
    progress: Progress | None = None,
    alerted: dict[str, float] | None = None,
) -> PushResult:
    """One pass of the pusher (no run record: see :func:`wal_push`)."""
    say = progress or (lambda _m: None)
    began = time.monotonic()
    spool = WalSpool(settings.wal_spool_dir)
    result = PushResult()
    cooldowns = alerted if alerted is not None else spool.last_alerts()
    problem = spool.problem()
    if problem:
        message = (
            f"{problem}: archive_command fails and PostgreSQL keeps its WAL "
            "(pg_wal grows) until the spool is back (RESILIENCE_WAL_SPOOL_DIR)"
        )
        _alert(settings, "spool", message, cooldowns, result)
        result.duration_s = time.monotonic() - began
        error = ConfigError(message)
        error.details = result.to_dict()
        raise error
    regions = archives(settings, regions_from_settings(settings))
    files = spool.files()
    if files:
        for name, region in push_regions(settings, regions, spool, files, say).items():
            result.pushed[name] = region.sent
            if region.failure:
                gap = region.gap
                result.errors[name] = region.failure + (
                    f" (a gap: {len(gap)} file(s) from {gap[0]} missing before later ones "
                    "it holds, until the next pass)"
                    if gap
                    else ""
                )
            if region.gap:
                result.gaps[name] = region.gap
        names = [a.mark for a in regions]
        for name in files:
            if all(spool.has(r, name) for r in names):
                spool.remove(name, names)
                result.removed.append(name)
    result.spool = spool.state()
    _check_thresholds(settings, result, cooldowns)
    if alerted is None:
        spool.save_alerts(cooldowns)
    result.duration_s = time.monotonic() - began
    count = sum(len(v) for v in result.pushed.values())
    say(
        f"WAL push: {count} sent, {len(result.removed)} in every region and removed, "
        f"{result.spool.files} waiting in the spool"
    )
    return result


def _check_thresholds(settings: Settings, result: PushResult, cooldowns: dict[str, float]) -> None:
    state = result.spool
    if state is None:
        return
    reasons = []
    if state.files > settings.wal_spool_alert_segments:
        reasons.append(
            f"{state.files} WAL files wait in the spool "
            f"(more than {settings.wal_spool_alert_segments})"
        )
    if state.oldest_age_s is not None and state.oldest_age_s > settings.wal_spool_alert_age:
        reasons.append(
            f"the oldest ({state.oldest}) is {state.oldest_age_s:.0f} s old "
            f"(over {settings.wal_spool_alert_age:g} s)"
        )
    if not reasons:
        for key in [k for k in cooldowns if k.startswith("backlog")]:
            cooldowns.pop(key)  # the next backlog alerts at once
        return
    failing = "; ".join(result.errors.values())
    message = "WAL archive behind: " + "; ".join(reasons) + (f"; {failing}" if failing else "")
    # a backlog with other regions failing is news: it has a cooldown of its own
    key = ":".join(["backlog", *sorted(result.errors)])
    _alert(settings, key, message, cooldowns, result)


def _alert(
    settings: Settings, key: str, message: str, cooldowns: dict[str, float], result: PushResult
) -> None:
    result.alerts.append(message)
    now = time.time()
    if now - cooldowns.get(key, 0.0) < settings.alert_cooldown:
        return
    cooldowns[key] = now
    notify(settings, message, level="error", tags={"wal_archive": key})


def wal_push(settings: Settings, *, progress: Progress | None = None) -> PushResult:
    """`backup.wal-push`: one recorded pass; PartialFailure (exit 6) when a region failed,
    StorageError when every region failed."""
    with recorded_run(settings, "backup.wal-push") as record:
        try:
            result = push_once(settings, progress=progress)
        except ResilienceError as exc:
            record.journal.measurements.update(exc.details or {})
            raise
        record.journal.measurements.update(result.to_dict())
        _raise_for_errors(result)
    result.record = record.path
    return result


def _raise_for_errors(result: PushResult) -> None:
    if not result.errors:
        return
    waiting = result.spool.files if result.spool else 0
    raise PartialFailure(
        "WAL push failed for "
        + "; ".join(f"{e}" for e in result.errors.values())
        + f" ({waiting} file(s) kept in the spool until every region has them)",
        6,
        result.to_dict(),
    )


def wal_daemon(
    settings: Settings,
    *,
    progress: Progress | None = None,
    passes: int | None = None,
    wait: Callable[[float], bool] | None = None,
) -> int:
    """`backup.wal-daemon`: push every RESILIENCE_WAL_PUSH_INTERVAL seconds until stopped
    (`passes` bounds it for tests). A pass that fails is logged and recorded, never fatal:
    the next pass retries. `wait(seconds)` returns True to stop."""

    say = progress or (lambda _m: None)
    stopper = threading.Event()
    waiter = wait or stopper.wait
    spool = WalSpool(settings.wal_spool_dir)
    alerted = spool.last_alerts()
    failing: str | None = None
    done = 0
    while passes is None or done < passes:
        began = time.monotonic()
        status: str | None = None
        try:
            result = push_once(settings, progress=None, alerted=alerted)
            spool.save_alerts(alerted)
            sent = sum(len(v) for v in result.pushed.values())
            if sent or result.errors:
                say(json.dumps({"pass": done + 1, **result.to_dict()}, default=str))
            if result.errors:
                status = "; ".join(result.errors.values())
        except ResilienceError as exc:
            status = str(exc)
            say(f"WAL push pass failed: {exc}")
        if status != failing:  # a change of state leaves a run record
            _record_change(settings, failing, status)
            failing = status
        done += 1
        if passes is not None and done >= passes:
            break
        if waiter(max(0.0, settings.wal_push_interval - (time.monotonic() - began))):
            break
    return done


def _record_change(settings: Settings, before: str | None, now: str | None) -> None:
    with contextlib.suppress(ResilienceError), recorded_run(settings, "backup.wal-daemon") as rec:
        rec.journal.measurements.update({"was_failing": before, "failing": now})
        if now:
            rec.journal.event("failure", now)
