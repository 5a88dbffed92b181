"""The auth-state schema (docs/domain.md §2), kept as one migration file beside this module."""

from __future__ import annotations

from importlib.resources import files

import psycopg
from psycopg import sql

TABLES = ("whatsapp_auth", "whatsapp_keys")


def schema_sql() -> str:
    return files("resilience.authstate").joinpath("schema.sql").read_text(encoding="utf-8")


def apply_schema(conn: psycopg.Connection[object], owner: str | None = None) -> None:
    """Apply the schema in one transaction; hand the tables to `owner` when given."""
    with conn.transaction():
        conn.execute(schema_sql().encode())
        if owner:
            for table in TABLES:
                conn.execute(
                    sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                        sql.Identifier(table), sql.Identifier(owner)
                    )
                )
            conn.execute(
                sql.SQL("ALTER FUNCTION set_updated_at() OWNER TO {}").format(sql.Identifier(owner))
            )


def trigger_function_sql() -> str:
    """The `set_updated_at()` function alone: a dump of the auth tables (`pg_dump -t`) holds
    their triggers but not the function they call, so a restore creates it first."""
    text = schema_sql()
    start = text.index("CREATE OR REPLACE FUNCTION")
    end = text.index("LANGUAGE plpgsql;", start) + len("LANGUAGE plpgsql;")
    return text[start:end]
