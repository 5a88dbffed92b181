"""`cleanup.buffer-form`: rewrite a company's rows into one Buffer form, in batches.

A service reads the Buffers of its rows in one form (Baileys 7's ``BufferJSON.reviver``: base64
only; :mod:`resilience.authstate.bufferform`). Rows in the other form (written by an older
adapter, an import of an earlier version of this tool, a restore) read back as plain objects.
This command rewrites every row of a company that holds a Buffer in another form than the one
asked (``--form``, default ``RESILIENCE_DB_BUFFER_FORM``; ``auto``: the form most of the
company's rows use) into that form; a row without Buffers, or already in it, is not touched.

Key rows go in key-ordered batches of ``RESILIENCE_CLEANUP_BATCH_SIZE``, each its own short
transaction (``SET LOCAL lock_timeout``, rows locked ``FOR UPDATE``), then the creds row in one
more. Each row is deleted and inserted again in one statement with its ``created_at``,
``updated_at`` and ``expires_at``: an ``UPDATE`` would be stamped as a new write by the table's
trigger, making stale keys look fresh and changing which of a legacy pair is the newest. The
decoded value (what Baileys sees, every digest) does not change. A run that stops keeps the
batches it committed; a re-run finds only the rows left. Without ``yes`` (or with ``dry_run``)
the rows are counted per form and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from resilience.authstate.bufferform import (
    UNREADABLE_RE,
    FormChoice,
    FormCounts,
    choose_for,
    count_forms,
    in_form,
)
from resilience.authstate.pgconn import Conn, connect, database_errors
from resilience.config import BufferFormSetting, Settings, service_dsn, validate_company_id
from resilience.errors import DatabaseError, InputError, PartialFailure, ResilienceError
from resilience.maintenance.cleanup import database_failure
from resilience.runs.record import recorded_run

Progress = Callable[[str], None]
COMMAND = "cleanup.buffer-form"

_NEXT_KEYS = (
    "SELECT key_type, key_id, value::text FROM whatsapp_keys WHERE company_id = %(c)s "
    "AND (company_id, key_type, key_id) > (%(c)s, %(t)s, %(i)s) AND value::text ~ %(re)s "
    "ORDER BY key_type, key_id LIMIT %(n)s FOR UPDATE"
)
_REWRITE_KEYS = (
    "WITH u(t, i, v) AS (SELECT * FROM unnest(%(t)s::text[], %(i)s::text[], %(v)s::text[])), "
    "gone AS (DELETE FROM whatsapp_keys k USING u WHERE k.company_id = %(c)s "
    "AND k.key_type = u.t AND k.key_id = u.i RETURNING k.company_id, k.key_type, k.key_id, "
    "u.v::jsonb, k.created_at, k.updated_at, k.expires_at) "
    "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, created_at, updated_at, "
    "expires_at) SELECT * FROM gone"
)
_REWRITE_CREDS = (
    "WITH gone AS (DELETE FROM whatsapp_auth WHERE company_id = %(c)s "
    "RETURNING company_id, created_at, updated_at) "
    "INSERT INTO whatsapp_auth (company_id, creds, created_at, updated_at) "
    "SELECT company_id, %(v)s::jsonb, created_at, updated_at FROM gone"
)


def _no_progress(_message: str) -> None:
    return None


@dataclass
class CompanyRewrite:
    """One company: the form asked, its rows per form before, and what was rewritten."""

    company_id: str
    choice: FormChoice
    before: FormCounts
    rewritten: int = 0  # key rows
    creds_rewritten: bool = False
    batches: int = 0
    last_key: tuple[str, str] | None = None
    done: bool = False

    @property
    def pending(self) -> int:
        """Rows (key rows and creds) in another form than the one asked, before the run."""
        return sum(self.before.unreadable(self.choice.style).values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "company_id": self.company_id,
            "form": self.choice.style,
            "setting": self.choice.setting,
            "before": self.before.to_dict(),
            "pending": self.pending,
            "rewritten": self.rewritten,
            "creds_rewritten": self.creds_rewritten,
            "batches": self.batches,
            "last_key": list(self.last_key) if self.last_key else None,
            "done": self.done,
        }


def counted(conn: Conn, company_id: str, setting: BufferFormSetting) -> CompanyRewrite:
    """The company's rows per form and the form ``setting`` picks for it; nothing written."""
    with database_errors("counting the rows' Buffer forms"):
        choice = choose_for(conn, company_id, setting)
        before = choice.counts or count_forms(conn, company_id)
    return CompanyRewrite(company_id, choice, before)


