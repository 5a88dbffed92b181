"""`cleanup.keys`: delete expired keys in short batches in the table's physical order
(docs/domain.md §7, §9).

What goes is one meaning of "expired" (:mod:`resilience.maintenance.expiry`): *stale* keys by
default (not updated for the retention, 30 days unless configured), or with ``expired=True``
the keys *past expiry* (``expires_at`` passed). Every row is judged against one moment read from
the database's clock at the start, so the dry run, the count and the deletion agree.

Deletion (:mod:`resilience.maintenance.batches`) walks the table in its physical order (tuple
ids; PostgreSQL 14 and newer): each batch is one statement in its own short transaction, with
``SET LOCAL lock_timeout``, that deletes the expired rows of the next run of pages, sized from
what the last batch found to hold about ``batch_size`` of them (where expired rows are sparse a
batch picks exactly the next ``batch_size`` expired rows after the previous one and deletes the
expired rows of that range, in the same snapshot; the first batch picks a few hundred that
way). These are TID range scans, the pages in order and each read once as one ``DELETE`` reads
them, where key-ordered batches touched every page at random (4x one ``DELETE``). A row the
service rewrote meanwhile is checked again once its writer is done (fresh again, it stays).
Before PostgreSQL 14 (no TID range scan) the batches walk the primary key instead. A
concurrent writer waits at most for one batch; the cleanup retries a batch whose locks were not
granted in time, or that a deadlock with a writer rolled back, for a while, then stops.
``whatsapp_auth`` is never touched.

A run that stops (database lost, lock not granted) keeps what it deleted: each batch committed
on its own. The error says how far it got (batches, keys deleted, per type, the last tuple id,
or key) and so does the run record; a batch retried after a refused lock starts where it was, and a
re-run starts from the first page again and finds only what is left.

After a deletion the table is vacuumed (plain ``VACUUM (ANALYZE, SKIP_LOCKED)``: no exclusive
lock is waited for), so the sizes after show the space PostgreSQL could give back; space inside
the table is reused by new rows (``deleted_value_bytes``) even where the files do not shrink.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from resilience.alerting.channels import notify
from resilience.authstate.pgconn import Conn, classify_connect_error, connect, database_errors
from resilience.authstate.pgstore import PgAuthStore
from resilience.config import Settings, service_dsn, validate_company_id
from resilience.errors import DatabaseError, DatabaseUnreachable, ResilienceError, first_line
from resilience.infra.oplock import operation_lock
from resilience.maintenance.batches import Deletion, Progress, delete_expired, no_progress
from resilience.maintenance.expiry import (
    ExpiryCounts,
    ExpiryRule,
    count_expired,
    database_now,
)
from resilience.runs.journal import Journal
from resilience.runs.record import recorded_run

COMMAND = "cleanup.keys"
#: More keys deleted than this in one run is a Sentry warning (info otherwise).
WARN_OVER = 1000


# --- sizes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """`whatsapp_keys` on disk: heap with TOAST, indexes, and both together."""

    table_bytes: int  # pg_table_size
    index_bytes: int  # pg_indexes_size
    total_bytes: int  # pg_total_relation_size

    def to_dict(self) -> dict[str, int]:
        return {
            "table_bytes": self.table_bytes,
            "index_bytes": self.index_bytes,
            "total_bytes": self.total_bytes,
        }


def table_sizes(conn: Conn) -> Sizes:
    with database_errors("reading the table sizes"):
        row = conn.execute(
            "SELECT pg_table_size('whatsapp_keys'), pg_indexes_size('whatsapp_keys'),"
            " pg_total_relation_size('whatsapp_keys')"
        ).fetchone()
    assert row is not None
    return Sizes(int(row[0]), int(row[1]), int(row[2]))


def vacuum(conn: Conn) -> str:
    """Plain VACUUM (ANALYZE) of `whatsapp_keys`, never waiting for a lock; what happened."""
    try:
        conn.execute("VACUUM (ANALYZE, SKIP_LOCKED) whatsapp_keys")
    except psycopg.errors.InsufficientPrivilege:
        return "skipped: the service's role does not own whatsapp_keys (its owner can VACUUM it)"
    except psycopg.Error as exc:
        if conn.broken:
            raise
        return f"skipped: {first_line(exc)}"
    return "done"


def database_failure(exc: psycopg.Error, conn: Conn | None) -> DatabaseError:
    """A psycopg error as the library's error: a lost connection is an outage."""
    kind, _ = classify_connect_error(exc)
    if kind == "outage" or (conn is not None and conn.broken):
        return DatabaseUnreachable(f"PostgreSQL connection lost: {first_line(exc)}")
    return DatabaseError(f"a statement failed: {first_line(exc)}")


