"""The change feed: a trigger-fed change table and a NOTIFY channel, on the auth tables.

It works with DDL rights on the auth tables alone (no superuser, no replication privilege), as
on a managed PostgreSQL. Statement-level ``AFTER`` triggers with transition tables record the
identity of every key row inserted, updated or deleted (``company_id, key_type, key_id``) and
every creds row (``key_type`` NULL) in :data:`CHANGES_TABLE`, once per statement, and wake the
mirror with ``NOTIFY`` (only when the statement changed rows: an upsert fires the insert and the
update trigger, one of them often with nothing). Values are not copied: the mirror reads the
rows as they are when it applies, so a change applied twice is harmless and the order of changes
does not matter.

An update of ``whatsapp_keys`` records the rows' new identities from its ``NEW TABLE`` alone
(the service's upserts never change a key's identity: capturing and merging the old rows cost
every upsert a fifth of the trigger's time); an update that does change ``company_id``,
``key_type`` or ``key_id`` also records the old identity, through a row trigger that PostgreSQL
fires only when one of those columns is set and the value differs (never for an upsert).

:func:`install_feed` and :func:`remove_feed` run in one transaction each (nothing is ever half
installed) and are idempotent. A role without the rights they need is told which privilege it
lacks, before any DDL runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from resilience.authstate.pgconn import Conn, database_errors
from resilience.errors import ConfigError
from resilience.infra.commandline import operator_command as cmd

CHANGES_TABLE = "whatsapp_mirror_changes"
CHANNEL = "whatsapp_mirror"
KEYS_FUNCTION = "whatsapp_mirror_keys_changed"
KEYS_MOVED_FUNCTION = "whatsapp_mirror_keys_moved"
AUTH_FUNCTION = "whatsapp_mirror_auth_changed"
FUNCTIONS = (KEYS_FUNCTION, KEYS_MOVED_FUNCTION, AUTH_FUNCTION)
#: Functions of earlier versions of the feed, dropped by install and remove.
OLD_FUNCTIONS = ("whatsapp_mirror_keys_updated",)
_IDENTITY_CHANGED = (
    "OLD.company_id IS DISTINCT FROM NEW.company_id OR OLD.key_type IS DISTINCT FROM "
    "NEW.key_type OR OLD.key_id IS DISTINCT FROM NEW.key_id"
)
#: (trigger, table, what follows ``AFTER``: events, transition tables, level, condition),
#: and the function
TRIGGERS: tuple[tuple[str, str, str, str], ...] = (
    ("whatsapp_mirror_keys_ins", "whatsapp_keys",
     "INSERT ON whatsapp_keys REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT",
     KEYS_FUNCTION),
    ("whatsapp_mirror_keys_upd", "whatsapp_keys",
     "UPDATE ON whatsapp_keys REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT",
     KEYS_FUNCTION),
    ("whatsapp_mirror_keys_mov", "whatsapp_keys",
     "UPDATE OF company_id, key_type, key_id ON whatsapp_keys FOR EACH ROW "
     f"WHEN ({_IDENTITY_CHANGED})",
     KEYS_MOVED_FUNCTION),
    ("whatsapp_mirror_keys_del", "whatsapp_keys",
     "DELETE ON whatsapp_keys REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT",
     KEYS_FUNCTION),
    ("whatsapp_mirror_auth_ins", "whatsapp_auth",
     "INSERT ON whatsapp_auth REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT",
     AUTH_FUNCTION),
    ("whatsapp_mirror_auth_upd", "whatsapp_auth",
     "UPDATE ON whatsapp_auth REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT",
     AUTH_FUNCTION),
    ("whatsapp_mirror_auth_del", "whatsapp_auth",
     "DELETE ON whatsapp_auth REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT",
     AUTH_FUNCTION),
)  # fmt: skip
TRIGGER_NAMES = tuple(t[0] for t in TRIGGERS)

_FUNCTIONS_SQL = f"""
CREATE OR REPLACE FUNCTION {KEYS_FUNCTION}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO {CHANGES_TABLE} (company_id, key_type, key_id)
    SELECT company_id, key_type, key_id FROM changed_rows;
  IF FOUND THEN
    PERFORM pg_notify('{CHANNEL}', '');
  END IF;
  RETURN NULL;
