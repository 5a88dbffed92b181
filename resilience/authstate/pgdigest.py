"""Digests of the stored rows, computed by PostgreSQL: one per company, no key decoded.

A backup records, beside each company's canonical set digest (:mod:`resilience.authstate.view`,
what a directory of files gives), the digest of its rows *as stored*: every column of its
`whatsapp_auth` row and of its `whatsapp_keys` rows, their values as jsonb's text, Buffers in
whatever form and legacy twins as they are. Recomputing it over a restored database checks the
rows byte for byte, which is stronger than the decoded comparison (a Buffer rewritten from an
array to base64 keeps its canonical digest but changes this one), and costs one pass of SQL.

The encoding depends on no session setting: timestamps are written in UTC with microseconds,
text is UTF-8 (`convert_to`), jsonb's text output is a function of the stored value, and the
key rows are combined in the order of their own hashes (bytes; no collation). Fields are
separated by NUL, which PostgreSQL text and jsonb cannot hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resilience.authstate.pgconn import database_errors

# infinite timestamps have no to_char: their own text ('infinity', '-infinity'); NULL is '-'
_TS = (
    "coalesce(to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), {col}::text, '-')"
)


def _row(*fields: str) -> str:
    """sha256 over the fields as UTF-8, separated by NUL."""
    parts = " || E'\\\\x00'::bytea || ".join(f"convert_to({f}, 'UTF8')" for f in fields)
    return f"sha256({parts})"


_KEY_ROW = _row(
    "key_type",
    "key_id",
    _TS.format(col="created_at"),
    _TS.format(col="updated_at"),
    _TS.format(col="expires_at"),
    "value::text",
)
_CREDS_ROW = _row(_TS.format(col="created_at"), _TS.format(col="updated_at"), "creds::text")

#: (company_id, hex digest) of every company with creds or keys (`{where}`: none, or
#: `_IN_COMPANIES`).
STORED_DIGESTS_SQL = f"""
WITH keys AS (
  SELECT company_id, count(*) AS n, string_agg(h, ''::bytea ORDER BY h) AS hashes
  FROM (SELECT company_id, {_KEY_ROW} AS h FROM whatsapp_keys {{where}}) AS key_rows
  GROUP BY company_id
), creds AS (
  SELECT company_id, {_CREDS_ROW} AS h FROM whatsapp_auth {{where}}
)
SELECT coalesce(k.company_id, c.company_id),
       encode(sha256(
         convert_to(concat(E'stored-rows:1\\ncreds:', coalesce(encode(c.h, 'hex'), 'absent'),
                           E'\\nkeys:', coalesce(k.n, 0), E'\\n'), 'UTF8')
         || coalesce(k.hashes, ''::bytea)
       ), 'hex')
FROM keys k FULL JOIN creds c ON c.company_id = k.company_id
"""


_IN_COMPANIES = "WHERE company_id = ANY(%(companies)s)"


def stored_digests(conn: Any, companies: Sequence[str] | None = None) -> dict[str, str]:
    """Every company's digest of its stored rows (hex SHA-256), by company id, read by the
    server in one statement, inside whatever transaction (snapshot) `conn` is in; only those
    of `companies` when given."""
    if companies is None:
        query, params = STORED_DIGESTS_SQL.format(where=""), None
    else:
        query, params = STORED_DIGESTS_SQL.format(where=_IN_COMPANIES), {"companies": companies}
    with database_errors("digesting the stored rows"):
        rows = conn.execute(query.encode(), params).fetchall()
    return {str(company): str(digest) for company, digest in rows}
