"""`backup.*`: dumps to every region, their list, retention, restores, daily validation and the
monthly restore test; point-in-time recovery with barman-cloud (the archive_command line, the WAL
pusher, base backups, `backup.pitr`). Configured by settings alone (S3 endpoints, buckets,
credentials, and RESILIENCE_RESTORE_DSN for the scratch databases); every run leaves a record."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.tasks import task

from tasks._run import operator_task

JSON_HELP = {"json": "print the result as JSON"}
Render = Callable[[Any, dict[str, Any]], None]


def _print(json: bool, data: dict[str, Any]) -> None:
    from resilience.infra.output import Output

    Output(json).result({"ok": True, **data})


def _show(json: bool, human: Render, produce: Callable[[], dict[str, Any]]) -> None:
    """The result as a table for people (JSON with --json). A failure that carries what was
    done (a region missed, a check invalid) shows it before the one error line; with --json
    the error's one document holds it."""
    from resilience.errors import ResilienceError
    from resilience.infra.output import Output

    try:
        data = produce()
    except ResilienceError as exc:
        if not json and exc.details:
            Output(False).result({"ok": False, **exc.details}, human)
        raise
    Output(json).result({"ok": True, **data}, human)


def _footer(console: Any, d: dict[str, Any]) -> None:
    for warning in d.get("warnings") or []:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    if d.get("record"):
        console.print(f"run record: {d['record']}", markup=False)


def _bad(text: str) -> Any:
    from rich.text import Text

    return Text(text, style="bold red")


def _render_run(console: Any, d: dict[str, Any]) -> None:
    from resilience.infra.output import human_bytes, table

    b = d["backup"]
    rows = ", ".join(f"{name} {count}" for name, count in sorted(b["rows"].items()))
    console.print(
        f"backup {b['id']} ({b['kind']}): {human_bytes(b['size'])}, {b['companies']} "
        f"companies, rows: {rows or 'none'}; sha256 {b['sha256']}",
        markup=False,
    )
    console.print(
        table(
            "regions",
            ["region", "this backup", "caught up from the spool"],
            [
                [
                    r["region"],
                    "uploaded" if r["ok"] else _bad("MISSED (kept in the spool)"),
                    ", ".join(r["caught_up"]) or "-",
                ]
                for r in d["regions"]
            ],
        )
    )
    for r in d["regions"]:
        if r["error"]:
            console.print(f"region {r['region']}: {r['error']}", markup=False)
    console.print(f"took {d['duration_s']:.1f} s", markup=False)
    _footer(console, d)


def _validated(value: bool | None) -> Any:
    if value is None:
        return "not yet"
    return "valid" if value else _bad("INVALID")


def _utc(moment: str | None) -> str:
    """'2026-05-14T10:15:00.123+00:00' -> '2026-05-14 10:15:00'."""
    return (moment or "?")[:19].replace("T", " ")


def _render_pitr(console: Any, region: str, pitr: dict[str, Any] | None) -> None:
    from resilience.infra.output import table

    if not pitr:
        return
    if pitr.get("error"):
        console.print(
            f"region {region}: point-in-time recovery cannot be read: {pitr['error']}",
            markup=False,
        )
        return
    bases = pitr["base_backups"]
    if bases:
        console.print(
            table(
                f"region {region}: base backups (point-in-time recovery)",
                ["id", "name", "status", "begin (UTC)", "end (UTC)"],
                [
                    [b["id"], b["name"] or "", b["status"], _utc(b["begin"]), _utc(b["end"])]
                    for b in bases
                ],
                whole=("id",),
            )
        )
    wal = pitr["wal"]
    if wal["files"]:
        console.print(
            f"region {region}: WAL {wal['first']} .. {wal['last']} ({wal['files']} files, "
            f"newest upload {wal['newest_upload']})",
            markup=False,
        )
    elif bases:
        console.print(f"region {region}: no WAL archived", markup=False)


def _render_list(console: Any, d: dict[str, Any]) -> None:
    from resilience.infra.output import human_age, human_bytes, table

    for region, r in d["regions"].items():
        if r["state"] != "ok":
            console.print(_bad(f"region {region}: UNREACHABLE ({r['error']})"))
            continue
        backups = r["backups"]
        if backups:
            console.print(
                table(
                    f"region {region}: {len(backups)} backup(s), newest first",
                    ["id", "kind", "age", "size", "companies", "last validation"],
                    [
                        [
                            b["id"],
                            b["kind"],
                            human_age(b["age_s"]),
                            human_bytes(b["size"]),
                            b["companies"],
                            _validated(b["validated"]),
                        ]
                        for b in backups
                    ],
                    whole=("id",),
                )
            )
        else:
            console.print(f"region {region}: no backups", markup=False)
        if r["orphans"]:
            console.print(
                f"region {region}: dumps without a manifest: {', '.join(r['orphans'])}",
                markup=False,
            )
        if r["unreadable"]:
            console.print(
                f"region {region}: unreadable manifests: {', '.join(r['unreadable'])}",
                markup=False,
            )
        _render_pitr(console, region, r.get("pitr"))


