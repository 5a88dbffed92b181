"""The batched deleter of `cleanup.keys`: expired keys deleted in short batches in the table's
physical order (docs/domain.md §7, §9).

Each batch is one statement in its own short transaction, with ``SET LOCAL lock_timeout``, that
deletes the expired rows of the next run of pages after the previous batch's: a TID range scan
(PostgreSQL 14 and newer), the pages in order and each read once, as one ``DELETE`` reads them.
A run spans about the pages that hold ``batch_size`` expired rows, judged from what the last
batch found (a run at most doubles, and never spans more than twice the pages of
``batch_size`` rows at the table's average density), so a batch deletes about ``batch_size``
rows. Where expired rows are sparser than that, a batch picks the next ``batch_size`` expired
rows after the previous one instead and deletes the expired rows of that range, in the same
snapshot: exactly those (two scans of the range); the first batch picks :data:`FIRST_PICK` (or
``batch_size`` if smaller), which the first run is sized from. Before PostgreSQL 14
the batches walk the primary key, exactly ``batch_size`` rows each. A batch whose locks were
not granted in time, or that a deadlock with a writer rolled back, is retried for a while
(:data:`LOCK_RETRY_WINDOW_S`), then the deletion stops. :class:`Deletion` says how far it got,
batch by batch, also after a failure.
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
    #: How far it got: in physical order the tuple id the last committed batch ended at (a run
    #: of pages: ``(page, 0)``, that page not yet read; a pick: the last row it picked), in key
    #: order (before PostgreSQL 14) its last key; the next batch starts after.
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
    """One committed batch: rows picked (a run of pages: rows deleted), rows deleted per company
    and type, value bytes."""

    picked: int
    deleted: dict[str, dict[str, int]]
    value_bytes: int
    last: tuple[str, str, str] | None
    #: A run of pages: the table's pages when the batch ran (the walk ends there).
    table_pages: int | None = None
    #: A pick: the tuple id of the last row picked (the next batch starts after it).
    tid: str | None = None


#: One batch in physical order where expired rows are dense: every expired row in the next run
#: of pages (a TID range scan: the pages in order, each read once, as one DELETE reads them),
#: counted per company and type, and how many pages the table has now (the walk ends there).
_RUN_SQL = """
WITH gone AS (
    DELETE FROM whatsapp_keys
    WHERE ctid > %(after)s::tid AND ctid < %(before)s::tid AND {pick}
    RETURNING company_id, key_type, pg_column_size(value) AS bytes
)
SELECT 'deleted', company_id, key_type, NULL::text, count(*), sum(bytes)
  FROM gone GROUP BY company_id, key_type
UNION ALL
SELECT 'pages', NULL, NULL, NULL,
       pg_relation_size('whatsapp_keys') / current_setting('block_size')::bigint, NULL
"""

#: One batch in physical order where expired rows are sparse: the next `limit` expired rows after
#: the last tuple id of the previous batch (a TID range scan), then every expired row in that
#: range deleted by the same kind of scan, in the same snapshot: exactly those rows.
_PICK_SQL = """
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
#: A physical batch spans at most this many times the pages that hold `batch_size` rows at the
#: table's average row density, so that, expired rows spread alike, it deletes at most about
#: twice the batch size.
MAX_PAGES_FACTOR = 2
#: The first batch in physical order picks this many rows at most (exactly, fewer only at the
#: end): enough to judge how densely expired rows lie, cheap for its two scans.
FIRST_PICK = 500
#: Rows per page assumed when the table was never analysed (pg_class.reltuples unknown): dense,
#: so that runs stay short.
DENSE_ROWS_PER_PAGE = 100
#: Per batch transaction: the lock timeout, and only TID range scans (never an index in key
#: order, nor a synchronised sequential scan starting mid-table: a batch reads its pages once,
#: in order).
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