# --- the command --------------------------------------------------------------------------------


@dataclass
class CleanupRun:
    """What `cleanup.keys` did (or, in a dry run, would do)."""

    rule: ExpiryRule
    now: datetime
    company_id: str | None
    dry_run: bool
    batch_size: int
    lock_timeout_ms: int
    counts: ExpiryCounts | None = None
    sizes_before: Sizes | None = None
    sizes_after: Sizes | None = None
    deletion: Deletion = field(default_factory=Deletion)
    vacuum: str | None = None
    duration_s: float = 0.0
    alerts: dict[str, Any] | None = None
    record: Path | None = None

    @property
    def matched_by_type(self) -> dict[str, int]:
        return {} if self.counts is None else self.counts.by_type(self.rule.kind)

    @property
    def matched(self) -> int:
        return 0 if self.counts is None else self.counts.count(self.rule.kind)

    @property
    def freed_bytes(self) -> int | None:
        if self.sizes_before is None or self.sizes_after is None:
            return None
        return self.sizes_before.total_bytes - self.sizes_after.total_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": COMMAND,
            "meaning": self.rule.kind.value,
            "description": self.rule.describe(),
            "retention_days": self.rule.retention_days,
            "now": self.now.isoformat(),
            "boundary": self.rule.boundary(self.now).isoformat(),
            "company_id": self.company_id,
            "dry_run": self.dry_run,
            "batch_size": self.batch_size,
            "lock_timeout_ms": self.lock_timeout_ms,
            "matched": self.matched,
            "matched_by_type": self.matched_by_type,
            "matched_by_company": {}
            if self.counts is None
            else self.counts.by_company(self.rule.kind),
            "counts": None if self.counts is None else self.counts.to_dict(),
            **self.deletion.to_dict(),
            "sizes_before": None if self.sizes_before is None else self.sizes_before.to_dict(),
            "sizes_after": None if self.sizes_after is None else self.sizes_after.to_dict(),
            "freed_bytes": self.freed_bytes,
            "vacuum": self.vacuum,
            "duration_s": round(self.duration_s, 3),
            "alerts": self.alerts,
            "record": str(self.record) if self.record else None,
        }


def _scope(company_id: str | None) -> str:
    return f"company {company_id}" if company_id else "all companies"


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def summary(run: CleanupRun) -> str:
    """The Telegram summary (and the Sentry message's first line)."""
    d = run.deletion
    lines = [
        f"cleanup.keys: {d.deleted} {run.rule.kind.value.replace('_', '-')} keys deleted "
        f"({_scope(run.company_id)}) in {d.batches} batches, {run.duration_s:.1f} s",
        f"meaning: {run.rule.describe()}",
    ]
    by_type = d.by_type()
    if by_type:
        lines.append("by type: " + ", ".join(f"{t} {n}" for t, n in by_type.items()))
    if run.sizes_before is not None and run.sizes_after is not None:
        lines.append(
            f"whatsapp_keys total {_human_bytes(run.sizes_before.total_bytes)} -> "
            f"{_human_bytes(run.sizes_after.total_bytes)} (freed {_human_bytes(run.freed_bytes)}"
            f" on disk, {_human_bytes(d.deleted_value_bytes)} of values deleted)"
        )
    return "\n".join(lines)


def _send_alerts(settings: Settings, run: CleanupRun, failure: str | None) -> dict[str, Any]:
    tags = {"command": COMMAND, "meaning": run.rule.kind.value, "company": run.company_id or "*"}
    if failure is None:
        level = "warning" if run.deletion.deleted > WARN_OVER else "info"
        text = summary(run)
    else:
        level = "error"
        text = f"cleanup.keys stopped ({_scope(run.company_id)}): {failure}"
    done = notify(settings, text, level=level, tags=tags, extra={"cleanup": run.to_dict()})
    return {"sentry_level": level, **asdict(done)}


