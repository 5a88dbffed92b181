"""`cleanup.keys`: delete expired keys in short batches in the table's physical order
(docs/domain.md §7, §9).

What goes is one meaning of "expired" (:mod:`resilience.maintenance.expiry`): *stale* keys by
default (not updated for the retention, 30 days unless configured), or with ``expired=True``
the keys *past expiry* (``expires_at`` passed). Every row is judged against one moment read from
the database's clock at the start, so the dry run, the count and the deletion agree.

Deletion walks the table in its physical order (tuple ids; PostgreSQL 14 and newer): each batch
is one statement in its own short transaction, with ``SET LOCAL lock_timeout``, that picks the
next ``batch_size`` expired rows after the last tuple id of the previous batch and deletes the
expired rows of that range, in the same snapshot: exactly those. Both are TID range scans, the
pages in order and each read once, where key-ordered batches touched every page at random (4x
one ``DELETE``). A row the service rewrote meanwhile is checked again once its writer is done
(fresh again, it stays). Before PostgreSQL 14 (no TID range scan) the batches walk the primary
key instead. A concurrent writer waits at most for one batch; the cleanup retries a batch whose
locks were not granted in time, or that a deadlock with a writer rolled back, for a while,
then stops. ``whatsapp_auth`` is never touched.

A run that stops (database lost, lock not granted) keeps what it deleted: each batch committed
on its own. The error says how far it got (batches, keys deleted, per type, the last tuple id,
or key) and so does the run record; a batch retried after a refused lock starts where it was, and a
re-run starts from the first page again and finds only what is left.

After a deletion the table is vacuumed (plain ``VACUUM (ANALYZE, SKIP_LOCKED)``: no exclusive
lock is waited for), so the sizes after show the space PostgreSQL could give back; space inside
the table is reused by new rows (``deleted_value_bytes``) even where the files do not shrink.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from resilience.alerting.channels import notify
from resilience.authstate.pgconn import Conn, classify_connect_error, connect, database_errors
from resilience.authstate.pgstore import PgAuthStore
from resilience.config import Settings, service_dsn, validate_company_id
from resilience.errors import (
    DatabaseError,
    DatabaseUnreachable,
    InputError,
    ResilienceError,
    first_line,
)
from resilience.infra.oplock import operation_lock
from resilience.infra.waiting import wait_until
from resilience.maintenance.expiry import (
    ExpiryCounts,
    ExpiryRule,
    count_expired,
    database_now,
)
from resilience.runs.journal import Journal
from resilience.runs.record import recorded_run

Progress = Callable[[str], None]
COMMAND = "cleanup.keys"
#: More keys deleted than this in one run is a Sentry warning (info otherwise).
WARN_OVER = 1000
#: How long a batch whose row or table locks were not granted is retried before the run stops.
LOCK_RETRY_WINDOW_S = 10.0
LOCK_RETRY_INTERVAL_S = 0.5


def _no_progress(_message: str) -> None:
    return None


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


# --- batched deletion -------------------------------------------------------------------------


@dataclass
class Deletion:
    """How far a deletion got; filled batch by batch, so it is right also after a failure."""

    batches: int = 0
    deleted: int = 0
    deleted_value_bytes: int = 0
    by_company_type: dict[str, dict[str, int]] = field(default_factory=dict)
    #: How far it got: the tuple id of the last row the last committed batch picked (physical
    #: order), or its last key (key order, before PostgreSQL 14); the next batch starts after.
    position: tuple[str, str, str] | None = None
    tid: str | None = None
    complete: bool = False
    lock_retries: int = 0
    seconds: float = 0.0

    def by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for types in self.by_company_type.values():
            for key_type, n in types.items():
                out[key_type] = out.get(key_type, 0) + n
        return dict(sorted(out.items()))

    def by_company(self) -> dict[str, int]:
        return {c: sum(t.values()) for c, t in sorted(self.by_company_type.items())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "deleted": self.deleted,
            "deleted_by_type": self.by_type(),
            "deleted_by_company": self.by_company(),
            "deleted_value_bytes": self.deleted_value_bytes,
            "position": {"tid": self.tid}
            if self.tid is not None
            else None
            if self.position is None
            else dict(zip(("company_id", "key_type", "key_id"), self.position, strict=True)),
            "complete": self.complete,
            "lock_retries": self.lock_retries,
            "delete_s": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Batch:
    """One committed batch: rows picked, rows deleted per company and type, value bytes."""

    picked: int
    deleted: dict[str, dict[str, int]]
    value_bytes: int
    last: tuple[str, str, str] | None
    #: The tuple id of the last row picked (physical order): the next batch starts after it.
    tid: str | None = None


#: One batch in physical order: the next `limit` expired rows after the last tuple id of the
#: previous batch (a TID range scan: the pages in order, each read once), then every expired row
#: in that range deleted by the same kind of scan, in the same snapshot: exactly those rows.
_PHYSICAL_SQL = """
WITH batch AS MATERIALIZED (
    SELECT count(*) AS picked, max(tid) AS last FROM (
        SELECT ctid AS tid FROM whatsapp_keys
        WHERE ctid > %(after)s::tid AND {pick}
        LIMIT %(limit)s
    ) AS candidates
),
gone AS (
    DELETE FROM whatsapp_keys
    WHERE ctid > %(after)s::tid AND ctid <= (SELECT last FROM batch) AND {pick}
    RETURNING company_id, key_type, pg_column_size(value) AS bytes
)
SELECT 'deleted', company_id, key_type, NULL::text, count(*), sum(bytes)
  FROM gone GROUP BY company_id, key_type