END;
$$;
CREATE OR REPLACE FUNCTION {KEYS_MOVED_FUNCTION}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO {CHANGES_TABLE} (company_id, key_type, key_id)
    VALUES (OLD.company_id, OLD.key_type, OLD.key_id);
  PERFORM pg_notify('{CHANNEL}', '');
  RETURN NULL;
END;
$$;
CREATE OR REPLACE FUNCTION {AUTH_FUNCTION}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO {CHANGES_TABLE} (company_id) SELECT company_id FROM changed_rows;
  IF FOUND THEN
    PERFORM pg_notify('{CHANNEL}', '');
  END IF;
  RETURN NULL;
END;
$$;
"""

_TABLE_SQL = f"""
CREATE TABLE IF NOT EXISTS {CHANGES_TABLE} (
  id         BIGSERIAL PRIMARY KEY,
  company_id TEXT NOT NULL,
  key_type   TEXT NULL,  -- NULL: the creds row of whatsapp_auth
  key_id     TEXT NULL,
  changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""


#: The update function of earlier versions (old and new rows merged): a dump taken then holds
#: a trigger that calls it, so a restore creates it too (``mirror.feed-install`` replaces it).
_OLD_FUNCTIONS_SQL = f"""
CREATE OR REPLACE FUNCTION {OLD_FUNCTIONS[0]}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO {CHANGES_TABLE} (company_id, key_type, key_id)
    SELECT company_id, key_type, key_id FROM new_rows
    UNION SELECT company_id, key_type, key_id FROM old_rows;
  PERFORM pg_notify('{CHANNEL}', '');
  RETURN NULL;
END;
$$;
"""


def objects_sql() -> str:
    """The change table and the trigger functions (those of earlier versions too): a dump of
    the auth tables (``pg_dump -t``) holds the feed's triggers but neither, so a restore
    creates them first (a restored database then records changes, as the one dumped did)."""
    return _TABLE_SQL + _FUNCTIONS_SQL + _OLD_FUNCTIONS_SQL


@dataclass
class FeedStatus:
    """What the database holds of the feed."""

    table: bool
    triggers: list[str]
    functions: list[str]
    pending_changes: int | None = None
    oldest_pending_age_s: float | None = None
    role: str | None = None
    missing_privileges: list[str] = field(default_factory=list)

    @property
    def installed(self) -> bool:
        return self.table and set(self.triggers) == set(TRIGGER_NAMES)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "installed": self.installed}


def _names(conn: Conn, query: str, names: Iterable[str]) -> list[str]:
    rows = conn.execute(query, (list(names),)).fetchall()
    return sorted(str(r[0]) for r in rows)


def feed_status(conn: Conn) -> FeedStatus:
    """The feed's table, triggers and functions as installed, and its backlog."""
    with database_errors("reading the change feed's state"):
        table = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (CHANGES_TABLE,)).fetchone()
        triggers = _names(
            conn,
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname = ANY(%s)",
            TRIGGER_NAMES,
        )
        functions = _names(
            conn,
            "SELECT proname FROM pg_proc WHERE proname = ANY(%s)",
            FUNCTIONS + OLD_FUNCTIONS,
        )
        role_row = conn.execute("SELECT current_user").fetchone()
        status = FeedStatus(
            table=bool(table and table[0]),
            triggers=triggers,
            functions=functions,
            role=str(role_row[0]) if role_row else None,
        )
        if status.table:
            row = conn.execute(
                f"SELECT count(*), extract(epoch FROM now() - min(changed_at)) FROM {CHANGES_TABLE}"
            ).fetchone()
            if row is not None:
                status.pending_changes = int(row[0])
                status.oldest_pending_age_s = None if row[1] is None else float(row[1])
        status.missing_privileges = missing_privileges(conn)
    return status


def missing_privileges(conn: Conn) -> list[str]:
    """The privileges installing (or removing) the feed needs that the current role lacks:
    TRIGGER on both auth tables and CREATE on the schema they live in (for the change table
    and the trigger functions); an existing change table must be ours to replace or drop."""
    missing: list[str] = []
    for table in ("whatsapp_keys", "whatsapp_auth"):
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND has_table_privilege(%s, 'TRIGGER')",
            (table, table),
        ).fetchone()
        if not (row and row[0]):
            missing.append(f"TRIGGER on table {table}")
    row = conn.execute(
        "SELECT n.nspname, has_schema_privilege(n.oid, 'CREATE') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass('whatsapp_keys')"
    ).fetchone()
    if row is not None and not row[1]:
        missing.append(f"CREATE on schema {row[0]}")
    row = conn.execute(
        "SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = to_regclass(%s)",
        (CHANGES_TABLE,),
    ).fetchone()
    if row is not None and not row[0]:
        missing.append(f"ownership of table {CHANGES_TABLE} (it was installed by another role)")
    return missing


