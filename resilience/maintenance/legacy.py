"""`cleanup.legacy`: report, and with ``yes`` purge, the old migration's rows (docs/domain.md §3).

The old file-to-database migration split file names at the first dash: ``pre-key-5.json``
became ``key_type='pre', key_id='key-5'`` beside the service's own ``pre-key``/``5``. Legacy
rows have one of the old types ``pre``, ``app``, ``lid``, ``sender`` and an id that carries the
rest of the real type's name; their real ``(type, id)`` is the one Baileys asks for
(:func:`resilience.authstate.view.baileys_ref`). A row of an old type whose name maps to no
known type is listed as unresolved and left alone.

Purge, per real key (the rule the service's view already applies: the newest ``updated_at``
wins, the real row on a tie, so what Baileys sees and every digest stay the same):

- the real row is newer or as new: the legacy row is dropped;
- the legacy row is newer, or there is no real row: it is moved to its real type and id (its
  value, with its Buffers in the form ``RESILIENCE_DB_BUFFER_FORM`` picks for the company,
  ``created_at``, ``updated_at`` and ``expires_at``; the older real row is replaced, and
  the upsert never overwrites a row the service wrote meanwhile), then dropped; other legacy
  rows of the same key, older, are dropped.

One transaction per company, rows locked (``FOR UPDATE``) before deciding, ``SET LOCAL
lock_timeout`` as for the key cleanup. ``whatsapp_auth`` is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psycopg

from resilience.authstate.bufferform import choose_for, in_form
from resilience.authstate.pgconn import Conn, connect, database_errors, read_transaction
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import baileys_ref
from resilience.config import BufferFormSetting, Settings, service_dsn, validate_company_id
from resilience.errors import DatabaseError, PartialFailure, ResilienceError
from resilience.infra.oplock import operation_lock
from resilience.maintenance.cleanup import database_failure
from resilience.runs.record import recorded_run

Progress = Callable[[str], None]
COMMAND = "cleanup.legacy"
#: Key types of the old migration (the first part of a real type's name).
LEGACY_TYPES: tuple[str, ...] = ("pre", "app", "lid", "sender")
Action = Literal["drop", "move"]


def _no_progress(_message: str) -> None:
    return None


@dataclass(frozen=True)
class Decision:
    """What happens to one legacy row."""

    key_type: str
    key_id: str
    real_type: str
    real_id: str
    updated_at: datetime
    twin_updated_at: datetime | None  # the real row's, None when there is none
    action: Action
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_type": self.key_type,
            "key_id": self.key_id,
            "real_type": self.real_type,
            "real_id": self.real_id,
            "updated_at": self.updated_at.isoformat(),
            "twin_updated_at": None
            if self.twin_updated_at is None
            else self.twin_updated_at.isoformat(),
            "action": self.action,
            "reason": self.reason,
        }


@dataclass
class CompanyLegacy:
    company_id: str
    decisions: list[Decision] = field(default_factory=list)
    unresolved: list[tuple[str, str]] = field(default_factory=list)
    purged: bool = False
    #: the Buffer form moved rows were written in (bufferform.FormChoice), when rows moved
    buffer_form: dict[str, Any] | None = None

    def count(self, action: Action) -> int:
        return sum(1 for d in self.decisions if d.action == action)

    def by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.decisions:
            out[d.key_type] = out.get(d.key_type, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "company_id": self.company_id,
            "legacy": len(self.decisions),
            "by_type": self.by_type(),
            "drop": self.count("drop"),
            "move": self.count("move"),
            "unresolved": [{"key_type": t, "key_id": i} for t, i in self.unresolved],
            "purged": self.purged,
            "buffer_form": self.buffer_form,
            "rows": [d.to_dict() for d in self.decisions],
        }


def legacy_companies(conn: Conn) -> list[str]:
    with database_errors("listing companies with legacy rows"):
        rows = conn.execute(
            "SELECT DISTINCT company_id FROM whatsapp_keys WHERE key_type = ANY(%s) ORDER BY 1",
            (list(LEGACY_TYPES),),
        ).fetchall()
    return [r[0] for r in rows]


def _plan(conn: Conn, company_id: str, *, lock: bool) -> CompanyLegacy:
    """Read a company's legacy rows and their real twins (locked when `lock`) and decide."""
    lock_sql = " FOR UPDATE" if lock else ""
    rows = conn.execute(
        "SELECT key_type, key_id, updated_at FROM whatsapp_keys "
        "WHERE company_id = %s AND key_type = ANY(%s) ORDER BY key_type, key_id" + lock_sql,
        (company_id, list(LEGACY_TYPES)),
    ).fetchall()
    plan = CompanyLegacy(company_id)
    by_ref: dict[tuple[str, str], list[tuple[str, str, datetime]]] = {}
    for key_type, key_id, updated in rows:
        ref = baileys_ref(key_type, key_id)
        if ref == (key_type, key_id):
            plan.unresolved.append((key_type, key_id))
        else:
            by_ref.setdefault(ref, []).append((key_type, key_id, updated))
    if not by_ref:
        return plan
    refs = sorted(by_ref)
    twins = {
        (t, i): updated
        for t, i, updated in conn.execute(
            "SELECT k.key_type, k.key_id, k.updated_at FROM whatsapp_keys k "
            "JOIN unnest(%s::text[], %s::text[]) AS r(t, i) ON k.key_type = r.t AND "
            "k.key_id = r.i WHERE k.company_id = %s" + (" FOR UPDATE OF k" if lock else ""),
            ([t for t, _ in refs], [i for _, i in refs], company_id),
        ).fetchall()
    }
    for ref in refs:
        # newest first; ties broken by name, so the result does not depend on row order
        legacy = sorted(by_ref[ref], key=lambda r: (r[0], r[1]))
        legacy.sort(key=lambda r: r[2], reverse=True)
        twin = twins.get(ref)
        for n, (key_type, key_id, updated) in enumerate(legacy):
            action: Action
            if twin is not None and twin >= updated:
                action, reason = "drop", "the real row is newer or as new"
            elif n > 0:
                action, reason = "drop", "a newer legacy row of the same key is moved"
            elif twin is None:
                action, reason = "move", "no real row"
            else:
                action, reason = "move", "newer than the real row"
            plan.decisions.append(
                Decision(key_type, key_id, ref[0], ref[1], updated, twin, action, reason)
            )
    return plan


