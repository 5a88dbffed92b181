"""The auth state in PostgreSQL, read and written as the service does (docs/domain.md §2).

Keys are read by `company_id, key_type, key_id = ANY(ids)`; written by multi-row upserts in
batches of 100 with the TTL of their type; a `None` value deletes the key; creds are one upsert.
The service's own write path (`set_keys`, `save_creds`) writes the form their ``style`` names
(default "array"; the stand-in passes its ``DB_BUFFER_FORM``); the import (`pgimport.sync_company`)
writes the form the store's `buffer_form` chooses per company
(:mod:`resilience.authstate.bufferform`). Both encodings are read.

The roles beside it: connections and what their failures mean (:mod:`.pgconn`), the import's
verified write (:mod:`.pgimport`), the raw copy that seeds, restores and removes companies
(:mod:`.pgraw`); this module keeps the service's key semantics, reads and counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from resilience.authstate.bufferform import FormChoice, FormCounts, choose, choose_for, count_forms
from resilience.authstate.codec import (
    Style,
    decode,
    encode,
    json_bytes,
    loads,
    parse,
)
from resilience.authstate.model import KeyRecord, ttl_for
from resilience.authstate.pgconn import (  # the connection API, also reached from here
    Conn,
    database_errors,
)
from resilience.authstate.pgimport import DB_STYLE
from resilience.authstate.schema import TABLES
from resilience.config import BufferFormSetting, validate_company_id
from resilience.errors import (
    InputError,
)

BATCH_SIZE = 100
#: Rows per chunk when a company is streamed (libpq's chunked rows mode).
STREAM_ROWS = 1000


def legacy_twin(key_type: str, key_id: str) -> tuple[str, str] | None:
    """The row the old migration made of this key by splitting at the first dash, if other."""
    if "-" not in key_type:
        return None
    head, rest = key_type.split("-", 1)
    return head, f"{rest}-{key_id}"


@dataclass(frozen=True)
class CredsRow:
    """A company's creds as :meth:`PgAuthStore.stream_company` yields them."""

    value: Any


def _record_order(record: KeyRecord) -> tuple[str, str]:
    return record.key_type, record.key_id


