"""`check`: is this host ready for an incident? Every part the emergency switch, the backups and
the alerts depend on, tried the way they will use it, each within its own time bound.

Each finding is OK, WARN or FAIL with what was found and, when not OK, the fix (the command or
setting to change). The checks run side by side, each in a thread of its own bounded by
:data:`CHECK_TIMEOUT` (and by its own connect, statement, S3 and HTTP timeouts below that), so a
host with everything broken is judged within about that bound. Exit code: 0 all OK, 1 warnings,
2 failures. Nothing here changes the service: the S3 probe object is deleted again, the alert
channels are only reached (a real test alert only with ``send_test``).
"""

from __future__ import annotations

import functools
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from resilience.config import Settings
from resilience.errors import ResilienceError
from resilience.infra.commandline import operator_command as cmd

Status = Literal["ok", "warn", "fail"]
#: Seconds one check may take before it counts as failed (with everything broken, `check` as a
#: whole returns within about this: the checks run side by side).
CHECK_TIMEOUT = 20.0
#: Bounds of the single operations inside a check (each well below CHECK_TIMEOUT).
DB_TIMEOUT = 8.0
HTTP_TIMEOUT = 8.0
S3_CONNECT_TIMEOUT = 4.0
S3_READ_TIMEOUT = 6.0
S3_BUDGET = 15.0
#: Backups are taken hourly (`schedule.install`): older than this warns, and fails past a day.
BACKUP_WARN_AGE = 2 * 3600.0
BACKUP_FAIL_AGE = 26 * 3600.0
#: Validation runs daily: the newest valid backup older than this warns.
VALID_BACKUP_WARN_AGE = 2 * 86400.0
AUTH_TABLES = ("whatsapp_auth", "whatsapp_keys")
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass
class Finding:
    name: str
    status: Status
    found: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "found": self.found, "fix": self.fix}


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        statuses = {f.status for f in self.findings}
        return 2 if "fail" in statuses else 1 if "warn" in statuses else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 2),
            "findings": [f.to_dict() for f in self.findings],
            "counts": {
                s: sum(1 for f in self.findings if f.status == s) for s in ("ok", "warn", "fail")
            },
        }


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# --------------------------------------------------------------------------------------------
# The database: the service's role, pg_dump, disk for an export, WAL archiving


def _database(settings: Settings) -> list[Finding]:
    from resilience.authstate.pgconn import connect
    from resilience.files.export import estimate_from_stored

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
        role = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
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
            findings.append(
                Finding(
                    "service-db",
                    "fail",
                    f"reachable as {role}, but {', '.join(absent)} missing",
                    f"`{cmd('diagnose')}` (scenario 4: restore from a backup)",
                )
            )
        elif missing:
            findings.append(
                Finding(
                    "service-db",
                    "fail",
                    f"role {role} lacks {', '.join(missing)}",
                    f"GRANT {', '.join(PRIVILEGES)} ON {', '.join(AUTH_TABLES)} TO {role}",
                )
            )
        else:
            findings.append(
                Finding(
                    "service-db",
                    "ok",
                    f"reachable as {role}; {'/'.join(PRIVILEGES)} on {' and '.join(AUTH_TABLES)}",
                )
            )
        server_major = conn.info.server_version // 10000
        findings.append(_pg_dump(server_major))
        if not absent and not missing:
            row = conn.execute(
                "SELECT k.company_id, k.value_bytes, k.n, "
                "coalesce((SELECT pg_column_size(creds) FROM whatsapp_auth a "
                "WHERE a.company_id = k.company_id), 0) FROM ("
                "SELECT company_id, sum(pg_column_size(value)) AS value_bytes, count(*) AS n "
                "FROM whatsapp_keys GROUP BY company_id ORDER BY 2 DESC LIMIT 1) k"
            ).fetchone()
            if row is None:
                findings.append(_disk(settings, None, 0))
            else:
                needed = estimate_from_stored(int(row[1]), int(row[2]), int(row[3]))
                findings.append(_disk(settings, str(row[0]), needed))
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
        "wal-archiving", "ok", f"{archived} segments archived, the last {last_wal} {_age(age)} ago"
    )


