"""The database: the service's role, pg_dump, disk for an export, WAL archiving; the role
scratch restores use."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.check.findings import DB_TIMEOUT, Finding, age_text
from resilience.config import Settings
from resilience.errors import ResilienceError
from resilience.infra.commandline import operator_command as cmd

AUTH_TABLES = ("whatsapp_auth", "whatsapp_keys")
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


def probe_service_db(settings: Settings) -> list[Finding]:
    from resilience.authstate.pgconn import connect

    if settings.service_dsn is None:
        return [
            Finding(
                "service-db",
                "fail",
                "RESILIENCE_SERVICE_DSN is not set",
                "set RESILIENCE_SERVICE_DSN to the DSN the service uses",
            )
        ]
    try:
        conn = connect(
            settings.service_dsn.get_secret_value(),
            timeout=min(settings.db_connect_timeout, DB_TIMEOUT),
            autocommit=True,
        )
    except ResilienceError as exc:
        return [
            Finding(
                "service-db",
                "fail",
                str(exc),
                f"check RESILIENCE_SERVICE_DSN and the server; `{cmd('diagnose')}` tells an "
                "outage from a wrong DSN",
            )
        ]
    findings: list[Finding] = []
    try:
        conn.execute(f"SET statement_timeout = {int(DB_TIMEOUT * 1000)}")
        access, usable = _role_and_tables(conn)
        findings.append(access)
        findings.append(_pg_dump(conn.info.server_version // 10000))
        if usable:
            findings.append(_export_disk(conn, settings))
        if settings.pitr_dsn is not None:
            findings.append(_wal_archiving(conn))
    except Exception as exc:  # a statement that failed: said in one line, never a traceback
        findings.append(
            Finding(
                "service-db",
                "fail",
                f"a check statement failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                f"`{cmd('diagnose')}`",
            )
        )
    finally:
        conn.close()
    return findings


def _role_and_tables(conn: Any) -> tuple[Finding, bool]:
    """The service's role and its privileges on the auth tables: the finding, and whether every
    table is there with every privilege."""
    role = str(conn.execute("SELECT current_user").fetchone()[0])
    missing: list[str] = []
    absent: list[str] = []
    for table in AUTH_TABLES:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        if not row or not row[0]:
            absent.append(table)
            continue
        for privilege in PRIVILEGES:
            row = conn.execute(
                "SELECT has_table_privilege(current_user, %s, %s)", (table, privilege)
            ).fetchone()
            if not row or not row[0]:
                missing.append(f"{privilege} on {table}")
    if absent:
        return Finding(
            "service-db",
            "fail",
            f"reachable as {role}, but {', '.join(absent)} missing",
            f"`{cmd('diagnose')}` (scenario 4: restore from a backup)",
        ), False
    if missing:
        return Finding(
            "service-db",
            "fail",
            f"role {role} lacks {', '.join(missing)}",
            f"GRANT {', '.join(PRIVILEGES)} ON {', '.join(AUTH_TABLES)} TO {role}",
        ), False
    return Finding(
        "service-db",
        "ok",
        f"reachable as {role}; {'/'.join(PRIVILEGES)} on {' and '.join(AUTH_TABLES)}",
    ), True


def _export_disk(conn: Any, settings: Settings) -> Finding:
    """Disk for an export of the company with the most key bytes."""
    from resilience.files.export import estimate_from_stored

    row = conn.execute(
        "SELECT k.company_id, k.value_bytes, k.n, "
        "coalesce((SELECT pg_column_size(creds) FROM whatsapp_auth a "
        "WHERE a.company_id = k.company_id), 0) FROM ("
        "SELECT company_id, sum(pg_column_size(value)) AS value_bytes, count(*) AS n "
        "FROM whatsapp_keys GROUP BY company_id ORDER BY 2 DESC LIMIT 1) k"
    ).fetchone()
    if row is None:
        return _disk(settings, None, 0)
    needed = estimate_from_stored(int(row[1]), int(row[2]), int(row[3]))
    return _disk(settings, str(row[0]), needed)


def _pg_dump(server_major: int) -> Finding:
    from resilience.backup.dump import find_tool, tool_major

    try:
        tool = find_tool("pg_dump")
        client = tool_major(tool)
    except ResilienceError as exc:
        return Finding(
            "pg-dump",
            "fail",
            str(exc),
            f"apt-get install postgresql-client-{server_major}",
        )
    if client < server_major:
        return Finding(
            "pg-dump",
            "fail",
            f"{tool} is PostgreSQL {client}, older than the server ({server_major})",
            f"apt-get install postgresql-client-{server_major}",
        )
    return Finding("pg-dump", "ok", f"{tool} is PostgreSQL {client} (server {server_major})")


def _free_bytes(path: Path) -> tuple[Path, int]:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def _disk(settings: Settings, company: str | None, needed: int) -> Finding:
    where = settings.auth_root or settings.export_dir
    probe, free = _free_bytes(Path(where).absolute())
    if company is None:
        return Finding("disk", "ok", f"{free / 1e9:.2f} GB free in {probe}; no company has keys")
    found = (
        f"{free / 1e9:.2f} GB free in {probe}; an export of the largest company ({company}) "
        f"needs about {needed / 1e6:.1f} MB"
    )
    if free < needed:
        return Finding("disk", "fail", found, f"free space in {probe}")
    if free < 2 * needed:
        return Finding("disk", "warn", found, f"free space in {probe} (less than twice needed)")
    return Finding("disk", "ok", found)


def _wal_archiving(conn: Any) -> Finding:
    mode = str(conn.execute("SHOW archive_mode").fetchone()[0])
    row = conn.execute(
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
        "last_failed_wal, last_failed_time FROM pg_stat_archiver"
    ).fetchone()
    if mode == "off":
        return Finding(
            "wal-archiving",
            "fail",
            "archive_mode is off, but point-in-time recovery is configured (RESILIENCE_PITR_DSN)",
            f"set archive_mode = on and archive_command from `{cmd('backup.archive-command')}`",
        )
    archived, last_wal, last_time, failed, failed_wal, failed_time = row
    if failed_time is not None and (last_time is None or failed_time > last_time):
        return Finding(
            "wal-archiving",
            "fail",
            f"the last archive_command failed ({failed_wal} at {failed_time:%Y-%m-%d %H:%M:%S}; "
            f"{failed} failures)",
            "read the server's log; check the WAL spool (RESILIENCE_WAL_SPOOL_DIR) is writable",
        )
    if last_time is None:
        return Finding(
            "wal-archiving",
            "warn",
            "no segment archived yet",
            "SELECT pg_switch_wal() and check again",
        )
    age = (datetime.now(UTC) - last_time).total_seconds()
    return Finding(
        "wal-archiving",
        "ok",
        f"{archived} segments archived, the last {last_wal} {age_text(age)} ago",
    )


def probe_restore_db(settings: Settings) -> list[Finding]:
    from resilience.authstate.pgconn import connect

    if settings.restore_dsn is None:
        return [
            Finding(
                "restore-db",
                "warn",
                "RESILIENCE_RESTORE_DSN is not set: backups cannot be verified by a restore",
                "set RESILIENCE_RESTORE_DSN to a role that may create databases",
            )
        ]
    try:
        conn = connect(settings.restore_dsn.get_secret_value(), timeout=DB_TIMEOUT, autocommit=True)
    except ResilienceError as exc:
        return [Finding("restore-db", "fail", str(exc), "check RESILIENCE_RESTORE_DSN")]
    try:
        row = conn.execute(
            "SELECT current_user, rolcreatedb OR rolsuper FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
    finally:
        conn.close()
    role, may = (str(row[0]), bool(row[1])) if row else ("?", False)
    if not may:
        return [
            Finding(
                "restore-db",
                "fail",
                f"role {role} may not create databases (scratch restores need it)",
                f"ALTER ROLE {role} CREATEDB",
            )
        ]
    return [Finding("restore-db", "ok", f"role {role} may create databases")]
