"""The two meanings of "expired" (docs/domain.md §7), named apart and defined here once.

- **stale**: not written for longer than the retention, ``updated_at < now - retention``
  (default 30 days, ``RESILIENCE_CLEANUP_RETENTION_DAYS``). Brief §9's cleanup: what
  ``cleanup.keys`` deletes by default.
- **past expiry**: the TTL the service writes with every upsert (7 or 14 days) has run out,
  ``expires_at < now``; a ``NULL`` ``expires_at`` never expires. What
  ``cleanup.keys --expired`` deletes.

Each meaning is one :class:`ExpiryRule`: its SQL predicate (:meth:`ExpiryRule.predicate`, with
the parameters :meth:`ExpiryRule.params` fills) and its Python test (:meth:`ExpiryRule.matches`)
say the same thing. Both are judged against one moment, read from the database's clock
(:func:`database_now`) at the start of a run, so a count, a dry run and the deletion that follows
agree with each other, and cleanup and monitoring count the same keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from resilience.authstate.pgconn import Conn, database_errors, read_transaction
from resilience.config import validate_company_id
from resilience.errors import InputError

DEFAULT_RETENTION_DAYS = 30


class Expiry(enum.StrEnum):
    """Which meaning of "expired"."""

    STALE = "stale"
    PAST_EXPIRY = "past_expiry"


#: The SQL of each meaning over `whatsapp_keys` columns; `{col}` is a (qualified) column name.
_SQL = {
    Expiry.STALE: "{updated_at} < %(stale_before)s",
    Expiry.PAST_EXPIRY: "{expires_at} IS NOT NULL AND {expires_at} < %(expired_before)s",
}


@dataclass(frozen=True)
class ExpiryRule:
    """One meaning of "expired"; `retention` only matters for :attr:`Expiry.STALE`."""

    kind: Expiry
    retention: timedelta = timedelta(days=DEFAULT_RETENTION_DAYS)

    def __post_init__(self) -> None:
        if self.retention <= timedelta(0):
            raise InputError(f"the retention must be positive, not {self.retention}")

    @classmethod
    def stale(cls, retention_days: int = DEFAULT_RETENTION_DAYS) -> ExpiryRule:
        if isinstance(retention_days, bool) or not isinstance(retention_days, int):
            raise InputError(f"the retention must be whole days, not {retention_days!r}")
        if retention_days < 1:
            raise InputError(f"the retention must be at least 1 day, not {retention_days}")
        return cls(Expiry.STALE, timedelta(days=retention_days))

    @classmethod
    def past_expiry(cls) -> ExpiryRule:
        return cls(Expiry.PAST_EXPIRY)

    @property
    def retention_days(self) -> int | None:
        return self.retention.days if self.kind is Expiry.STALE else None

    def boundary(self, now: datetime) -> datetime:
        """Keys on the wrong side of this moment are expired in this meaning."""
        return now - self.retention if self.kind is Expiry.STALE else now

    def describe(self) -> str:
        if self.kind is Expiry.STALE:
            return f"stale (not updated for more than {self.retention.days} days)"
        return "past expiry (expires_at has passed)"

    # --- the one definition, twice: SQL and Python -------------------------------------------

    def predicate(self, alias: str | None = None) -> sql.Composed:
        """The SQL condition, with named parameters :meth:`params` fills."""
        return predicate(self.kind, alias)

    def params(self, now: datetime) -> dict[str, datetime]:
        return {_PARAM[self.kind]: self.boundary(now)}

    def matches(
        self, updated_at: datetime | None, expires_at: datetime | None, now: datetime
    ) -> bool:
        """The Python form of :meth:`predicate` for one row."""
        if self.kind is Expiry.STALE:
            return is_stale(updated_at, now, self.retention)
        return is_past_expiry(expires_at, now)


_PARAM = {Expiry.STALE: "stale_before", Expiry.PAST_EXPIRY: "expired_before"}


def predicate(kind: Expiry, alias: str | None = None) -> sql.Composed:
    """The SQL condition of one meaning over `whatsapp_keys` (columns qualified by `alias`)."""

    def column(name: str) -> sql.Composable:
        return sql.Identifier(alias, name) if alias else sql.Identifier(name)

    return sql.SQL(_SQL[kind]).format(
        updated_at=column("updated_at"), expires_at=column("expires_at")
    )


def is_stale(updated_at: datetime | None, now: datetime, retention: timedelta) -> bool:
    """Not written for longer than `retention` (a row always has `updated_at`; None is not
    stale: nothing says how old it is)."""
    return updated_at is not None and updated_at < now - retention


def is_past_expiry(expires_at: datetime | None, now: datetime) -> bool:
    """The TTL has run out (`None` never expires)."""
    return expires_at is not None and expires_at < now


def database_now(conn: Conn) -> datetime:
    """The database's clock: the one moment a run judges every row against."""
    with database_errors("reading the database clock"):
        row = conn.execute("SELECT statement_timestamp()").fetchone()
    assert row is not None
    value = row[0]
    assert isinstance(value, datetime)
    return value