def _refuse_without_rights(conn: Conn, what: str) -> None:
    with database_errors("checking the role's privileges"):
        missing = missing_privileges(conn)
        role = conn.execute("SELECT current_user").fetchone()
    if missing:
        who = role[0] if role else "this role"
        raise ConfigError(
            f"cannot {what} the mirror's change feed: role {who} lacks "
            + ", ".join(missing)
            + "; nothing was changed (grant it, or run with the tables' owner)"
        )


def _privilege_error(exc: psycopg.Error, what: str) -> ConfigError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ConfigError(
        f"cannot {what} the mirror's change feed: {first} (privilege missing); "
        "nothing was changed (one transaction, rolled back)"
    )


def install_feed(conn: Conn) -> FeedStatus:
    """Create (or replace) the change table, the trigger functions and the six triggers, in
    one transaction. Re-runs converge; changes already recorded are kept."""
    _refuse_without_rights(conn, "install")
    try:
        with conn.transaction():
            conn.execute(_TABLE_SQL.encode())
            for name, table, *_ in TRIGGERS:
                conn.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}".encode())
            for function in OLD_FUNCTIONS:
                conn.execute(f"DROP FUNCTION IF EXISTS {function}()".encode())
            conn.execute(_FUNCTIONS_SQL.encode())
            for name, _table, clause, function in TRIGGERS:
                conn.execute(
                    f"CREATE TRIGGER {name} AFTER {clause} EXECUTE FUNCTION {function}()".encode()
                )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _privilege_error(exc, "install") from None
    except psycopg.Error as exc:
        with database_errors("installing the change feed"):
            raise exc from None
    return feed_status(conn)


def remove_feed(conn: Conn) -> FeedStatus:
    """Drop the triggers, their functions and the change table, in one transaction."""
    _refuse_without_rights(conn, "remove")
    try:
        with conn.transaction():
            for name, table, *_ in TRIGGERS:
                conn.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}".encode())
            for function in FUNCTIONS + OLD_FUNCTIONS:
                conn.execute(f"DROP FUNCTION IF EXISTS {function}()".encode())
            conn.execute(f"DROP TABLE IF EXISTS {CHANGES_TABLE}".encode())
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _privilege_error(exc, "remove") from None
    except psycopg.Error as exc:
        with database_errors("removing the change feed"):
            raise exc from None
    return feed_status(conn)


def require_feed(conn: Conn) -> None:
    """:class:`ConfigError` unless the feed is installed (the mirror cannot follow without)."""
    status = feed_status(conn)
    if not status.installed:
        absent = sorted(set(TRIGGER_NAMES) - set(status.triggers))
        what = "the change table" if not status.table else f"trigger(s) {', '.join(absent)}"
        raise ConfigError(
            f"the mirror's change feed is not installed ({what} missing): run "
            f"`{cmd('mirror.feed-install')}` with a role that has DDL rights on the auth tables"
        )


@dataclass(frozen=True)
class Change:
    id: int
    company_id: str
    key_type: str | None  # None: creds
    key_id: str | None


def read_changes(conn: Conn, limit: int) -> list[Change]:
    """Up to ``limit`` recorded changes, oldest first (inside the caller's transaction).

    Every row still in the table is unapplied or applied but not yet pruned: the mirror
    deletes rows only after it has applied them, so no position cursor is needed and a
    transaction that commits late (with a lower id) is never skipped."""
    rows = conn.execute(
        f"SELECT id, company_id, key_type, key_id FROM {CHANGES_TABLE} ORDER BY id LIMIT %s",
        (limit,),
    ).fetchall()
    return [Change(int(r[0]), str(r[1]), r[2], r[3]) for r in rows]


def prune_changes(conn: Conn, ids: list[int]) -> int:
    """Delete applied changes; returns how many were deleted."""
    if not ids:
        return 0
    with database_errors("pruning applied changes"), conn.transaction():
        cur = conn.execute(f"DELETE FROM {CHANGES_TABLE} WHERE id = ANY(%s)", (ids,))
        return cur.rowcount
