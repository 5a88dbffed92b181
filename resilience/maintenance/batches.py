"""The batched deleter of `cleanup.keys`: expired keys deleted in short batches in the table's
physical order (docs/domain.md §7, §9).

Each batch is one statement in its own short transaction, with ``SET LOCAL lock_timeout``, that
picks the next ``batch_size`` expired rows after the last tuple id of the previous batch and
deletes the expired rows of that range, in the same snapshot: exactly those. Both are TID range
scans (PostgreSQL 14 and newer), the pages in order and each read once; before PostgreSQL 14 the
batches walk the primary key instead. A batch whose locks were not granted in time, or that a
deadlock with a writer rolled back, is retried for a while (:data:`LOCK_RETRY_WINDOW_S`), then
the deletion stops. :class:`Deletion` says how far it got, batch by batch, also after a failure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from resilience.authstate.pgconn import Conn
from resilience.config import validate_company_id
from resilience.errors import DatabaseError, InputError, ResilienceError
from resilience.infra.waiting import wait_until
from resilience.maintenance.expiry import ExpiryRule

Progress = Callable[[str], None]
#: How long a batch whose row or table locks were not granted is retried before the run stops.
LOCK_RETRY_WINDOW_S = 10.0
LOCK_RETRY_INTERVAL_S = 0.5


def no_progress(_message: str) -> None:
    return None


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
    report = progress or no_progress
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