class PgAuthStore:
    """Auth state of every company in one database, through one connection.

    ``buffer_form`` is the Buffer form :func:`.pgimport.sync_company` writes rows in
    (``RESILIENCE_DB_BUFFER_FORM``): ``auto`` (per company, the form most of its rows use),
    ``array`` or ``base64``."""

    def __init__(self, conn: Conn, *, buffer_form: BufferFormSetting = "auto") -> None:
        self.conn = conn
        choose(buffer_form)  # an unknown form is refused here, before anything is written
        self.buffer_form: BufferFormSetting = buffer_form

    # --- Buffer forms ---------------------------------------------------------------------------
    def buffer_form_counts(self, company_id: str) -> FormCounts:
        """The company's rows per Buffer form (:mod:`resilience.authstate.bufferform`)."""
        with database_errors("counting the rows' Buffer forms"):
            return count_forms(self.conn, company_id)

    def write_form(self, company_id: str, setting: BufferFormSetting | None = None) -> FormChoice:
        """The form rows of ``company_id`` are written in: ``setting`` (default: the store's
        ``buffer_form``), with ``auto`` the majority of the company's rows now."""
        with database_errors("counting the rows' Buffer forms"):
            return choose_for(self.conn, company_id, setting or self.buffer_form)

    # --- creds --------------------------------------------------------------------------------
    def load_creds(self, company_id: str) -> Any | None:
        validate_company_id(company_id)
        with database_errors("loading creds"):
            row = self.conn.execute(
                "SELECT creds FROM whatsapp_auth WHERE company_id = %s", (company_id,)
            ).fetchone()
        return None if row is None else decode(row[0], where="creds")

    def save_creds(self, company_id: str, creds: Any, *, style: Style = DB_STYLE) -> None:
        validate_company_id(company_id)
        with database_errors("saving creds"), self.conn.transaction():
            self.conn.execute(
                "INSERT INTO whatsapp_auth (company_id, creds) VALUES (%s, %s) "
                "ON CONFLICT (company_id) DO UPDATE SET creds = EXCLUDED.creds",
                (company_id, Jsonb(encode(creds, style, where="creds"), dumps=json_bytes)),
            )

    # --- keys ---------------------------------------------------------------------------------
    def get_keys(self, company_id: str, key_type: str, ids: Iterable[str]) -> dict[str, Any]:
        validate_company_id(company_id)
        with database_errors("reading keys"):
            rows = self.conn.execute(
                "SELECT key_id, value FROM whatsapp_keys "
                "WHERE company_id = %s AND key_type = %s AND key_id = ANY(%s)",
                (company_id, key_type, list(ids)),
            ).fetchall()
        return {key_id: decode(value, where=f"{key_type}/{key_id}") for key_id, value in rows}

    def set_keys(
        self,
        company_id: str,
        data: Mapping[str, Mapping[str, Any | None]],
        *,
        style: Style = DB_STYLE,
    ) -> tuple[int, int]:
        """Apply `{type: {id: value or None}}` in one transaction, Buffers in ``style``; return
        (upserted, deleted).

        Deleting a key also deletes its legacy twin (`pre`/`key-5` for `pre-key`/`5`): to
        Baileys they are one key, and a twin left behind would come back on the next export.
        """
        validate_company_id(company_id)
        upserts: list[tuple[str, str, Any]] = []
        deletes: list[tuple[str, str]] = []
        for key_type, items in data.items():
            for key_id, value in items.items():
                if value is None:
                    deletes.append((key_type, key_id))
                else:
                    upserts.append((key_type, key_id, encode(value, style, where=key_id)))
        deletes += [twin for t, i in deletes if (twin := legacy_twin(t, i)) is not None]
        deleted = 0
        with database_errors("writing keys"), self.conn.transaction():
            for start in range(0, len(upserts), BATCH_SIZE):
                self._upsert_batch(company_id, upserts[start : start + BATCH_SIZE])
            for start in range(0, len(deletes), BATCH_SIZE):
                batch = deletes[start : start + BATCH_SIZE]
                cur = self.conn.execute(
                    "DELETE FROM whatsapp_keys k USING unnest(%s::text[], %s::text[]) AS d(t, i) "
                    "WHERE k.company_id = %s AND k.key_type = d.t AND k.key_id = d.i",
                    ([t for t, _ in batch], [i for _, i in batch], company_id),
                )
                deleted += cur.rowcount
        return len(upserts), deleted

    def _upsert_batch(self, company_id: str, batch: list[tuple[str, str, Any]]) -> None:
        values = sql.SQL(", ").join(sql.SQL("(%s, %s, %s, %s, now() + %s)") for _ in batch)
        params: list[Any] = []
        for key_type, key_id, value in batch:
            params += [
                company_id,
                key_type,
                key_id,
                Jsonb(value, dumps=json_bytes),
                ttl_for(key_type),
            ]
        self.conn.execute(
            sql.SQL(
                "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, expires_at) "
                "VALUES {} ON CONFLICT (company_id, key_type, key_id) DO UPDATE SET "
                "value = EXCLUDED.value, expires_at = EXCLUDED.expires_at"
            ).format(values),
            params,
        )

    # --- whole-company views --------------------------------------------------------------------
    def companies(self) -> list[str]:
        with database_errors("listing companies"):
            rows = self.conn.execute(
                "SELECT company_id FROM whatsapp_auth UNION SELECT DISTINCT company_id "
                "FROM whatsapp_keys ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]

    def has_company(self, company_id: str) -> bool:
        """The company has a creds row or a key row."""
        validate_company_id(company_id)
        with database_errors("looking the company up"):
            row = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM whatsapp_auth WHERE company_id = %s) "
                "OR EXISTS (SELECT 1 FROM whatsapp_keys WHERE company_id = %s)",
                (company_id, company_id),
            ).fetchone()
        return bool(row and row[0])

    def known_company(self, company_id: str) -> None:
        """InputError (exit 2, one line naming it) unless the company has a row."""
        if not self.has_company(company_id):
            raise InputError(
                f"unknown company {company_id!r}: no creds and no keys in the database"
            )

    def records(self, company_id: str) -> list[KeyRecord]:
        """Every key row of a company, legacy rows included, values decoded."""
        validate_company_id(company_id)
        with database_errors("reading keys"):
            rows = self.conn.execute(
                "SELECT key_type, key_id, value, updated_at, expires_at FROM whatsapp_keys "
                "WHERE company_id = %s ORDER BY key_type, key_id",
                (company_id,),
            ).fetchall()
        return [
            KeyRecord(company_id, t, i, decode(v, where=f"{t}/{i}"), updated, expires)
            for t, i, v, updated, expires in rows
        ]

    def stream_company(
        self, company_id: str, *, decoded: bool = True
    ) -> Iterator[CredsRow | KeyRecord]:
        """A company's creds (a :class:`CredsRow`, if it has any) and every key row (legacy
        rows included), in no particular order, as the server sends them: one statement, one
        snapshot of the database and one round trip, whatever the isolation level; rows arrive
        in chunks (libpq's chunked rows mode), so the caller works on them while the server
        sends the rest, each with its version (``xmin``). Values travel as JSON text and are
        parsed once, by the codec; decoded (Buffers as bytes) unless ``decoded`` is False
        (Buffer objects as stored: what an export re-encodes in one walk, see
        :func:`~resilience.authstate.codec.file_forms`)."""
        read = loads if decoded else parse
        validate_company_id(company_id)
        conn = self.conn
        # autocommit or inside the caller's transaction: no transaction of our own (and no
        # round trips for it); an idle non-autocommit connection is left idle again
        own = not conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
        with (
            database_errors("reading the auth state"),
            conn.transaction() if own else nullcontext(),
            conn.cursor() as cur,
        ):
            for part, key_type, key_id, text, updated, expires, version in cur.stream(
                "SELECT 0 AS part, NULL AS key_type, NULL AS key_id, creds::text, updated_at, "
                "NULL::timestamptz, NULL FROM whatsapp_auth WHERE company_id = %(c)s UNION ALL "
                "SELECT 1, key_type, key_id, value::text, updated_at, expires_at, xmin::text "
                "FROM whatsapp_keys WHERE company_id = %(c)s",
                {"c": company_id},
                size=STREAM_ROWS,
            ):
                if part == 0:
                    yield CredsRow(read(text, where="creds"))
                else:
                    value = read(text, where=f"{key_type}/{key_id}")
                    yield KeyRecord(company_id, key_type, key_id, value, updated, expires, version)

    def stored_bytes(self, company_id: str) -> tuple[int, int, int]:
        """(bytes of the key values as stored, number of keys, bytes of the creds), read by one
        statement (one snapshot, one round trip): what an export's disk estimate starts from."""
        validate_company_id(company_id)
        with database_errors("reading the auth state's size"):
            row = self.conn.execute(
                "SELECT coalesce(sum(pg_column_size(value)), 0), count(*), "
                "(SELECT coalesce(sum(pg_column_size(creds)), 0) FROM whatsapp_auth "
                "WHERE company_id = %(c)s) FROM whatsapp_keys WHERE company_id = %(c)s",
                {"c": company_id},
            ).fetchone()
        if row is None:
            return 0, 0, 0
        return int(row[0]), int(row[1]), int(row[2])

    def row_counts(self) -> dict[str, int]:
        """Rows per auth table (every company): what a backup's manifest records."""
        counts = {}
        for table in TABLES:
            with database_errors(f"counting {table}"):
                row = self.conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                ).fetchone()
            counts[table] = int(row[0]) if row else 0
        return counts

    def count_keys(self, company_id: str) -> int:
        with database_errors("counting keys"):
            row = self.conn.execute(
                "SELECT count(*) FROM whatsapp_keys WHERE company_id = %s", (company_id,)
            ).fetchone()
        return int(row[0]) if row else 0