def batch_statement(rule: ExpiryRule, *, company: bool, order: str = "run") -> sql.Composed:
    """The statement of one batch (one company or all): a run of pages (`order` "run",
    parameters `after` and `before`, tuple ids: the rows between), a pick in physical order
    ("pick": `after`, a tuple id, and `limit`), or in key order ("key": `after_c`, `after_t`,
    `after_i` or None, and `limit`). Rows: ('deleted', company, type, -, count, bytes) per
    company and type; for a run ('pages', -, -, -, the table's pages, -); for a pick
    ('picked', -, -, the last tuple id picked, rows picked, -); in key order ('picked', -, -, -,
    rows picked, -) and the last key picked, ('last', company, type, id, -, -)."""
    pick = _scoped(rule, company)
    if order in ("run", "pick"):
        return sql.SQL(_RUN_SQL if order == "run" else _PICK_SQL).format(pick=pick)
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
    pages: int | None = None
    tid: str | None = None
    last: tuple[str, str, str] | None = None
    for kind, company, key_type, key_id, count, size in rows:
        if kind == "picked":
            picked, tid = int(count), key_id
        elif kind == "pages":
            pages = int(count)
        elif kind == "last":
            last = (company, key_type, key_id)
        else:
            deleted.setdefault(company, {})[key_type] = int(count)
            value_bytes += int(size or 0)
    if pages is not None:
        picked = sum(n for types in deleted.values() for n in types.values())
    return Batch(picked, deleted, value_bytes, last, pages, tid)


class _LockBusy(Exception):
    """A batch's locks were not granted within lock_timeout, or a deadlock with a writer rolled
    it back (retried: it is "not yet")."""


def _page(tid: str) -> int:
    return int(tid.strip("()").split(",")[0])


@dataclass
class _PhysicalWalk:
    """The batches in physical order: a run of pages where expired rows are dense (about those
    holding `batch_size` expired rows at the density the last batch found; at most twice the
    last batch's pages and at most `cap`, twice the pages of `batch_size` rows at the table's
    average density), a pick of the next `batch_size` expired rows where they are sparser. The
    first batch is a pick of exactly :data:`FIRST_PICK` rows (or `batch_size` if smaller): the
    density the first run starts from."""

    statements: dict[str, sql.Composed]
    batch_size: int
    pages: int  # of the next run; 0: the next batch is a pick
    cap: int

    @classmethod
    def start(cls, conn: Conn, rule: ExpiryRule, company: bool, batch_size: int) -> _PhysicalWalk:
        row = conn.execute(
            "SELECT relpages, reltuples FROM pg_class WHERE oid = 'whatsapp_keys'::regclass"
        ).fetchone()
        relpages, reltuples = row if row is not None else (0, -1.0)
        density = reltuples / relpages if relpages > 0 and reltuples > 0 else DENSE_ROWS_PER_PAGE
        cap = MAX_PAGES_FACTOR * math.ceil(batch_size / max(1.0, density))
        statements = {o: batch_statement(rule, company=company, order=o) for o in ("run", "pick")}
        return cls(statements, batch_size, 0, cap)

    def next(self, done: Deletion, params: dict[str, Any]) -> sql.Composed:
        """The statement of the next batch; fills `params`."""
        params["after"] = done.tid or FIRST_TID
        if not self.pages:
            first = done.tid is None
            params["limit"] = min(self.batch_size, FIRST_PICK) if first else self.batch_size
            return self.statements["pick"]
        params["before"] = f"({_page(params['after']) + self.pages},0)"
        return self.statements["run"]

    def done_with(self, done: Deletion, batch: Batch, params: dict[str, Any]) -> None:
        """Move `done` past `batch` and size the next one."""
        if batch.table_pages is not None:  # a run: it grows at most twofold
            spanned = grown = self.pages
            done.tid = params["before"]
            done.complete = _page(done.tid) >= batch.table_pages
        else:
            spanned = _page(batch.tid or params["after"]) - _page(params["after"]) + 1
            grown = self.cap
            done.tid = batch.tid or done.tid
            done.complete = batch.picked < params["limit"]
        wanted = spanned * self.batch_size // batch.picked if batch.picked else self.cap + 1
        self.pages = max(1, min(wanted, 2 * grown)) if wanted <= self.cap else 0


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
    one = company_id is not None
    walk = _PhysicalWalk.start(conn, rule, one, batch_size) if physical_order(conn) else None
    statement = batch_statement(rule, company=one, order="key")
    base: dict[str, Any] = {**rule.params(now), "limit": batch_size}
    if company_id is not None:
        base["company"] = company_id
    planned = None if expected is None else max(1, math.ceil(expected / batch_size))
    started = time.monotonic()
    try:
        while not done.complete:
            params = dict(base)
            if walk is not None:
                statement = walk.next(done, params)
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
            if walk is not None:
                walk.done_with(done, batch, params)
            else:
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
