"""The import's write: a company's rows made exactly a given set of keys, in the caller's
transaction, with the service's semantics, and checked by the server before commit.

What :meth:`PgAuthStore.sync_company` runs (the way back and the restore of one company go
through it): one ``COPY`` into an empty company, else ``COPY`` into a keyed temporary table, one
upsert and one delete, then the server's comparison of every row with the uploaded one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.copy import QueuedLibpqWriter
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from resilience.authstate.bufferform import FormChoice
from resilience.authstate.codec import (
    Style,
    canonical,
    db_forms,
    encode,
    json_bytes,
    loads,
)
from resilience.authstate.fingerprint import KeyFingerprint
from resilience.authstate.model import LONG_TTL, SHORT_TTL, ttl_for
from resilience.authstate.pgconn import database_errors
from resilience.config import BufferFormSetting, validate_company_id
from resilience.errors import DatabaseError, VerificationError

if TYPE_CHECKING:
    from resilience.authstate.pgstore import PgAuthStore

#: The form the service's own write path writes (the stand-in's default).
DB_STYLE: Style = "array"


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`PgAuthStore.sync_company` did."""

    key_count: int  # key rows uploaded (and now stored)
    upserted: int  # of them, new or changed
    deleted: list[tuple[str, str]]  # rows (type, id) removed
    creds_changed: bool
    #: the Buffer form the rows written are in, and why (with ``auto``: the rows counted)
    buffer_form: FormChoice | None = None


#: What one way of writing a company's keys did: (rows upserted, rows deleted, and the check:
#: (the company's key rows, rows uploaded, rows the server found equal to the uploaded ones)).
_KeysCheck = tuple[int, list[tuple[str, str]], tuple[int, int, int]]


def _upload_rows(
    keys: Mapping[tuple[str, str], Any],
    where: Callable[[str, str], str] | None,
    advance: Callable[[int], None] | None,
    prints: list[str] | None,
    style: Style = DB_STYLE,
) -> Iterator[tuple[str, str, Jsonb, timedelta]]:
    """``(type, id, value with its Buffers in ``style``, TTL)`` of each key of ``keys``,
    encoded as it is asked for (sync_company); its fingerprint appended to ``prints`` when
    given (from the same walk)."""
    for (key_type, key_id), value in keys.items():
        shown = where(key_type, key_id) if where else f"{key_type}/{key_id}"
        if advance is not None:
            advance(1)
        if prints is None:
            stored = encode(value, style, where=shown)
        else:
            stored, canonical_form = db_forms(value, where=shown, style=style)
            prints.append(KeyFingerprint.of_canonical(key_type, key_id, canonical_form))
        yield key_type, key_id, Jsonb(stored, dumps=json_bytes), ttl_for(key_type)


def _copy_rows(cur: psycopg.Cursor[Any], statement: str, rows: Iterable[Sequence[Any]]) -> None:
    """``COPY ... FROM STDIN`` of ``rows``. psycopg's queued writer sends the data from a
    thread of its own: the server parses one batch while this thread encodes the next."""
    with cur.copy(statement, writer=QueuedLibpqWriter(cur)) as copy:
        for row in rows:
            copy.write_row(row)


