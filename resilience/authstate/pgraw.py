"""Rows copied as they are: seeding datasets, a company's raw rows for a per-company restore,
and removing a company. Not the service's path (that is :mod:`.pgstore`): values, encodings and
times go in and come out exactly as given or stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from resilience.authstate.codec import Style, encode, json_bytes
from resilience.authstate.model import KeyRecord
from resilience.authstate.pgconn import Conn, database_errors
from resilience.authstate.pgimport import DB_STYLE
from resilience.authstate.pgstore import PgAuthStore
from resilience.config import validate_company_id

RawCreds = tuple[Any, ...]
RawKey = tuple[Any, ...]


def insert_raw(
    conn: Conn,
    company_id: str,
    creds: Any | None,
    rows: Iterable[tuple[KeyRecord, Style]],
    *,
    creds_style: Style = DB_STYLE,
) -> int:
    """Seed rows exactly as given (encoding, updated_at, expires_at) with COPY: for datasets
    and restores, not for the service path. Returns the number of key rows written."""
    validate_company_id(company_id)
    count = 0
    with database_errors("seeding"), conn.transaction():
        if creds is not None:
            PgAuthStore(conn).save_creds(company_id, creds, style=creds_style)
        with conn.cursor().copy(
            "COPY whatsapp_keys (company_id, key_type, key_id, value, created_at, updated_at,"
            " expires_at) FROM STDIN"
        ) as copy:
            for record, style in rows:
                updated = record.updated_at or datetime.now().astimezone()
                copy.write_row(
                    (
                        company_id,
                        record.key_type,
                        record.key_id,
                        Jsonb(encode(record.value, style, where=record.key_id), dumps=json_bytes),
                        updated,
                        updated,
                        record.expires_at,
                    )
                )
                count += 1
    return count


def raw_company(conn: Conn, company_id: str) -> tuple[RawCreds | None, list[RawKey]]:
    """A company's creds row and key rows exactly as stored (JSON text, times): what a
    per-company restore copies from a restored backup into the live database."""
    validate_company_id(company_id)
    with database_errors("reading the company's rows"):
        creds = conn.execute(
            "SELECT creds::text, created_at, updated_at FROM whatsapp_auth WHERE company_id = %s",
            (company_id,),
        ).fetchone()
        keys = conn.execute(
            "SELECT key_type, key_id, value::text, created_at, updated_at, expires_at "
            "FROM whatsapp_keys WHERE company_id = %s ORDER BY key_type, key_id",
            (company_id,),
        ).fetchall()
    return (tuple(creds) if creds else None), [tuple(k) for k in keys]


def replace_company_raw(
    conn: Conn, company_id: str, creds: RawCreds | None, keys: list[RawKey]
) -> None:
    """Replace a company's rows by these (from :func:`raw_company`) inside the caller's
    transaction; other companies are not touched."""
    validate_company_id(company_id)
    with database_errors("replacing the company's rows"):
        conn.execute("DELETE FROM whatsapp_keys WHERE company_id = %s", (company_id,))
        conn.execute("DELETE FROM whatsapp_auth WHERE company_id = %s", (company_id,))
        if creds is not None:
            conn.execute(
                "INSERT INTO whatsapp_auth (company_id, creds, created_at, updated_at) "
                "VALUES (%s, %s::jsonb, %s, %s)",
                (company_id, *creds),
            )
        with conn.cursor().copy(
            "COPY whatsapp_keys (company_id, key_type, key_id, value, created_at, "
            "updated_at, expires_at) FROM STDIN"
        ) as copy:
            for key_type, key_id, value, created, updated, expires in keys:
                copy.write_row((company_id, key_type, key_id, value, created, updated, expires))


def delete_company(conn: Conn, company_id: str) -> None:
    """Remove a company's creds and keys in one transaction (drills clean up with this)."""
    validate_company_id(company_id)
    with database_errors("deleting company"), conn.transaction():
        conn.execute("DELETE FROM whatsapp_keys WHERE company_id = %s", (company_id,))
        conn.execute("DELETE FROM whatsapp_auth WHERE company_id = %s", (company_id,))
