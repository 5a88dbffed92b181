"""Is data missing? (scenarios 3 and 4). A company's keys per Baileys type against the newest
backup's manifest: a type down by more than the threshold (and by at least
:data:`MIN_DROP_KEYS`), or creds gone, is scenario 3."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resilience.authstate.pgconn import Conn
from resilience.authstate.view import baileys_ref
from resilience.backup.manifest import CompanyDigest

#: a type must also lose at least this many keys: 1 of 4 gone is 25 % and normal traffic
MIN_DROP_KEYS = 5


@dataclass
class Completeness:
    company_id: str
    backup_id: str | None
    has_creds: bool
    now_total: int
    backup_total: int | None
    now_by_type: dict[str, int]
    backup_by_type: dict[str, int] | None
    drops: list[dict[str, Any]] = field(default_factory=list)  # types down over the threshold
    creds_lost: bool = False
    note: str | None = None

    @property
    def missing(self) -> bool:
        return bool(self.drops) or self.creds_lost

    def to_dict(self) -> dict[str, Any]:
        return {
            "company_id": self.company_id,
            "backup_id": self.backup_id,
            "has_creds": self.has_creds,
            "now_total": self.now_total,
            "backup_total": self.backup_total,
            "now_by_type": self.now_by_type,
            "backup_by_type": self.backup_by_type,
            "drops": self.drops,
            "creds_lost": self.creds_lost,
            "missing": self.missing,
            "note": self.note,
        }


def counts_by_type(conn: Conn, company_id: str) -> dict[str, int]:
    """Keys per Baileys type as the service sees them (legacy rows counted under their real
    type; a legacy twin may count twice, which never hides a loss)."""
    rows = conn.execute(
        "SELECT key_type, min(key_id), count(*)"
        " FROM whatsapp_keys WHERE company_id = %s GROUP BY key_type",
        (company_id,),
    ).fetchall()
    out: dict[str, int] = {}
    for key_type, some_id, count in rows:  # a legacy type's rows all split the same way
        real = baileys_ref(key_type, some_id)[0]
        out[real] = out.get(real, 0) + int(count)
    return dict(sorted(out.items()))


def compare(
    conn: Conn,
    company_id: str,
    backup_id: str | None,
    backed_up: CompanyDigest | None,
    *,
    drop_pct: float,
) -> Completeness:
    has_creds = (
        conn.execute("SELECT 1 FROM whatsapp_auth WHERE company_id = %s", (company_id,)).fetchone()
        is not None
    )
    now = counts_by_type(conn, company_id)
    result = Completeness(
        company_id,
        backup_id,
        has_creds,
        sum(now.values()),
        None if backed_up is None else backed_up.key_count,
        now,
        None if backed_up is None else backed_up.by_type,
    )
    if backed_up is None:
        result.note = "no backup holds this company: nothing to compare with"
        return result
    result.creds_lost = not has_creds and backed_up.has_creds is not False
    if backed_up.by_type is None:
        result.note = "the backup's manifest predates counts per type: totals compared"
        before = {"(all types)": backed_up.key_count}
        after = {"(all types)": result.now_total}
    else:
        before, after = backed_up.by_type, now
    for key_type, then in sorted(before.items()):
        count = after.get(key_type, 0)
        lost = then - count
        if then > 0 and lost >= MIN_DROP_KEYS and lost * 100 / then > drop_pct:
            result.drops.append(
                {
                    "type": key_type,
                    "backup": then,
                    "now": count,
                    "down_pct": round((then - count) * 100 / then, 1),
                }
            )
    return result
