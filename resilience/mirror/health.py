"""The mirror as the monitor and `health` see it: lag in seconds and in changes, repairs, and
the state of its process, from its position file and the change table."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from resilience.authstate.pgconn import Conn
from resilience.config import Settings
from resilience.errors import DataError
from resilience.mirror import feed
from resilience.mirror.position import POSITION_FILE, read_position


def _alive(pid: int | None) -> bool | None:
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mirror_observation(
    settings: Settings, conn: Conn | None, now: datetime | None = None
) -> dict[str, Any]:
    """``state`` "off" when no mirror ever wrote a position under ``mirror_dir``; else its
    lag (seconds since its confirmed position), pending changes (the change table's backlog
    when the database answers, else what the mirror saw last), repairs and process state."""
    now = now or datetime.now(UTC)
    try:
        position = read_position(settings.mirror_dir)
    except DataError as exc:
        return {"state": "error", "error": str(exc)}
    if position is None:
        return {"state": "off", "why": f"no {POSITION_FILE} in {settings.mirror_dir}"}
    backlog: int | None = None
    oldest: float | None = None
    if conn is not None:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (feed.CHANGES_TABLE,)).fetchone()
        if row and row[0]:
            row = conn.execute(
                f"SELECT count(*), extract(epoch FROM now() - min(changed_at)) "
                f"FROM {feed.CHANGES_TABLE}"
            ).fetchone()
            if row is not None:
                backlog = int(row[0])
                oldest = None if row[1] is None else round(float(row[1]), 3)
    alive = _alive(position.pid)
    lag = position.lag_s(now)
    return {
        "state": "ok",
        "process": "running" if alive else ("gone" if alive is False else "unknown"),
        "pid": position.pid,
        "mirror_state": position.state,
        "confirmed_at": position.confirmed_at.isoformat() if position.confirmed_at else None,
        "lag_s": None if lag is None else round(lag, 3),
        "pending_changes": backlog if backlog is not None else position.pending_changes,
        "oldest_pending_age_s": oldest,
        "last_batch": position.last_batch,
        "last_apply_s": position.last_apply_s,
        "reconcile_at": position.reconcile_at.isoformat() if position.reconcile_at else None,
        "reconcile_repairs_total": position.reconcile_repairs_total,
        "reconcile_last": position.reconcile_last[:10],
        "last_error": position.last_error,
        "companies": len(position.companies),
        "lag_alert_s": settings.mirror_lag_alert,
    }
