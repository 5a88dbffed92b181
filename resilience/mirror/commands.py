"""What the `mirror.*` tasks call: the feed's install and removal, the long-running mirror,
its PM2 entry, and its status."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.authstate.pgconn import connect
from resilience.config import Settings
from resilience.errors import DataError, ResilienceError
from resilience.infra import daemon
from resilience.infra.commandline import Launcher
from resilience.infra.daemon import Daemon
from resilience.infra.redact import Redactor, redact_dsn
from resilience.mirror import feed
from resilience.mirror.mirror import Mirror, mirror_dsn
from resilience.mirror.position import read_position
from resilience.mirror.state import CycleResult
from resilience.runs.record import recorded_run

PLAN_INSTALL = [
    f"CREATE TABLE IF NOT EXISTS {feed.CHANGES_TABLE} (id, company_id, key_type, key_id, "
    "changed_at)",
    "CREATE OR REPLACE FUNCTION " + ", ".join(feed.FUNCTIONS),
    *[f"CREATE TRIGGER {name} AFTER {clause}" for name, _table, clause, _f in feed.TRIGGERS],
]
PLAN_REMOVE = [
    *[f"DROP TRIGGER IF EXISTS {name} ON {table}" for name, table, *_ in feed.TRIGGERS],
    "DROP FUNCTION IF EXISTS " + ", ".join(feed.FUNCTIONS + feed.OLD_FUNCTIONS),
    f"DROP TABLE IF EXISTS {feed.CHANGES_TABLE} (changes not yet applied are lost)",
]


def change_feed(settings: Settings, action: str, *, dry_run: bool) -> dict[str, Any]:
    """Install or remove the change feed (one transaction), or only say what would be done
    and what the database holds now (``dry_run``)."""
    dsn = mirror_dsn(settings)
    with recorded_run(settings, f"mirror.feed-{action}") as record:
        journal = record.journal
        journal.register_secret(dsn)
        with connect(dsn, timeout=settings.db_connect_timeout) as conn:
            before = feed.feed_status(conn)
            plan = PLAN_INSTALL if action == "install" else PLAN_REMOVE
            doc: dict[str, Any] = {
                "action": action,
                "dry_run": dry_run,
                "database": redact_dsn(dsn),
                "plan": plan,
                "before": before.to_dict(),
            }
            journal.event("preflight", f"change feed {action}: state before", **doc)
            if not dry_run:
                install = action == "install"
                after = feed.install_feed(conn) if install else feed.remove_feed(conn)
                conn.commit()
                doc["after"] = after.to_dict()
                journal.event("done", f"change feed {action}ed", after=doc["after"])
    doc["record"] = str(record.path) if record.path else None
    return doc


def run_mirror(
    settings: Settings,
    stop: threading.Event,
    *,
    on_event: Callable[[str], None] | None = None,
    on_cycle: Callable[[CycleResult], None] | None = None,
) -> int:
    """Follow until ``stop`` is set; returns the number of cycles."""
    mirror = Mirror(settings, on_event=on_event)
    return mirror.run(stop, on_cycle)


def mirror_status(settings: Settings, *, database: bool = True) -> dict[str, Any]:
    """The mirror as its position file says (lag, state, repairs) and, with ``database``,
    the feed's backlog as the database says."""
    now = datetime.now(UTC)
    doc: dict[str, Any] = {
        "mirror_dir": str(settings.mirror_dir),
        "lag_alert_s": settings.mirror_lag_alert,
    }
    try:
        position = read_position(settings.mirror_dir)
    except DataError as exc:
        position = None
        doc["error"] = str(exc)
    if position is None:
        doc["position"] = None
    else:
        doc["position"] = position.to_dict()
        doc["lag_s"] = position.lag_s(now)
    if database:
        try:
            dsn = mirror_dsn(settings)
            with connect(dsn, timeout=settings.db_connect_timeout) as conn:
                doc["feed"] = feed.feed_status(conn).to_dict()
        except ResilienceError as exc:
            doc["feed"] = {"error": Redactor(settings.secret_values()).text(str(exc))}
        except Exception as exc:  # a status never fails on a side source
            doc["feed"] = {"error": type(exc).__name__}
    lag = doc.get("lag_s")
    doc["lagging"] = lag is None or lag > settings.mirror_lag_alert
    return doc


def mirror_daemon(settings: Settings) -> Daemon:
    return Daemon(settings.mirror_app, "mirror.run", "mirror.log")


def install_mirror(
    settings: Settings,
    project: Path | Launcher,
    ecosystem_file: Path,
    log_dir: Path,
    *,
    dry_run: bool,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the mirror's ecosystem file and start (or restart) it under the deployment's
    PM2. Re-runs converge: the app is replaced by the file's definition."""
    return daemon.install(
        settings,
        mirror_daemon(settings),
        project,
        ecosystem_file,
        log_dir,
        dry_run=dry_run,
        env=env,
        shown={"mirror_dir": str(settings.mirror_dir)},
    )


def uninstall_mirror(settings: Settings) -> bool:
    return daemon.uninstall(settings, settings.mirror_app)