# --- counting both meanings (cleanup's dry run and report; monitoring) --------------------------


@dataclass
class ExpiryCounts:
    """Keys expired in each meaning at one moment, per company and key type."""

    now: datetime
    retention_days: int
    company_id: str | None  # None: every company
    total: int = 0
    #: {meaning: {company: {key type: count}}}
    by_company_type: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    #: {meaning: value bytes as stored (pg_column_size)}
    value_bytes: dict[str, int] = field(default_factory=dict)

    def count(self, kind: Expiry) -> int:
        return sum(sum(types.values()) for types in self.by_company_type.get(kind, {}).values())

    def by_type(self, kind: Expiry) -> dict[str, int]:
        out: dict[str, int] = {}
        for types in self.by_company_type.get(kind, {}).values():
            for key_type, n in types.items():
                out[key_type] = out.get(key_type, 0) + n
        return dict(sorted(out.items()))

    def by_company(self, kind: Expiry) -> dict[str, int]:
        return {
            c: sum(types.values())
            for c, types in sorted(self.by_company_type.get(kind, {}).items())
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "retention_days": self.retention_days,
            "company_id": self.company_id,
            "total_keys": self.total,
            **{
                kind.value: {
                    "count": self.count(kind),
                    "by_type": self.by_type(kind),
                    "by_company": self.by_company(kind),
                    "value_bytes": self.value_bytes.get(kind, 0),
                }
                for kind in Expiry
            },
        }


def count_expired(
    conn: Conn,
    *,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    company_id: str | None = None,
    now: datetime | None = None,
) -> ExpiryCounts:
    """Count the keys of one company (or all) expired in both meanings, in one scan and one
    consistent snapshot, judged at `now` (default: the database's clock)."""
    if company_id is not None:
        validate_company_id(company_id)
    stale = ExpiryRule.stale(retention_days)
    past = ExpiryRule.past_expiry()
    with read_transaction(conn):
        moment = now or database_now(conn)
        scope = sql.SQL("WHERE company_id = %(company)s" if company_id is not None else "")
        query = sql.SQL(
            "SELECT company_id, key_type, count(*),"
            " count(*) FILTER (WHERE {stale}), count(*) FILTER (WHERE {past}),"
            " coalesce(sum(pg_column_size(value)) FILTER (WHERE {stale}), 0),"
            " coalesce(sum(pg_column_size(value)) FILTER (WHERE {past}), 0)"
            " FROM whatsapp_keys {scope} GROUP BY company_id, key_type"
        ).format(stale=stale.predicate(), past=past.predicate(), scope=scope)
        params: dict[str, Any] = {**stale.params(moment), **past.params(moment)}
        if company_id is not None:
            params["company"] = company_id
        rows = conn.execute(query, params).fetchall()
    counts = ExpiryCounts(moment, retention_days, company_id)
    nested: dict[str, dict[str, dict[str, int]]] = {kind.value: {} for kind in Expiry}
    sizes = {kind.value: 0 for kind in Expiry}
    for company, key_type, total, n_stale, n_past, b_stale, b_past in rows:
        counts.total += int(total)
        for kind, n, size in (
            (Expiry.STALE, n_stale, b_stale),
            (Expiry.PAST_EXPIRY, n_past, b_past),
        ):
            if n:
                nested[kind.value].setdefault(company, {})[key_type] = int(n)
                sizes[kind.value] += int(size)
    counts.by_company_type = nested
    counts.value_bytes = sizes
    return counts