def _restore_db(settings: Settings) -> list[Finding]:
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


# --------------------------------------------------------------------------------------------
# S3: a probe object per region, then its newest and newest valid backup


def _region(settings: Settings, store: Any) -> list[Finding]:
    from resilience.backup.catalog import list_region
    from resilience.backup.listing import last_validations
    from resilience.infra.s3 import StorageError

    key = f"check/probe-{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
    payload = uuid.uuid4().bytes * 64
    fix = (
        f"check RESILIENCE_S3_ENDPOINT_{store.name.upper()}, RESILIENCE_S3_BUCKET_"
        f"{store.name.upper()} and the S3 credentials (RESILIENCE_S3_ACCESS_KEY_ID, "
        "RESILIENCE_S3_SECRET_ACCESS_KEY)"
    )
    try:
        store.put_bytes(key, payload)  # with SSE (AES256), as every backup
        try:
            if store.get_bytes(key) != payload:
                return [Finding(f"s3-{store.name}", "fail", "the probe read back differs", fix)]
        finally:
            store.delete(key)
    except StorageError as exc:
        return [Finding(f"s3-{store.name}", "fail", str(exc), fix)]
    findings = [
        Finding(
            f"s3-{store.name}",
            "ok",
            f"{store.bucket} at {store.endpoint_url}: put (SSE), get and delete of a probe",
        )
    ]
    try:
        listing = list_region(store)
    except StorageError as exc:
        return [*findings, Finding(f"backups-{store.name}", "fail", str(exc), fix)]
    now = datetime.now(UTC)
    verdicts = last_validations(settings.backup_validation_log)
    name = f"backups-{store.name}"
    if not listing.manifests:
        return [
            *findings,
            Finding(name, "warn", "no backup yet", f"`{cmd('backup.run')}`, then schedule it"),
        ]
    newest = listing.manifests[0]
    age = (now - newest.created).total_seconds()
    valid = [m for m in listing.manifests if verdicts.get((store.name, m.id)) is True]
    text = f"newest {newest.id}, {_age(age)} old"
    if valid:
        valid_age = (now - valid[0].created).total_seconds()
        text += f"; newest valid {valid[0].id}, {_age(valid_age)} old"
    else:
        valid_age = None
        text += "; none validated"
    if age > BACKUP_FAIL_AGE:
        findings.append(Finding(name, "fail", text, f"`{cmd('backup.run')}`; is the schedule on?"))
    elif age > BACKUP_WARN_AGE:
        findings.append(Finding(name, "warn", text, f"`{cmd('backup.run')}`; is the schedule on?"))
    elif valid_age is None or valid_age > VALID_BACKUP_WARN_AGE:
        findings.append(Finding(name, "warn", text, f"`{cmd('backup.validate')}`"))
    else:
        findings.append(Finding(name, "ok", text))
    return findings


def _bounded_regions(settings: Settings) -> list[Any]:
    from resilience.infra.s3 import regions_from_settings

    quick = settings.model_copy(
        update={
            "s3_connect_timeout": min(settings.s3_connect_timeout, S3_CONNECT_TIMEOUT),
            "s3_read_timeout": min(settings.s3_read_timeout, S3_READ_TIMEOUT),
            "s3_max_attempts": 1,
            "s3_region_timeout": min(settings.s3_region_timeout, S3_BUDGET),
        }
    )
    return regions_from_settings(quick)


# --------------------------------------------------------------------------------------------
# Alert channels