def sync_company(
    store: PgAuthStore,
    company_id: str,
    creds: Any,
    keys: Mapping[tuple[str, str], Any],
    *,
    where: Callable[[str, str], str] | None = None,
    advance: Callable[[int], None] | None = None,
    prints: list[str] | None = None,
    buffer_form: BufferFormSetting | None = None,
    kept: Mapping[tuple[str, str], str] | None = None,
    form: FormChoice | None = None,
) -> SyncResult:
    """Make the company's rows exactly ``creds`` and ``keys`` (``{(type, id): value}``)
    inside the caller's transaction, with the service's semantics: a key new or changed is
    upserted with its type's TTL (``updated_at`` by the table's trigger), an unchanged one
    (same decoded value, whatever its Buffer encoding) is not touched, every other row of
    the company is deleted (legacy twins, keys gone), creds are saved when they differ.

    A company without key rows gets its keys by one ``COPY`` into ``whatsapp_keys``, each
    with ``now()`` plus its type's TTL as the server computes them: every key is new, so
    this is the upsert's result, at the cost of the raw ``COPY``. Otherwise the keys are
    streamed by ``COPY`` into a temporary table; rows whose stored jsonb differs are
    compared by decoded value (a row stored with base64 Buffers is unchanged); then one
    ``INSERT ... ON CONFLICT DO UPDATE`` and one ``DELETE`` apply the difference.

    The server then compares the company's rows with the uploaded ones and a difference
    raises :class:`VerificationError`, so the caller's transaction rolls back: the count,
    and each row's jsonb (or decoded value) against the uploaded row. After the direct
    ``COPY`` the count is the check: the rows it wrote are the uploaded values and no other
    session can change them before commit. Creds are compared too. A value that cannot be
    encoded raises :class:`DataError` naming ``where(type, id)``. With ``prints`` the
    fingerprint of every key uploaded is appended to it (its canonical form comes from the
    same encoding walk, while the server parses the previous rows).

    Rows written (new and changed keys, creds when they differ) are in the Buffer form
    :meth:`write_form` chooses (``buffer_form``, default the store's): with ``auto`` the
    form most of the company's rows use before the import, base64 for a company without
    rows. An unchanged row stays as it is, whatever its form.

    ``kept`` (``{(type, id): xmin}``) names rows the caller read in this transaction and keeps
    exactly as they are, without uploading their values (the way back's rows PostgreSQL
    already holds as the merge wants them): they are spared by the delete, counted among
    the company's keys, and the server checks that each is still the version read (its
    ``xmin``), else :class:`VerificationError`. ``form``: :meth:`write_form`'s answer when
    the caller counted the rows' forms in this transaction (the way back, from its read)."""
    validate_company_id(company_id)
    if store.conn.info.transaction_status == TransactionStatus.IDLE:
        raise DatabaseError("sync_company must run inside the caller's transaction")
    conn = store.conn
    form = form or store.write_form(company_id, buffer_form)
    rows = _upload_rows(keys, where, advance, prints, form.style)
    with database_errors("importing the auth state"):
        head = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM whatsapp_keys WHERE company_id = %s), "
            "now() + %s, now() + %s",
            (company_id, SHORT_TTL, LONG_TTL),
        ).fetchone()
        if head is not None and not head[0] and not kept:
            keys_check = _copy_new_keys(
                store, company_id, rows, {SHORT_TTL: head[1], LONG_TTL: head[2]}, len(keys)
            )
        else:
            keys_check = _upsert_keys(store, company_id, keys, rows, kept or {})
        creds_changed, creds_equal = sync_creds(store, company_id, creds, lambda: form.style)
    upserted, deleted, (stored, uploaded, equal) = keys_check
    total = len(keys) + len(kept or {})
    if not (stored == equal == uploaded == total and creds_equal):
        raise VerificationError(
            f"import of company {company_id}: the database holds {stored} key rows, "
            f"{equal} equal to the {total} uploaded, creds "
            f"{'equal' if creds_equal else 'different'}; rolled back"
        )
    return SyncResult(total, upserted, deleted, creds_changed, form)


def sync_creds(
    store: PgAuthStore, company_id: str, creds: Any, style: Callable[[], Style]
) -> tuple[bool, bool]:
    """The company's creds made ``creds`` in the caller's transaction, written (in the Buffer
    form ``style()`` gives) only when they differ by decoded value: (changed, equal to
    ``creds`` when read back)."""
    with database_errors("importing the creds"):
        stored = store.load_creds(company_id)
        changed = stored is None or canonical(stored) != canonical(creds)
        if changed:
            store.save_creds(company_id, creds, style=style())
        after = store.load_creds(company_id) if changed else stored
    return changed, after is not None and canonical(after) == canonical(creds)


def _copy_new_keys(
    store: PgAuthStore,
    company_id: str,
    rows: Iterator[tuple[str, str, Jsonb, timedelta]],
    expires: Mapping[timedelta, datetime],
    uploaded: int,
) -> _KeysCheck:
    """COPY ``rows`` (``uploaded`` of them) into ``whatsapp_keys`` for a company that has
    none (sync_company). The rows it wrote are the uploaded values and no other session can
    change them before commit: the company's row count is the check."""
    cur = store.conn.cursor()
    try:
        _copy_rows(
            cur,
            "COPY whatsapp_keys (company_id, key_type, key_id, value, expires_at) FROM STDIN",
            ((company_id, t, i, value, expires[ttl]) for t, i, value, ttl in rows),
        )
    except psycopg.errors.UniqueViolation:
        raise DatabaseError(
            f"import of company {company_id}: key rows of the company were written by "
            "another session while the import ran (is the service writing to PostgreSQL?); "
            "rolled back, nothing changed: run the import again"
        ) from None
    row = store.conn.execute(
        "SELECT count(*) FROM whatsapp_keys WHERE company_id = %s", (company_id,)
    ).fetchone()
    return uploaded, [], (row[0] if row else 0, uploaded, uploaded)