def cleanup_keys(
    settings: Settings,
    *,
    company_id: str | None = None,
    expired: bool = False,
    retention_days: int | None = None,
    yes: bool = False,
    progress: Progress | None = None,
) -> CleanupRun:
    """Count (dry run, the default) or delete (`yes`) the stale keys, or with `expired` those
    past expiry, of one company or all; recorded under the runs dir, alerted when deleting.

    Errors: :class:`InputError` (company id, retention), :class:`DatabaseUnreachable` (an
    outage, also mid-run), :class:`DatabaseError`; a run stopped mid-way carries how far it got
    as `details` (the error's JSON), in its run record, and in the alert it sent.
    """
    if company_id is not None:
        validate_company_id(company_id)
    days = settings.cleanup_retention_days if retention_days is None else retention_days
    stale = ExpiryRule.stale(days)  # validated also with --expired: the report counts both
    rule = ExpiryRule.past_expiry() if expired else stale
    report = progress or no_progress
    dsn = service_dsn(settings)
    started = time.monotonic()
    with (
        recorded_run(settings, COMMAND, company_id) as record,
        operation_lock(
            settings, company_id or settings.company_id, COMMAND, record.journal, skip=not yes
        ),
    ):
        journal = record.journal
        with connect(dsn, timeout=settings.db_connect_timeout, autocommit=True) as conn:
            if company_id is not None:
                PgAuthStore(conn).known_company(company_id)
            run = CleanupRun(
                rule,
                database_now(conn),
                company_id,
                dry_run=not yes,
                batch_size=settings.cleanup_batch_size,
                lock_timeout_ms=settings.cleanup_lock_timeout_ms,
            )
            journal.measurements["cleanup"] = run.to_dict()
            try:
                _run(conn, run, days, journal, report)
            except (psycopg.Error, ResilienceError) as exc:
                run.duration_s = time.monotonic() - started
                error = database_failure(exc, conn) if isinstance(exc, psycopg.Error) else exc
                raise _stopped(settings, run, error, journal) from None
        run.duration_s = time.monotonic() - started
        if yes:
            report("sending the Sentry event and the Telegram summary")
            run.alerts = _send_alerts(settings, run, None)
        journal.measurements["cleanup"] = run.to_dict()
    run.record = record.path
    return run


def _run(conn: Conn, run: CleanupRun, days: int, journal: Journal, report: Progress) -> None:
    scope = _scope(run.company_id)
    with journal.step("count") as step:
        report(f"counting expired keys ({scope})")
        run.counts = count_expired(
            conn, retention_days=days, company_id=run.company_id, now=run.now
        )
        step.details.update(matched=run.matched, counts=run.counts.to_dict())
    with journal.step("sizes-before") as step:
        run.sizes_before = table_sizes(conn)
        step.details.update(run.sizes_before.to_dict())
    if run.dry_run:
        report(f"dry run: {run.matched} keys would be deleted, {run.rule.describe()} ({scope})")
        journal.measurements["cleanup"] = run.to_dict()
        return
    with journal.step("delete") as step:
        report(
            f"deleting {run.matched} keys, {run.rule.describe()} ({scope}), in batches of "
            f"{run.batch_size}"
        )

        def progress(message: str) -> None:
            journal.measurements["cleanup"] = run.to_dict()
            report(message)

        try:
            delete_expired(
                conn,
                run.rule,
                run.now,
                company_id=run.company_id,
                batch_size=run.batch_size,
                lock_timeout_ms=run.lock_timeout_ms,
                state=run.deletion,
                expected=run.matched,
                progress=progress,
            )
        finally:
            step.details.update(run.deletion.to_dict())
    if run.deletion.deleted:
        with journal.step("vacuum") as step:
            report("vacuuming whatsapp_keys (plain VACUUM, no exclusive lock waited for)")
            run.vacuum = vacuum(conn)
            step.details["result"] = run.vacuum
    with journal.step("sizes-after") as step:
        run.sizes_after = table_sizes(conn)
        step.details.update(run.sizes_after.to_dict(), freed_bytes=run.freed_bytes)


def _stopped(
    settings: Settings, run: CleanupRun, error: ResilienceError, journal: Journal
) -> ResilienceError:
    """The error of a run that stopped, saying how far it got; alerted when it was deleting."""
    d = run.deletion
    if not run.dry_run:
        if run.counts is not None:
            kept = "they stay deleted; a re-run continues with the rest"
            error.args = (
                f"cleanup.keys stopped after {d.batches} batch(es), {d.deleted} of "
                f"{run.matched} keys deleted ({kept}): {error}",
            )
        try:
            run.alerts = _send_alerts(settings, run, str(error))
        except ResilienceError:  # pragma: no cover - alerts never hide the failure
            run.alerts = None
    report = run.to_dict()
    del report["record"]  # the error's own record is set when the run record is written
    error.details = {**(error.details or {}), **report}
    journal.measurements["cleanup"] = report
    return error