def rewrite_company(
    conn: Conn,
    company_id: str,
    setting: BufferFormSetting,
    *,
    batch_size: int = 5000,
    lock_timeout_ms: int = 1000,
    dry_run: bool = False,
    progress: Progress | None = None,
    done: CompanyRewrite | None = None,
) -> CompanyRewrite:
    """Rewrite the company's rows that are not in the form ``setting`` picks (module text) on
    an autocommit connection; with ``dry_run`` only count them. ``done``, when given, is the
    company as :func:`counted` found it, filled as batches commit (so a caller that catches an
    error knows how far it got)."""
    validate_company_id(company_id)
    say = progress or _no_progress
    result = done or counted(conn, company_id, setting)
    if dry_run:
        return result
    style, pattern = result.choice.style, UNREADABLE_RE[result.choice.style]
    after = ("", "")
    while True:
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
            rows = conn.execute(
                _NEXT_KEYS,
                {"c": company_id, "t": after[0], "i": after[1], "re": pattern, "n": batch_size},
            ).fetchall()
            if not rows:
                break
            values = [in_form(text, style, where=f"{t}/{i}") for t, i, text in rows]
            written = conn.execute(
                _REWRITE_KEYS,
                {
                    "c": company_id,
                    "t": [r[0] for r in rows],
                    "i": [r[1] for r in rows],
                    "v": values,
                },
            ).rowcount
            if written != len(rows):  # raised inside the batch: it rolls back
                raise DatabaseError(
                    f"company {company_id}: a batch rewrote {written} of {len(rows)} rows; "
                    "rolled back"
                )
        after = (rows[-1][0], rows[-1][1])
        result.rewritten += len(rows)
        result.batches += 1
        result.last_key = after
        say(f"company {company_id}: {result.rewritten} rows rewritten as {style}")
        if len(rows) < batch_size:
            break
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
        creds = conn.execute(
            "SELECT creds::text FROM whatsapp_auth WHERE company_id = %s AND creds::text ~ %s "
            "FOR UPDATE",
            (company_id, pattern),
        ).fetchone()
        if creds is not None:
            value = in_form(creds[0], style, where="creds")
            conn.execute(_REWRITE_CREDS, {"c": company_id, "v": value})
            result.creds_rewritten = True
    result.done = True
    return result


@dataclass
class BufferFormRun:
    dry_run: bool
    company_id: str | None
    setting: BufferFormSetting
    companies: list[CompanyRewrite] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    record: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": COMMAND,
            "dry_run": self.dry_run,
            "company_id": self.company_id,
            "setting": self.setting,
            "pending": sum(c.pending for c in self.companies),
            "rewritten": sum(c.rewritten + c.creds_rewritten for c in self.companies),
            "companies": [c.to_dict() for c in self.companies],
            "failures": dict(self.failures),
            "record": str(self.record) if self.record else None,
        }


def rewrite_buffer_form(
    settings: Settings,
    *,
    company_id: str | None = None,
    form: BufferFormSetting | None = None,
    yes: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> BufferFormRun:
    """Count (default, or ``dry_run``) or with ``yes`` rewrite the rows of one company (or of
    every company) into ``form`` (default ``RESILIENCE_DB_BUFFER_FORM``). A company that fails
    keeps the batches it committed and the others are done (:class:`PartialFailure`); a lost
    database stops the run, with what was done as the error's details."""
    if yes and dry_run:
        raise InputError("--yes and --dry-run contradict each other: give one")
    if company_id is not None:
        validate_company_id(company_id)
    setting: BufferFormSetting = form or settings.db_buffer_form
    if setting not in ("auto", "array", "base64"):
        raise InputError(f"unknown Buffer form {str(setting)[:20]!r}: use auto, array or base64")
    say = progress or _no_progress
    run = BufferFormRun(dry_run=not yes, company_id=company_id, setting=setting)
    exit_code = 0  # of the first company that failed
    with recorded_run(settings, COMMAND, company_id) as record:
        dsn = service_dsn(settings)
        with connect(dsn, timeout=settings.db_connect_timeout, autocommit=True) as conn:
            if company_id is not None:
                companies = [company_id]
            else:
                with database_errors("listing companies"):
                    companies = [
                        r[0]
                        for r in conn.execute(
                            "SELECT company_id FROM whatsapp_auth UNION "
                            "SELECT DISTINCT company_id FROM whatsapp_keys ORDER BY 1"
                        ).fetchall()
                    ]
            for company in companies:
                say(f"{'rewriting' if yes else 'counting'} the Buffer forms of company {company}")
                done: CompanyRewrite | None = None
                try:
                    done = counted(conn, company, setting)
                    rewrite_company(
                        conn,
                        company,
                        setting,
                        batch_size=settings.cleanup_batch_size,
                        lock_timeout_ms=settings.cleanup_lock_timeout_ms,
                        dry_run=not yes,
                        progress=say,
                        done=done,
                    )
                except (psycopg.Error, ResilienceError) as exc:
                    error = database_failure(exc, conn) if isinstance(exc, psycopg.Error) else exc
                    if done is not None:
                        run.companies.append(done)
                    if conn.broken:
                        details = run.to_dict()
                        del details["record"]
                        error.details = details
                        raise error from None
                    run.failures[company] = str(error)
                    exit_code = exit_code or error.exit_code
                    continue
                run.companies.append(done)
        record.journal.measurements["buffer_form"] = run.to_dict()
        if run.failures:
            listed = "; ".join(f"company {c}: {why}" for c, why in run.failures.items())
            details = run.to_dict()
            del details["record"]
            raise PartialFailure(
                f"the Buffer form rewrite failed for {len(run.failures)} company(ies), the "
                f"others were done (a re-run continues): {listed}",
                exit_code or DatabaseError.exit_code,
                details,
            )
    run.record = record.path
    return run