def _upsert_keys(
    store: PgAuthStore,
    company_id: str,
    keys: Mapping[tuple[str, str], Any],
    rows: Iterator[tuple[str, str, Jsonb, timedelta]],
    kept: Mapping[tuple[str, str], str],
) -> _KeysCheck:
    """Upsert ``rows`` through the temporary table ``resilience_import``, delete the
    company's other rows (not those ``kept``), and count what the server finds equal
    (sync_company)."""
    conn = store.conn
    # A primary key, and statistics once filled: without them the planner, trusting
    # old statistics that put the company at a handful of rows, joined 100k rows by a
    # nested loop over a scan of this table (the DELETE below ran for minutes).
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS resilience_import (key_type text, key_id text, "
        "value jsonb, ttl interval, keep boolean NOT NULL DEFAULT false, ver xid, "
        "PRIMARY KEY (key_type, key_id)) ON COMMIT DROP"
    )
    conn.execute("TRUNCATE resilience_import")
    cur = conn.cursor()
    _copy_rows(cur, "COPY resilience_import (key_type, key_id, value, ttl) FROM STDIN", rows)
    if kept:
        _copy_rows(
            cur,
            "COPY resilience_import (key_type, key_id, keep, ver) FROM STDIN",
            ((t, i, True, version) for (t, i), version in kept.items()),
        )
    conn.execute("ANALYZE resilience_import")
    differing = conn.execute(
        "SELECT i.key_type, i.key_id, k.value::text FROM resilience_import i "
        "JOIN whatsapp_keys k ON k.company_id = %s AND k.key_type = i.key_type "
        "AND k.key_id = i.key_id WHERE k.value <> i.value",
        (company_id,),
    ).fetchall()
    same = [
        (t, i)
        for t, i, text in differing
        if canonical(loads(text, where=f"{t}/{i}")) == canonical(keys[(t, i)])
    ]
    if same:
        conn.execute(
            "UPDATE resilience_import SET keep = true FROM unnest(%s::text[], %s::text[])"
            " AS u(t, i) WHERE key_type = u.t AND key_id = u.i",
            ([t for t, _ in same], [i for _, i in same]),
        )
    upserted = conn.execute(
        "INSERT INTO whatsapp_keys AS k (company_id, key_type, key_id, value, expires_at) "
        "SELECT %s, key_type, key_id, value, now() + ttl FROM resilience_import "
        "WHERE NOT keep ON CONFLICT (company_id, key_type, key_id) DO UPDATE SET "
        "value = EXCLUDED.value, expires_at = EXCLUDED.expires_at "
        "WHERE k.value IS DISTINCT FROM EXCLUDED.value",
        (company_id,),
    ).rowcount
    deleted = conn.execute(
        "DELETE FROM whatsapp_keys k WHERE k.company_id = %s AND NOT EXISTS "
        "(SELECT 1 FROM resilience_import i "
        "WHERE i.key_type = k.key_type AND i.key_id = k.key_id) "
        "RETURNING k.key_type, k.key_id",
        (company_id,),
    ).fetchall()
    check = conn.execute(
        "SELECT (SELECT count(*) FROM whatsapp_keys WHERE company_id = %(c)s), "
        "(SELECT count(*) FROM resilience_import), "
        "(SELECT count(*) FROM resilience_import i JOIN whatsapp_keys k ON "
        "k.company_id = %(c)s AND k.key_type = i.key_type AND k.key_id = i.key_id "
        "AND (k.value = i.value OR (i.keep AND (i.ver IS NULL OR k.xmin = i.ver))))",
        {"c": company_id},
    ).fetchone()
    counts = (check[0], check[1], check[2]) if check else (0, 0, 0)
    return upserted, [(t, i) for t, i in deleted], counts


def rows_beside(
    store: PgAuthStore,
    company_id: str,
    texts: Iterable[tuple[str, str, str]],
) -> Iterator[tuple[str, str, datetime | None, str, str | None]]:
    """Every key row of the company as ``(type, id, updated_at, xmin, value text)`` inside
    the caller's transaction, the text None where the row's jsonb equals the one of
    ``texts`` (``(type, id, JSON text)``, which must be valid jsonb input) for the same
    ``(type, id)``: the way back compares the directory's files with the rows on the server
    and decodes only the rows that differ. Streamed in chunks."""
    validate_company_id(company_id)
    conn = store.conn
    if conn.info.transaction_status == TransactionStatus.IDLE:
        raise DatabaseError("rows_beside must run inside the caller's transaction")
    with database_errors("reading the rows beside the directory"):
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS resilience_beside (key_type text, key_id text, "
            "value jsonb, PRIMARY KEY (key_type, key_id)) ON COMMIT DROP"
        )
        conn.execute("TRUNCATE resilience_beside")
        cur = conn.cursor()
        _copy_rows(cur, "COPY resilience_beside (key_type, key_id, value) FROM STDIN", texts)
        conn.execute("ANALYZE resilience_beside")
        yield from cur.stream(
            "SELECT k.key_type, k.key_id, k.updated_at, k.xmin::text, CASE WHEN "
            "b.value IS NOT NULL AND b.value = k.value THEN NULL ELSE k.value::text END "
            "FROM whatsapp_keys k LEFT JOIN resilience_beside b "
            "ON b.key_type = k.key_type AND b.key_id = k.key_id WHERE k.company_id = %s",
            (company_id,),
            size=1000,  # rows per chunk, as PgAuthStore.stream_company
        )


def creds_text(store: PgAuthStore, company_id: str) -> str | None:
    """The company's creds as their jsonb text (None: no creds row)."""
    validate_company_id(company_id)
    with database_errors("loading creds"):
        row = store.conn.execute(
            "SELECT creds::text FROM whatsapp_auth WHERE company_id = %s", (company_id,)
        ).fetchone()
    return None if row is None else str(row[0])