_MOVE = (
    "INSERT INTO whatsapp_keys "
    "(company_id, key_type, key_id, value, created_at, updated_at, expires_at) "
    "SELECT company_id, %(real_type)s, %(real_id)s, %(value)s::jsonb, created_at, updated_at, "
    "expires_at "
    "FROM whatsapp_keys WHERE company_id = %(company)s AND key_type = %(key_type)s "
    "AND key_id = %(key_id)s "
    "ON CONFLICT (company_id, key_type, key_id) DO UPDATE SET value = EXCLUDED.value, "
    "expires_at = EXCLUDED.expires_at WHERE whatsapp_keys.updated_at < EXCLUDED.updated_at"
)


def purge_company(
    conn: Conn,
    company_id: str,
    *,
    lock_timeout_ms: int = 1000,
    buffer_form: BufferFormSetting = "auto",
) -> CompanyLegacy:
    """Apply the purge rule to one company in one transaction; returns what was done. A moved
    row is written with its Buffers in the form ``buffer_form`` picks for the company
    (``auto``: the form most of its rows use). psycopg errors propagate (the transaction is
    rolled back: nothing of the company changed)."""
    validate_company_id(company_id)
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
        plan = _plan(conn, company_id, lock=True)
        moves = [d for d in plan.decisions if d.action == "move"]
        values: dict[tuple[str, str], str] = {}
        if moves:
            form = choose_for(conn, company_id, buffer_form)
            plan.buffer_form = form.to_dict()
            values = {
                (t, i): in_form(text, form.style, where=f"{t}/{i}")
                for t, i, text in conn.execute(
                    "SELECT k.key_type, k.key_id, k.value::text FROM whatsapp_keys k "
                    "JOIN unnest(%s::text[], %s::text[]) AS m(t, i) ON k.key_type = m.t "
                    "AND k.key_id = m.i WHERE k.company_id = %s",
                    ([d.key_type for d in moves], [d.key_id for d in moves], company_id),
                ).fetchall()
            }
        with conn.cursor() as cur:
            replaced = [d for d in moves if d.twin_updated_at is not None]
            if replaced:
                cur.executemany(
                    "DELETE FROM whatsapp_keys WHERE company_id = %s AND key_type = %s "
                    "AND key_id = %s",
                    [(company_id, d.real_type, d.real_id) for d in replaced],
                )
            if moves:
                cur.executemany(
                    _MOVE,
                    [
                        {
                            "company": company_id,
                            "key_type": d.key_type,
                            "key_id": d.key_id,
                            "real_type": d.real_type,
                            "real_id": d.real_id,
                            "value": values[(d.key_type, d.key_id)],
                        }
                        for d in moves
                    ],
                )
            if plan.decisions:
                cur.execute(
                    "DELETE FROM whatsapp_keys k USING unnest(%s::text[], %s::text[]) AS d(t, i) "
                    "WHERE k.company_id = %s AND k.key_type = d.t AND k.key_id = d.i",
                    (
                        [d.key_type for d in plan.decisions],
                        [d.key_id for d in plan.decisions],
                        company_id,
                    ),
                )
        plan.purged = True
    return plan


