"""The operator's restore commands: what `restore.*` tasks run, and what drills run too.

Each takes the operator's settings (nothing about stacks), records the run under the runs dir
(:mod:`resilience.runs.record`), and returns plain results with the record's path; errors carry
the path as `record`. Tasks only parse flags and format what these return.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resilience.alerting.channels import notify
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.config import Settings, service_dsn, validate_company_id
from resilience.errors import DataError, InputError, PartialFailure, ResilienceError
from resilience.files.batch import CompanyFailure, ExportBatch, export_all
from resilience.files.install import prepare_standby
from resilience.files.parallel import StorePool, per_company
from resilience.files.snapshot import Snapshot, take_snapshot
from resilience.infra.oplock import company_lock, operation_lock
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.redact import redact_dsn
from resilience.restore.preflight import Direction, Preflight
from resilience.restore.runner import StepFailed
from resilience.restore.session import Events, SwitchOptions, SwitchSession
from resilience.restore.switch import SwitchOutcome
from resilience.restore.switch import switch as run_session
from resilience.restore.target import file_mode_evidence, make_target, same_directory
from resilience.restore.tenants import tenant_settings
from resilience.runs.record import recorded_run

Progress = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclass
class SwitchRun:
    outcome: SwitchOutcome
    record: Path | None
    journal: dict[str, Any] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.outcome.to_dict(), "record": str(self.record) if self.record else None}


def switch(
    settings: Settings,
    direction: Direction,
    *,
    company_id: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    confirm: Callable[[Preflight], bool] | None = None,
    progress: Progress | None = None,
    meters: Meters = NO_METERS,
    unattended: bool | None = None,
) -> SwitchRun:
    """The emergency switch in `direction`, recorded, as one session
    (:class:`~.session.SwitchSession`); on a failed step the done steps are undone, a Sentry
    event (no secrets) is sent, and :class:`StepFailed` is raised. ``unattended`` (--yes):
    nobody confirms, so the stop may begin during the preflight; by default, when nobody is
    asked (no ``confirm``)."""
    target = make_target(settings, company_id)
    command = f"restore.{direction}"
    with recorded_run(settings, command, target.company_id) as record:
        session = SwitchSession(
            target,
            direction,
            SwitchOptions(
                dry_run=dry_run,
                force=force,
                unattended=confirm is None if unattended is None else unattended,
            ),
            Events(record.journal, progress, meters),
            confirm,
        )
        try:
            with operation_lock(settings, target.company_id, command, record.journal, skip=dry_run):
                outcome = run_session(session)
        except StepFailed as failed:
            _alert_failed_switch(settings, direction, target.company_id, failed)
            raise
        if outcome.result is not None and outcome.rto_s is not None:
            # RTO: until verified; duration: with the tidying up after it
            record.journal.measurements["rto_s"] = round(outcome.rto_s, 3)
            record.journal.measurements["duration_s"] = round(outcome.result.duration_s, 3)
    return SwitchRun(outcome, record.path, record.journal.to_dict())


@dataclass
class SwitchAllRun:
    """``--company all``: each tenant's switch (its own recorded run) or its error."""

    direction: Direction
    runs: dict[str, SwitchRun]
    failures: dict[str, ResilienceError]
    record: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        companies: dict[str, Any] = {}
        for company, run in self.runs.items():
            companies[company] = {"ok": True, **run.to_dict()}
        for company, error in self.failures.items():
            record = getattr(error, "record", None)
            companies[company] = {
                "ok": False,
                **CompanyFailure.of(company, error).to_dict(),
                "record": str(record) if record else None,
            }
        return {
            "direction": self.direction,
            "switched": len(self.runs),
            "failed": len(self.failures),
            "companies": companies,
            "record": str(self.record) if self.record else None,
        }


