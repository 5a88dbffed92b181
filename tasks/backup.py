"""`backup.*`: dumps to every region, their list, retention, restores, daily validation and the
monthly restore test; point-in-time recovery with barman-cloud (the archive_command line, the WAL
pusher, base backups, `backup.pitr`). Configured by settings alone (S3 endpoints, buckets,
credentials, and RESILIENCE_RESTORE_DSN for the scratch databases); every run leaves a record."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.tasks import task

from tasks._run import operator_task

JSON_HELP = {"json": "print the result as JSON"}


def _print(json: bool, data: dict[str, Any]) -> None:
    from resilience.infra.output import Output

    Output(json).result({"ok": True, **data})


@task(
    auto_shortflags=False,
    help={
        **JSON_HELP,
        "kind": "auto (default: first of month monthly, of day daily), hourly, daily or monthly",
    },
)
@operator_task
def run(c: Context, kind: str = "auto", json: bool = False) -> None:
    """Back up the auth tables to every region: pg_dump in one snapshot, manifest, upload."""
    from resilience.backup.take import take_backup
    from resilience.config import load_settings
    from resilience.errors import InputError
    from resilience.infra.output import Output

    if kind not in ("auto", "hourly", "daily", "monthly"):
        raise InputError(f"--kind must be auto, hourly, daily or monthly, not {kind[:20]!r}")
    out = Output(json)
    result = take_backup(load_settings(), kind=kind, progress=out.progress, meters=out.meters())
    _print(json, result.to_dict())


@task(
    name="list",
    auto_shortflags=False,
    help={**JSON_HELP, "region": "only this region (moscow or eu)"},
)
@operator_task
def list_(c: Context, region: str | None = None, json: bool = False) -> None:
    """Every backup per region: kind, age, size, the last validation result; base backups
    and the WAL range of point-in-time recovery beside them. A region that cannot be read is
    listed as unreachable beside the others (exit 6)."""
    from resilience.backup.listing import list_backups
    from resilience.config import load_settings
    from resilience.errors import PartialFailure
    from resilience.infra.output import Output

    try:
        listing = list_backups(load_settings(), region)
    except PartialFailure as exc:
        if not json:  # the regions that answered, then the error line (--json: one document)
            Output(False).result({"ok": False, **(exc.details or {})})
        raise
    _print(json, listing)


@task(auto_shortflags=False, help={**JSON_HELP, "yes": "delete; without it, a dry run"})
@operator_task
def prune(c: Context, yes: bool = False, json: bool = False) -> None:
    """Grandfather-father-son retention per region (48 hourly, 30 daily, 12 monthly)."""
    from resilience.backup.retention import prune as prune_regions
    from resilience.config import load_settings
    from resilience.infra.output import Output

    out = Output(json)
    results, record = prune_regions(load_settings(), yes=yes, progress=out.progress)
    _print(
        json,
        {
            "dry_run": not yes,
            "regions": [vars(r) for r in results],
            "record": str(record) if record else None,
        },
    )


@task(
    auto_shortflags=False,
    help={
        **JSON_HELP,
        "id": "the backup id (default: the newest)",
        "at": "the newest backup at or before this UTC time (ISO 8601)",
        "region": "moscow or eu (default: any)",
        "company": "restore only this company's rows into the live database",
        "target_dsn": "restore into this database instead of a scratch one",
        "to_service": "restore into the service's database (RESILIENCE_SERVICE_DSN): "
        "the tables were dropped or the database rebuilt (scenario 4)",
        "yes": "change the live or target database (without it: a preview)",
    },
)
@operator_task
def restore(
    c: Context,
    id: str | None = None,
    at: str | None = None,
    region: str | None = None,
    company: str | None = None,
    target_dsn: str | None = None,
    to_service: bool = False,
    yes: bool = False,
    json: bool = False,
) -> None:
    """Restore a backup (scratch, target, or one company live), verified against its manifest."""
    from resilience.backup.restore import restore_backup
    from resilience.config import load_settings
    from resilience.errors import InputError
    from resilience.infra.output import Output

    moment = None
    if at is not None:
        try:
            moment = datetime.fromisoformat(at)
        except ValueError:
            raise InputError(f"--at must be an ISO 8601 time, not {at[:30]!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    out = Output(json)
    settings = load_settings()
    if to_service:
        if target_dsn is not None or company is not None:
            raise InputError("--to-service replaces --target-dsn and --company: give one")
        if settings.service_dsn is None:
            raise InputError("--to-service needs RESILIENCE_SERVICE_DSN")
        target_dsn = settings.service_dsn.get_secret_value()
        if not yes:
            raise InputError(
                "--to-service replaces the service's auth tables: add --yes "
                "(`backup.restore` without a target previews the backup in a scratch database)"
            )
    result = restore_backup(
        settings,
        backup_id=id,
        at=moment,
        region=region,
        company=company,
        target_dsn=target_dsn,
        yes=yes,
        progress=out.progress,
        meters=out.meters(),
    )
    _print(json, result.to_dict())


@task(auto_shortflags=False, help=JSON_HELP)
@operator_task
def validate(c: Context, json: bool = False) -> None:
    """Daily (cron): newest backup of each kind in every region downloaded, restored, compared."""
    from resilience.backup.validate import validate as validate_backups
    from resilience.config import load_settings
    from resilience.infra.output import Output

    out = Output(json)
    _print(json, validate_backups(load_settings(), progress=out.progress).to_dict())


@task(name="test-restore", auto_shortflags=False, help=JSON_HELP)
@operator_task
def test_restore(c: Context, json: bool = False) -> None:
    """Monthly: the newest backup restored and every key verified, timed against 30 minutes."""
    from resilience.backup.restore import test_restore as run_test
    from resilience.config import load_settings
    from resilience.infra.output import Output

    out = Output(json)
    _print(json, run_test(load_settings(), progress=out.progress, report_dir=Path("reports")))


# --- point-in-time recovery (barman-cloud) ------------------------------------------------------
@task(name="archive-command", auto_shortflags=False, help=JSON_HELP)
@operator_task
def archive_command(c: Context, json: bool = False) -> None:
    """The archive_command line for postgresql.conf: copy each segment into the WAL spool."""
    from resilience.backup.wal import WalSpool
    from resilience.backup.wal import archive_command as command
    from resilience.config import load_settings

    settings = load_settings()
    spool = settings.wal_spool_dir.absolute()
    _print(
        json,
        {
            "archive_mode": "on",
            "archive_command": command(spool),
            "spool": str(spool),
            "spool_problem": WalSpool(spool).problem(),
        },
    )


@task(name="wal-push", auto_shortflags=False, help=JSON_HELP)
@operator_task
def wal_push(c: Context, json: bool = False) -> None:
    """One pass: every spooled WAL file to every region; removed once every region has it."""
    from resilience.backup.wal import wal_push as push
    from resilience.config import load_settings
    from resilience.infra.output import Output

    out = Output(json)
    _print(json, push(load_settings(), progress=out.progress).to_dict())


@task(
    name="wal-daemon",
    auto_shortflags=False,
    help={"passes": "stop after this many passes (default: run until stopped)"},
)
@operator_task
def wal_daemon(c: Context, passes: int | None = None) -> None:
    """The WAL pusher as a loop (run it under PM2): a pass every RESILIENCE_WAL_PUSH_INTERVAL."""
    import signal
    import threading

    from resilience.backup.wal import wal_daemon as loop
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from tasks._run import positive_int

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out = Output(False)
    loop(
        load_settings(),
        progress=out.progress,
        passes=positive_int("--passes", passes),
        wait=stop.wait,
    )


@task(auto_shortflags=False, help=JSON_HELP)
@operator_task
def base(c: Context, json: bool = False) -> None:
    """(cron, daily) A base backup to every region with barman-cloud, then its retention
    (recovery window, RESILIENCE_PITR_RECOVERY_WINDOW_DAYS)."""
    from resilience.backup.base import take_base_backup
    from resilience.config import load_settings
    from resilience.infra.output import Output

    out = Output(json)
    _print(json, take_base_backup(load_settings(), progress=out.progress).to_dict())


@task(
    auto_shortflags=False,
    help={
        **JSON_HELP,
        "at": "recover to this time (ISO 8601; UTC unless it names its zone), or latest "
        "(the end of the archived WAL)",
        "region": "moscow or eu (default: the first that can serve the time)",
        "target_dir": "new or empty directory of the restored cluster (default: under the "
        "system temp dir)",
        "port": "port of the restored cluster (default: a free one)",
        "yes": "restore and start (without it: the checks and the plan only)",
    },
)
@operator_task
def pitr(
    c: Context,
    at: str,
    region: str | None = None,
    target_dir: str | None = None,
    port: int | None = None,
    yes: bool = False,
    json: bool = False,
) -> None:
    """Point-in-time recovery into a new cluster (the live one untouched), verified."""
    from resilience.backup.pitr import pitr as recover
    from resilience.config import load_settings
    from resilience.errors import InputError
    from resilience.infra.output import Output
    from tasks._run import caller_path, positive_int

    moment = None
    if at != "latest":
        try:
            moment = datetime.fromisoformat(at)
        except ValueError:
            raise InputError(f"--at must be an ISO 8601 time or latest, not {at[:30]!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    out = Output(json)
    result = recover(
        load_settings(),
        at=moment,
        region=region,
        target_dir=caller_path(target_dir) if target_dir else None,
        port=positive_int("--port", port),
        yes=yes,
        progress=out.progress,
    )
    _print(json, result.to_dict())