_STATUS = {"valid": "valid", "invalid": "INVALID", "unreachable": "UNREACHABLE"}


def _render_validate(console: Any, d: dict[str, Any]) -> None:
    from resilience.infra.output import table

    rows = []
    for c in d["checks"]:
        status = _STATUS.get(c["status"], c["status"].upper())
        keys = c.get("keys")
        rows.append(
            [
                c["region"],
                c["kind"],
                c["backup_id"] or "-",
                status if c["valid"] else _bad(status),
                "-" if keys is None else keys,
                "-" if c.get("restore_s") is None else f"{c['restore_s']:.1f} s",
            ]
        )
    console.print(
        table(
            "backup validation (newest backup of each kind, per region)",
            ["region", "kind", "backup", "status", "keys", "restore"],
            rows,
            whole=("backup",),
        )
    )
    for c in d["checks"]:
        if c["error"]:
            console.print(f"{c['region']} {c['kind']}: {c['error']}", markup=False)
    if d["valid"]:
        console.print(f"all {len(d['checks'])} backup(s) valid", markup=False)
    if d["invalid"]:
        retaken = d["retaken"]
        console.print(
            _bad(
                f"invalid in {', '.join(d['invalid'])}: "
                + (f"re-taken as {retaken}" if retaken else "re-take FAILED")
            )
        )
    if d["unreachable"]:
        console.print(_bad(f"unreachable: {', '.join(d['unreachable'])} (nothing re-taken for it)"))
    _footer(console, d)


def _render_test_restore(console: Any, d: dict[str, Any]) -> None:
    b, v = d["backup"], d["verified"] or {}
    verdict = "ok" if d["ok"] else "FAILED"
    line = (
        f"restore test of backup {b['id']} ({b['kind']}) from region {d['region']}: {verdict}, "
        f"{d['duration_s']:.1f} s of a {d['target_s'] / 60:.0f}-minute target"
    )
    console.print(line if d["ok"] else _bad(line), markup=False)
    if v:
        console.print(
            f"verified: {v['keys']} keys of {v['companies']} companies, restore "
            f"{v['restore_s']:.1f} s"
            + (f"; {len(v['mismatches'])} mismatch(es)" if v["mismatches"] else ""),
            markup=False,
        )
        for mismatch in v["mismatches"][:10]:
            console.print(f"  - {mismatch}", markup=False)
    if d.get("error"):
        console.print(f"error: {d['error']}", markup=False)
    if d.get("report"):
        console.print(f"report: {d['report']}", markup=False)
    _footer(console, d)


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
    settings = load_settings()
    _show(
        json,
        _render_run,
        lambda: take_backup(
            settings, kind=kind, progress=out.progress, meters=out.meters()
        ).to_dict(),
    )


@task(
    name="list",
    auto_shortflags=False,
    help={**JSON_HELP, "region": "only this region (moscow or eu)"},
)
@operator_task
def list_(c: Context, region: str | None = None, json: bool = False) -> None:
    """Every backup per region (kind, age, size, last validation), base backups and WAL range.

    Base backups and the WAL range are those of point-in-time recovery. A region that cannot be
    read is listed as unreachable beside the others (exit 6)."""
    from resilience.backup.listing import list_backups
    from resilience.config import load_settings

    settings = load_settings()
    _show(json, _render_list, lambda: list_backups(settings, region))


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
    settings = load_settings()
    _show(
        json, _render_validate, lambda: validate_backups(settings, progress=out.progress).to_dict()
    )


@task(name="test-restore", auto_shortflags=False, help=JSON_HELP)
@operator_task
def test_restore(c: Context, json: bool = False) -> None:
    """Monthly: the newest backup restored and every key verified, timed against 30 minutes."""
    from resilience.backup.restore import test_restore as run_test
    from resilience.config import load_settings
    from resilience.infra.output import Output

    out = Output(json)
    settings = load_settings()
    _show(
        json,
        _render_test_restore,
        lambda: run_test(settings, progress=out.progress, report_dir=Path("reports")),
    )


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
    """(cron, daily) A base backup to every region with barman-cloud, then its retention.

    The retention keeps a recovery window of RESILIENCE_PITR_RECOVERY_WINDOW_DAYS days."""
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