UNION ALL
SELECT 'picked', NULL, NULL, last::text, picked, NULL FROM batch
"""

#: One batch in key order (servers before PostgreSQL 14, which have no TID range scan): the
#: next rows after the last key, deleted by tuple id with the predicate checked again.
_KEYED_SQL = """
WITH batch AS MATERIALIZED (
    SELECT ctid AS tid, company_id, key_type, key_id FROM whatsapp_keys
    WHERE {pick_after}
    ORDER BY company_id, key_type, key_id
    LIMIT %(limit)s
),
gone AS (
    DELETE FROM whatsapp_keys
    WHERE ctid = ANY (ARRAY(SELECT tid FROM batch)) AND {pick}
    RETURNING company_id, key_type, pg_column_size(value) AS bytes
),
last AS (
    SELECT company_id, key_type, key_id FROM batch
    ORDER BY company_id DESC, key_type DESC, key_id DESC
    LIMIT 1
)
SELECT 'deleted', company_id, key_type, NULL::text, count(*), sum(bytes)
  FROM gone GROUP BY company_id, key_type
UNION ALL
SELECT 'picked', NULL, NULL, NULL, (SELECT count(*) FROM batch), NULL
UNION ALL
SELECT 'last', company_id, key_type, key_id, NULL, NULL FROM last
"""

#: Before the first batch: every tuple id is greater (offsets start at 1).
FIRST_TID = "(0,0)"
#: Per batch transaction: the lock timeout, and only TID range scans (never an index in key
#: order, nor a synchronised sequential scan starting mid-table: the rows a batch picks are the
#: first `limit` after its position, so its range holds no more than those).
_BATCH_SETTINGS = (
    "SELECT set_config('lock_timeout', %s, true), set_config('enable_seqscan', 'off', true),"
    " set_config('enable_indexscan', 'off', true),"
    " set_config('enable_indexonlyscan', 'off', true),"
    " set_config('enable_bitmapscan', 'off', true)"
)
_KEYED_SETTINGS = "SELECT set_config('lock_timeout', %s, true)"


def _scoped(rule: ExpiryRule, company: bool) -> sql.Composed:
    scope = [sql.SQL("company_id = %(company)s")] if company else []
    return sql.SQL(" AND ").join([*scope, sql.SQL("({})").format(rule.predicate())])


def batch_statement(rule: ExpiryRule, *, company: bool, physical: bool = True) -> sql.Composed:
    """The statement of one batch (one company or all): in physical order (parameters `after`,
    a tuple id, and `limit`), or in key order (`after_c`, `after_t`, `after_i` or None, and
    `limit`). Rows: ('deleted', company, type, -, count, bytes) per company and type,
    ('picked', -, -, the last tuple id picked, rows picked, -), and in key order the last key
    picked, ('last', company, type, id, -, -)."""
    pick = _scoped(rule, company)
    if physical:
        return sql.SQL(_PHYSICAL_SQL).format(pick=pick)
    after = sql.SQL(
        "(%(after_c)s::text IS NULL OR "
        "(company_id, key_type, key_id) > (%(after_c)s, %(after_t)s, %(after_i)s))"
    )
    return sql.SQL(_KEYED_SQL).format(pick=pick, pick_after=sql.SQL(" AND ").join([after, pick]))


def _delete_batch(
    conn: Conn,
    statement: sql.Composed,
    params: dict[str, Any],
    lock_timeout_ms: int,
) -> Batch:
    """Run one batch in its own transaction (the module-level seam tests interrupt)."""
    settings = _BATCH_SETTINGS if "after" in params else _KEYED_SETTINGS
    # One round trip: BEGIN, the settings, the batch and COMMIT go out together (pipeline
    # mode); on a loaded machine every extra wait for the server costs a scheduling delay.
    with conn.pipeline(), conn.transaction():
        conn.execute(settings, (f"{lock_timeout_ms}ms",))
        cursor = conn.execute(statement, params)
    rows = cursor.fetchall()
    deleted: dict[str, dict[str, int]] = {}
    value_bytes = 0
    picked = 0
    tid: str | None = None
    last: tuple[str, str, str] | None = None
    for kind, company, key_type, key_id, count, size in rows:
        if kind == "picked":
            picked, tid = int(count), key_id
        elif kind == "last":
            last = (company, key_type, key_id)
        else:
            deleted.setdefault(company, {})[key_type] = int(count)
            value_bytes += int(size or 0)
    return Batch(picked, deleted, value_bytes, last, tid)


class _LockBusy(Exception):
    """A batch's locks were not granted within lock_timeout, or a deadlock with a writer rolled
    it back (retried: it is "not yet")."""


def physical_order(conn: Conn) -> bool:
    """Batches in the table's physical order: PostgreSQL 14 or newer (TID range scans)."""
    return conn.info.server_version >= 140000