def report_company(conn: Conn, company_id: str) -> CompanyLegacy:
    """The decisions for one company, read in one consistent snapshot; nothing changed."""
    validate_company_id(company_id)
    with read_transaction(conn):
        return _plan(conn, company_id, lock=False)


@dataclass
class LegacyRun:
    dry_run: bool
    company_id: str | None
    companies: list[CompanyLegacy] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    record: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": COMMAND,
            "dry_run": self.dry_run,
            "company_id": self.company_id,
            "legacy": sum(len(c.decisions) for c in self.companies),
            "drop": sum(c.count("drop") for c in self.companies),
            "move": sum(c.count("move") for c in self.companies),
            "unresolved": sum(len(c.unresolved) for c in self.companies),
            "companies": [c.to_dict() for c in self.companies],
            "failures": dict(self.failures),
            "record": str(self.record) if self.record else None,
        }


def cleanup_legacy(
    settings: Settings,
    *,
    company_id: str | None = None,
    yes: bool = False,
    progress: Progress | None = None,
) -> LegacyRun:
    """Report the legacy rows of one company (or of every company that has some); with `yes`
    purge them, one transaction per company. A company that fails leaves its rows as they were
    and the others are purged (:class:`PartialFailure`); a lost database stops the run
    (:class:`DatabaseUnreachable`), with what was done as the error's details."""
    if company_id is not None:
        validate_company_id(company_id)
    report = progress or _no_progress
    run = LegacyRun(dry_run=not yes, company_id=company_id)
    with (
        recorded_run(settings, COMMAND, company_id) as record,
        operation_lock(
            settings, company_id or settings.company_id, COMMAND, record.journal, skip=not yes
        ),
    ):
        dsn = service_dsn(settings)
        with connect(dsn, timeout=settings.db_connect_timeout, autocommit=True) as conn:
            if company_id is not None:
                PgAuthStore(conn).known_company(company_id)
            companies = [company_id] if company_id is not None else legacy_companies(conn)
            for company in companies:
                report(f"{'purging' if yes else 'reading'} legacy rows of company {company}")
                try:
                    if yes:
                        done = purge_company(
                            conn,
                            company,
                            lock_timeout_ms=settings.cleanup_lock_timeout_ms,
                            buffer_form=settings.db_buffer_form,
                        )
                    else:
                        done = report_company(conn, company)
                except (psycopg.Error, ResilienceError) as exc:
                    error = database_failure(exc, conn) if isinstance(exc, psycopg.Error) else exc
                    if conn.broken:
                        details = run.to_dict()
                        del details["record"]
                        error.details = details
                        raise error from None
                    run.failures[company] = str(error)
                    continue
                run.companies.append(done)
        record.journal.measurements["legacy"] = run.to_dict()
        if run.failures:
            listed = "; ".join(f"company {c}: {why}" for c, why in run.failures.items())
            details = run.to_dict()
            del details["record"]
            raise PartialFailure(
                f"the legacy purge failed for {len(run.failures)} company(ies), the others "
                f"were done: {listed}",
                DatabaseError.exit_code,
                details,
            )
    run.record = record.path
    return run