def _sentry(settings: Settings, send_test: bool) -> list[Finding]:
    from resilience.alerting.channels import SentryChannel
    from resilience.infra.redact import Redactor

    if settings.sentry_dsn is None:
        return [
            Finding(
                "sentry",
                "warn",
                "RESILIENCE_SENTRY_DSN is not set: no Sentry alerts",
                "set RESILIENCE_SENTRY_DSN",
            )
        ]
    dsn = settings.sentry_dsn.get_secret_value()
    fix = "check RESILIENCE_SENTRY_DSN (Sentry: Project Settings > Client Keys)"
    parts = urlsplit(dsn)
    project = parts.path.rstrip("/").rpartition("/")[2]
    if parts.scheme not in ("http", "https") or not parts.username or not project.isdigit():
        return [Finding("sentry", "fail", "RESILIENCE_SENTRY_DSN is not a valid Sentry DSN", fix)]
    prefix = parts.path.rstrip("/").rpartition("/")[0]
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    url = f"{parts.scheme}://{netloc}{prefix}/api/{project}/envelope/"
    auth = (
        f"Sentry sentry_version=7, sentry_key={parts.username}, "
        "sentry_client=baileys-resilience-check/1"
    )
    try:  # an envelope without items: the key is checked, nothing is recorded
        response = httpx.post(
            url,
            content=b"{}\n",
            headers={"X-Sentry-Auth": auth, "Content-Type": "application/x-sentry-envelope"},
            timeout=HTTP_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        return [Finding("sentry", "fail", f"cannot reach {netloc}: {type(exc).__name__}", fix)]
    if response.status_code in (401, 403):
        return [
            Finding(
                "sentry",
                "fail",
                f"{netloc} refused the DSN's key (HTTP {response.status_code})",
                fix,
            )
        ]
    if response.status_code >= 400:
        return [Finding("sentry", "fail", f"{netloc} answered HTTP {response.status_code}", fix)]
    found = f"{netloc} accepts the DSN's key (project {project})"
    if send_test:
        channel = SentryChannel(dsn, Redactor([dsn]), environment="production")
        try:
            event = channel.event(
                f"baileys-resilience check: test alert from {socket.gethostname()}", level="info"
            )
        finally:
            channel.close()
        if event is None:
            return [Finding("sentry", "fail", found + "; the test event was not sent", fix)]
        found += f"; test event {event} sent"
    return [Finding("sentry", "ok", found)]


def _telegram(settings: Settings, send_test: bool) -> list[Finding]:
    from resilience.alerting.channels import TelegramChannel
    from resilience.infra.redact import Redactor

    token = settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else None
    if not token and not settings.telegram_chat_id:
        return [
            Finding(
                "telegram",
                "warn",
                "Telegram is not configured: no Telegram alerts",
                "set RESILIENCE_TELEGRAM_BOT_TOKEN and RESILIENCE_TELEGRAM_CHAT_ID",
            )
        ]
    fix = "check RESILIENCE_TELEGRAM_BOT_TOKEN and RESILIENCE_TELEGRAM_CHAT_ID"
    if not token or not settings.telegram_chat_id:
        return [Finding("telegram", "fail", "needs both the bot token and the chat id", fix)]
    api = settings.telegram_api_url.rstrip("/")
    where = urlsplit(api).netloc
    try:
        response = httpx.get(f"{api}/bot{token}/getMe", timeout=HTTP_TIMEOUT)
    except httpx.HTTPError as exc:
        return [Finding("telegram", "fail", f"cannot reach {where}: {type(exc).__name__}", fix)]
    if response.status_code != 200:
        return [
            Finding(
                "telegram",
                "fail",
                f"{where} refused the bot token (HTTP {response.status_code})",
                fix,
            )
        ]
    found = f"{where} knows the bot"
    if send_test:
        channel = TelegramChannel(
            api, token, settings.telegram_chat_id, Redactor([token]), HTTP_TIMEOUT
        )
        if not channel.send(f"baileys-resilience check: test alert from {socket.gethostname()}"):
            return [
                Finding("telegram", "fail", f"{found}; test message: {channel.last_error}", fix)
            ]
        found += "; test message sent"
    return [Finding("telegram", "ok", found)]


# --------------------------------------------------------------------------------------------
# PM2: the service, the monitor, the mirror


def _pm2(settings: Settings) -> list[Finding]:
    from resilience.infra.pm2 import pm2_for

    try:
        apps = {str(a.get("name")): a for a in pm2_for(settings).apps()}
    except ResilienceError as exc:
        return [
            Finding("pm2-app", "fail", str(exc), "install PM2 or set RESILIENCE_PM2_BIN/PM2_HOME")
        ]
    findings = []
    app = apps.get(settings.pm2_app)
    if app is None:
        known = ", ".join(sorted(apps)) or "none"
        findings.append(
            Finding(
                "pm2-app",
                "fail",
                f"PM2 has no app {settings.pm2_app!r} (apps: {known})",
                "set RESILIENCE_PM2_APP (and RESILIENCE_PM2_HOME) to the service's PM2 app",
            )
        )
    elif app.get("status") != "online":
        findings.append(
            Finding(
                "pm2-app",
                "fail",
                f"{settings.pm2_app} is {app.get('status')}",
                f"pm2 start {settings.pm2_app}",
            )
        )
    else:
        findings.append(
            Finding("pm2-app", "ok", f"{settings.pm2_app} online (pid {app.get('pid')})")
        )
    for name, pm2_name, task in (
        ("monitor", settings.monitor_app, "monitor.install"),
        ("mirror", settings.mirror_app, "mirror.install"),
    ):
        entry = apps.get(pm2_name)
        if entry is None:
            findings.append(Finding(name, "warn", f"{pm2_name} is not under PM2", f"`{cmd(task)}`"))
        elif entry.get("status") != "online":
            findings.append(
                Finding(
                    name, "fail", f"{pm2_name} is {entry.get('status')}", f"pm2 start {pm2_name}"
                )
            )
        else:
            findings.append(Finding(name, "ok", f"{pm2_name} online (pid {entry.get('pid')})"))
    return findings


# --------------------------------------------------------------------------------------------
# The service's code (fallback tag, clean work tree) and the newest snapshot


def _git(settings: Settings) -> list[Finding]:
    from resilience.service import gitref

    if settings.fallback_tag is None:
        return [
            Finding("fallback-tag", "ok", "no fallback tag configured: the switch keeps the code")
        ]
    if settings.service_dir is None:
        return [
            Finding(
                "fallback-tag",
                "fail",
                "RESILIENCE_FALLBACK_TAG is set but RESILIENCE_SERVICE_DIR is not",
                "set RESILIENCE_SERVICE_DIR to the service's git work tree",
            )
        ]
    repo = settings.service_dir
    try:
        present = gitref.tag_exists(repo, settings.fallback_tag)
    except ResilienceError as exc:
        return [Finding("fallback-tag", "fail", str(exc), "check RESILIENCE_SERVICE_DIR")]
    findings = [
        Finding(
            "fallback-tag",
            "ok" if present else "fail",
            f"tag {settings.fallback_tag} {'present' if present else 'missing'} in {repo}",
            ""
            if present
            else f"git -C {repo} fetch --tags, or set RESILIENCE_FALLBACK_TAG to the right tag",
        )
    ]
    try:
        dirty = gitref.is_dirty(repo)
    except ResilienceError as exc:
        return [*findings, Finding("work-tree", "fail", str(exc), "check RESILIENCE_SERVICE_DIR")]
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        findings.append(
            Finding(
                "work-tree",
                "warn",
                f"uncommitted changes in {repo}: {shown} (the switch refuses without --force)",
                f"commit or stash them (git -C {repo} stash)",
            )
        )
    else:
        findings.append(Finding("work-tree", "ok", f"{repo} clean"))
    return findings


def _snapshot(settings: Settings) -> list[Finding]:
    from resilience.files.snapshot import newest_snapshot

    snap = newest_snapshot(settings.snapshot_dir, settings.company_id)
    fix = f"`{cmd('restore.snapshot')}`; `{cmd('schedule.install')}` runs it every 15 min"
    if snap is None:
        return [
            Finding(
                "snapshot",
                "warn",
                f"no snapshot of {settings.company_id} in {settings.snapshot_dir}",
                fix,
            )
        ]
    age = snap.age_s()
    found = f"newest {snap.path.name}, {_age(age)} old"
    if age > settings.snapshot_max_age:
        return [
            Finding(
                "snapshot",
                "warn",
                found
                + f", older than RESILIENCE_SNAPSHOT_MAX_AGE ({_age(settings.snapshot_max_age)})",
                fix,
            )
        ]
    return [Finding("snapshot", "ok", found)]


def _schedule() -> list[Finding]:
    from resilience.maintenance import schedule

    try:
        installed = schedule.BEGIN in schedule.read_crontab().splitlines()
    except ResilienceError:
        installed = False
    if installed:
        return [Finding("schedule", "ok", "the crontab block is installed")]
    return [
        Finding(
            "schedule",
            "warn",
            "no crontab block of baileys-resilience (a PM2 ecosystem may run the jobs instead)",
            f"`{cmd('schedule.install')}`",
        )
    ]


# --------------------------------------------------------------------------------------------
# Running them


@dataclass
class _Job:
    names: list[str]  # the findings a timeout stands for
    run: Callable[[], list[Finding]]
    result: list[Finding] | None = None
    error: str | None = None


def _start(job: _Job) -> threading.Thread:
    def target() -> None:
        try:
            job.result = job.run()
        except Exception as exc:  # a bug or an odd answer: one line, never a traceback
            job.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"

    thread = threading.Thread(target=target, name=f"check-{job.names[0]}", daemon=True)
    thread.start()
    return thread


#: What the checks import, imported before they start side by side: in a fresh process two
#: threads importing modules that import each other (psycopg's, ours) can see one of them half
#: initialised ("cannot import name ... from partially initialized module").
_CHECK_MODULES = (
    "psycopg",
    "resilience.authstate.pgconn",
    "resilience.authstate.pgstore",
    "resilience.files.export",
    "resilience.backup.dump",
    "resilience.backup.catalog",
    "resilience.backup.listing",
    "resilience.infra.s3",
    "resilience.alerting.channels",
    "resilience.infra.redact",
    "resilience.infra.pm2",
    "resilience.service.gitref",
    "resilience.files.snapshot",
    "resilience.maintenance.schedule",
)


def run_checks(
    settings: Settings, *, send_test: bool = False, timeout: float = CHECK_TIMEOUT
) -> CheckReport:
    """Every check, side by side, each bounded by `timeout` seconds."""
    import importlib

    from resilience.errors import ConfigError

    for module in _CHECK_MODULES:
        importlib.import_module(module)
    began = time.monotonic()
    report = CheckReport([Finding("settings", "ok", "valid")])
    jobs = [
        _Job(["service-db"], lambda: _database(settings)),
        _Job(["restore-db"], lambda: _restore_db(settings)),
        _Job(["sentry"], lambda: _sentry(settings, send_test)),
        _Job(["telegram"], lambda: _telegram(settings, send_test)),
        _Job(["pm2-app", "monitor", "mirror"], lambda: _pm2(settings)),
        _Job(["fallback-tag"], lambda: _git(settings)),
        _Job(["snapshot"], lambda: _snapshot(settings)),
        _Job(["schedule"], _schedule),
    ]
    try:
        for store in _bounded_regions(settings):
            jobs.append(_Job([f"s3-{store.name}"], functools.partial(_region, settings, store)))
    except ConfigError as exc:
        report.findings.append(
            Finding("s3", "fail", str(exc), "set the S3 endpoints, buckets and credentials")
        )
    threads = [_start(job) for job in jobs]
    deadline = time.monotonic() + timeout
    for job, thread in zip(jobs, threads, strict=True):
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            report.findings.append(
                Finding(
                    job.names[0],
                    "fail",
                    f"no answer within {timeout:g} s ({', '.join(job.names)} not checked)",
                    "see why with the matching command (diagnose, backup.list, pm2 list)",
                )
            )
        elif job.error is not None:
            report.findings.append(Finding(job.names[0], "fail", job.error, ""))
        else:
            report.findings.extend(job.result or [])
    report.duration_s = time.monotonic() - began
    return report


def settings_failure(exc: ResilienceError) -> CheckReport:
    """The report when the settings themselves do not load: nothing else can be checked."""
    return CheckReport(
        [Finding("settings", "fail", str(exc), "fix the named setting in .env or the environment")]
    )