def switch_all(
    settings: Settings,
    direction: Direction,
    *,
    workers: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> SwitchAllRun:
    """The switch of every tenant the tenants file lists (:mod:`.tenants`), ``workers`` at a
    time, each exactly as :func:`switch` of that company runs it, unattended. A tenant's
    failure (refusal, failed step undone) is reported with its id and never stops the others;
    :class:`PartialFailure` when any failed, with the exit code of the first failure."""
    tenants = tenant_settings(settings)
    count = workers or settings.restore_workers
    with recorded_run(settings, f"restore.{direction}", None) as record:
        record.journal.event(
            "tenants", f"{len(tenants)} tenant(s), {count} at a time", companies=list(tenants)
        )

        def one(company: str) -> SwitchRun:
            return switch(
                tenants[company], direction, company_id=company, dry_run=dry_run, force=force
            )

        def done(company: str, outcome: SwitchRun | ResilienceError) -> None:
            failed = isinstance(outcome, ResilienceError)
            if progress is not None:
                progress(f"{company}: {'FAILED' if failed else 'switched'}")

        outcomes = per_company(list(tenants), one, workers=count, done=done)
        runs = {c: o for c, o in outcomes if not isinstance(o, ResilienceError)}
        failures = {c: o for c, o in outcomes if isinstance(o, ResilienceError)}
        result = SwitchAllRun(direction, runs, failures)
        record.journal.measurements.update(
            workers=count,
            switched=sorted(runs),
            failed={c: type(e).__name__ for c, e in failures.items()},
            rto_s={c: r.outcome.rto_s for c, r in runs.items()},
        )
        if failures:
            first = next(iter(failures.values()))
            _failed_companies(
                f"restore.{direction}",
                {c: str(e) for c, e in failures.items()},
                first.exit_code,
                result.to_dict(),
                done_verb="switched",
            )
    result.record = record.path
    return result


def _alert_failed_switch(
    settings: Settings, direction: str, company_id: str, failed: StepFailed
) -> None:
    halted = failed.result.halted
    tags = {"direction": direction, "company": company_id}
    extra = {"run": failed.result.to_dict()}
    if halted:
        message = (
            f"CRITICAL: emergency switch {direction} for company {company_id} failed and "
            f"its undo stopped to keep data: {halted}"
        )
        notify(settings, message, level="fatal", tags=tags, extra=extra)
    else:
        message = f"emergency switch {direction} failed at a step and was undone: {failed}"
        notify(settings, message, level="error", tags=tags, extra=extra, telegram=False)


@dataclass
class ExportRun:
    batch: ExportBatch
    record: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.batch.to_dict(), "record": str(self.record) if self.record else None}


def _failed_companies(
    what: str, failures: dict[str, str], exit_code: int, details: Any, done_verb: str = "written"
) -> None:
    if failures:
        listed = "; ".join(f"company {c}: {why}" for c, why in failures.items())
        raise PartialFailure(
            f"{what} failed for {len(failures)} company(ies), the others were {done_verb}: "
            f"{listed}",
            exit_code,
            details,
        )


def export(
    settings: Settings,
    *,
    company_id: str | None = None,
    directory: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    meters: Meters = NO_METERS,
) -> ExportRun:
    """Export one company (or every company, ``workers`` at a time, default
    RESILIENCE_RESTORE_WORKERS) to Baileys files, without switching anything."""
    root = directory or settings.export_dir
    if company_id is not None:
        validate_company_id(company_id)
    live = _refuse_live_file_mode(settings, root)
    dsn = service_dsn(settings)
    with recorded_run(settings, "restore.export", company_id) as record:
        count = workers or settings.restore_workers
        with (
            # into the service's own directory: the company's lock, as a switch takes it
            operation_lock(
                settings,
                company_id or settings.company_id,
                "restore.export",
                record.journal,
                skip=not live,
            ),
            connect(dsn, timeout=settings.db_connect_timeout) as conn,
            StorePool(dsn, workers=count, timeout=settings.db_connect_timeout) as pool,
        ):
            batch = export_all(
                PgAuthStore(conn),
                root,
                [company_id] if company_id is not None else None,
                source=redact_dsn(dsn),
                progress=progress,
                workers=count,
                stores=pool.store if company_id is None and count > 1 else None,
                meters=meters,
            )
        record.journal.measurements["workers"] = count
        record.journal.measurements["exports"] = [
            {"company_id": r.company_id, "key_count": r.key_count, "digest": r.digest}
            for r in batch.results
        ]
        record.journal.measurements["failures"] = [f.to_dict() for f in batch.failures]
        _failed_companies(
            "the export",
            {f.company_id: f.message for f in batch.failures},
            batch.exit_code,
            batch.to_dict(),
        )
    return ExportRun(batch, record.path)