def delete_expired(
    conn: Conn,
    rule: ExpiryRule,
    now: datetime,
    *,
    company_id: str | None = None,
    batch_size: int = 5000,
    lock_timeout_ms: int = 1000,
    state: Deletion | None = None,
    expected: int | None = None,
    progress: Progress | None = None,
) -> Deletion:
    """Delete the keys `rule` calls expired at `now` (one company or all) in batches of
    `batch_size` in the table's physical order (key order before PostgreSQL 14), each its own
    transaction; returns (and fills `state`, so a caller knows how far it got when this
    raises, and a call with it continues there) the :class:`Deletion`.

    `conn` must be idle (autocommit). psycopg errors propagate; a batch whose locks are not
    granted within `lock_timeout_ms`, or that a deadlock rolled back, is retried for
    :data:`LOCK_RETRY_WINDOW_S`, then :class:`DatabaseError` is raised.
    """
    if batch_size < 1:
        raise InputError(f"the batch size must be at least 1, not {batch_size}")
    if company_id is not None:
        validate_company_id(company_id)
    report = progress or _no_progress
    done = state if state is not None else Deletion()
    physical = physical_order(conn)
    statement = batch_statement(rule, company=company_id is not None, physical=physical)
    base: dict[str, Any] = {**rule.params(now), "limit": batch_size}
    if company_id is not None:
        base["company"] = company_id
    planned = None if expected is None else max(1, math.ceil(expected / batch_size))
    started = time.monotonic()
    try:
        while not done.complete:
            params = dict(base)
            if physical:
                params["after"] = done.tid or FIRST_TID
            else:
                key = done.position or (None, None, None)
                params.update(zip(("after_c", "after_t", "after_i"), key, strict=True))
            batch = _with_lock_retries(conn, statement, params, lock_timeout_ms, done)
            done.batches += 1
            for company, types in batch.deleted.items():
                into = done.by_company_type.setdefault(company, {})
                for key_type, n in types.items():
                    into[key_type] = into.get(key_type, 0) + n
                    done.deleted += n
            done.deleted_value_bytes += batch.value_bytes
            if batch.last is not None:
                done.position = batch.last
            if batch.tid is not None:
                done.tid = batch.tid
            done.complete = batch.picked < batch_size
            of = f"/~{planned}" if planned else ""
            report(f"batch {done.batches}{of}: {done.deleted} keys deleted")
    finally:
        done.seconds += time.monotonic() - started
    return done


def _with_lock_retries(
    conn: Conn,
    statement: sql.Composed,
    params: dict[str, Any],
    lock_timeout_ms: int,
    done: Deletion,
) -> Batch:
    def attempt() -> Batch:
        try:
            return _delete_batch(conn, statement, params, lock_timeout_ms)
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            done.lock_retries += 1
            raise _LockBusy from None

    def gave_up(_last: Exception | None) -> ResilienceError:
        return DatabaseError(
            f"the locks of a batch were not granted within {lock_timeout_ms} ms "
            f"({done.lock_retries} tries over {LOCK_RETRY_WINDOW_S:.0f} s): a long transaction "
            "or a table lock holds the rows"
        )

    return wait_until(
        attempt,
        LOCK_RETRY_WINDOW_S,
        "the locks of a cleanup batch",
        interval=LOCK_RETRY_INTERVAL_S,
        on_timeout=gave_up,
        fatal=(psycopg.Error, ResilienceError),
    )


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
    report = progress or _no_progress
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