def _refuse_live_file_mode(settings: Settings, root: Path) -> bool:
    """Whether ``root`` is the service's live auth directory; refused (InputError) while the
    service runs in file mode there: its files hold writes PostgreSQL has not, which an export
    would replace."""
    live = settings.auth_root
    if live is None or not same_directory(root, live):
        return False
    evidence = file_mode_evidence(settings)
    if evidence is not None:
        raise InputError(
            f"{root} is the live auth directory of a service in file mode ({evidence}): an "
            "export there would replace the writes it made; export elsewhere (--dir, or the "
            "default RESILIENCE_EXPORT_DIR), or switch back first (restore.to-postgres)"
        )
    return True


@dataclass
class SnapshotRun:
    snapshot: Snapshot
    record: Path | None
    #: the standby copy of the service's company, or why it was not written (None: not asked)
    standby: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "standby": self.standby,
            "path": str(self.snapshot.path),
            "taken_at": self.snapshot.taken_at.isoformat(),
            "companies": self.snapshot.companies,
            "failed": {c: dict(e) for c, e in self.snapshot.failed.items()},
            "record": str(self.record) if self.record else None,
        }


def snapshot(
    settings: Settings,
    *,
    company_id: str | None = None,
    keep: int | None = None,
    workers: int | None = None,
    meters: Meters = NO_METERS,
) -> SnapshotRun:
    """A new timestamped snapshot of one company (or all, ``workers`` at a time), keeping the
    newest `keep`."""
    if company_id is not None:
        validate_company_id(company_id)
    dsn = service_dsn(settings)
    with recorded_run(settings, "restore.snapshot", company_id) as record:
        count = workers or settings.restore_workers
        with (
            connect(dsn, timeout=settings.db_connect_timeout) as conn,
            StorePool(dsn, workers=count, timeout=settings.db_connect_timeout) as pool,
        ):
            taken = take_snapshot(
                PgAuthStore(conn),
                settings.snapshot_dir,
                [company_id] if company_id is not None else None,
                keep=keep or settings.snapshot_keep,
                source=redact_dsn(dsn),
                workers=count,
                stores=pool.store if company_id is None and count > 1 else None,
                meters=meters,
            )
        record.journal.measurements["workers"] = count
        record.journal.measurements.update(
            path=str(taken.path), companies=taken.companies, failed=taken.failed
        )
        standby = _standby_for_service(settings, taken)
        if standby is not None:
            record.journal.measurements["standby"] = standby
        _failed_companies(
            "the snapshot",
            {c: e["message"] for c, e in taken.failed.items()},
            DataError.exit_code,
            SnapshotRun(taken, None).to_dict(),
        )
    return SnapshotRun(taken, record.path, standby)


def _standby_for_service(settings: Settings, taken: Snapshot) -> dict[str, Any] | None:
    """The standby copy of the service's company (``RESILIENCE_COMPANY_ID``) beside its
    directory (:func:`~resilience.files.install.prepare_standby`), when the settings name
    that directory and the snapshot holds the company; None otherwise. A standby that cannot
    be written is reported, not raised: the snapshot itself is what counts, and an install
    without a standby copies the files instead."""
    root, company = settings.auth_root, settings.company_id
    if root is None or company not in taken.companies:
        return None
    try:
        # beside the service's directory: the company's lock (a switch may be claiming it)
        with company_lock(settings, company, "restore.snapshot (standby copy)"):
            made = prepare_standby(taken, company, root)
    except ResilienceError as exc:
        log.warning("standby copy of %s not written: %s", company, exc)
        return CompanyFailure.of(company, exc).to_dict()
    return {"company_id": company, "directory": str(made.directory), "digest": made.digest}
