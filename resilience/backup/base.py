"""Base backups for point-in-time recovery: `barman-cloud-backup` to every region (daily by
schedule), retention through `barman-cloud-backup-delete` with a recovery-window policy, and the
listing of each region's base backups and WAL range beside the logical dumps.

barman-cloud-backup reads the data directory itself, so it runs on the server's host. The DSN
(RESILIENCE_PITR_DSN, default RESILIENCE_RESTORE_DSN) names a role allowed to run backups; its
password reaches the child as PGPASSWORD, never in its argv.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from resilience.alerting.channels import notify
from resilience.backup.barman import Archive, archives, list_backups, run
from resilience.backup.wal import WAL_FILE_RE
from resilience.config import Settings
from resilience.errors import ConfigError, InputError, PartialFailure, ResilienceError
from resilience.infra.s3 import regions_from_settings
from resilience.runs.record import recorded_run

Progress = Callable[[str], None]


def backup_dsn(settings: Settings) -> str:
    secret = settings.pitr_dsn or settings.restore_dsn
    if secret is None:
        raise ConfigError(
            "base backups need RESILIENCE_PITR_DSN (or RESILIENCE_RESTORE_DSN): a role allowed "
            "to run backups on the server's host"
        )
    return secret.get_secret_value()


def connection_args(dsn: str) -> tuple[list[str], dict[str, str]]:
    """barman-cloud-backup's -h/-p/-U/-d and the environment for the password."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        raise InputError("the base-backup DSN does not parse (RESILIENCE_PITR_DSN)") from None
    args: list[str] = []
    for key, flag in (("host", "-h"), ("port", "-p"), ("user", "-U")):
        if parts.get(key):
            args += [flag, str(parts[key])]
    args += ["-d", str(parts.get("dbname") or "postgres")]
    env = {"PGCONNECT_TIMEOUT": "10"}
    if parts.get("password"):
        env["PGPASSWORD"] = str(parts["password"])
    if parts.get("sslmode"):
        env["PGSSLMODE"] = str(parts["sslmode"])
    return args, env


@dataclass
class BaseOutcome:
    region: str
    ok: bool
    backup_id: str | None = None
    seconds: float | None = None
    error: str | None = None
    retention: list[str] = field(default_factory=list)  # backups retention deleted
    retention_error: str | None = None


@dataclass
class BaseRun:
    name: str
    regions: list[BaseOutcome]
    duration_s: float
    record: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "regions": [vars(r) for r in self.regions],
            "duration_s": round(self.duration_s, 3),
            "record": str(self.record) if self.record else None,
        }


def _one_region(
    settings: Settings, archive: Archive, name: str, conn: list[str], env: dict[str, str]
) -> BaseOutcome:
    try:
        done = run(
            settings,
            archive,
            "barman-cloud-backup",
            [
                *archive.cloud_args(),
                "--gzip",
                "-e",
                "AES256",
                *conn,
                "--immediate-checkpoint",
                "-J",
                "2",
                "-n",
                name,
                archive.url,
                archive.server,
            ],
            what="base backup",
            env=env,
        )
    except ResilienceError as exc:
        return BaseOutcome(archive.name, False, error=str(exc))
    outcome = BaseOutcome(archive.name, True, seconds=round(done.seconds, 3))
    try:
        named = [b for b in list_backups(settings, archive) if b.get("backup_name") == name]
        outcome.backup_id = str(named[-1]["backup_id"]) if named else None
    except ResilienceError as exc:
        outcome.error = f"taken, but not listed: {exc}"
    try:
        outcome.retention = apply_retention(settings, archive, dry_run=False)
    except ResilienceError as exc:
        outcome.retention_error = str(exc)
    return outcome


def take_base_backup(settings: Settings, *, progress: Progress | None = None) -> BaseRun:
    """A base backup in every region (in parallel), then each region's retention."""
    say = progress or (lambda _m: None)
    regions = archives(settings, regions_from_settings(settings))
    conn, env = connection_args(backup_dsn(settings))
    name = "base-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with recorded_run(settings, "backup.base") as record:
        began = time.monotonic()
        say(f"base backup {name} to {', '.join(a.name for a in regions)} ...")
        with ThreadPoolExecutor(max_workers=len(regions)) as pool:
            outcomes = list(pool.map(lambda a: _one_region(settings, a, name, conn, env), regions))
        for o in outcomes:
            say(
                f"region {o.region}: "
                + (f"{o.backup_id} in {o.seconds} s" if o.ok else str(o.error))
            )
        result = BaseRun(name, outcomes, time.monotonic() - began)
        record.journal.measurements.update(result.to_dict())
        failed = [o for o in outcomes if not o.ok]
        problems = [f"region {o.region}: {o.error}" for o in failed]
        problems += [
            f"region {o.region} retention: {o.retention_error}"
            for o in outcomes
            if o.retention_error
        ]
        if problems:
            notify(settings, f"base backup {name}: " + "; ".join(problems), level="warning")
        if len(failed) == len(outcomes):
            raise ResilienceError(f"base backup {name} reached no region: " + "; ".join(problems))
        if failed:
            raise PartialFailure(
                f"base backup {name} missed {', '.join(o.region for o in failed)}: "
                + "; ".join(problems),
                6,
                result.to_dict(),
            )
    result.record = record.path
    return result


def apply_retention(settings: Settings, archive: Archive, *, dry_run: bool) -> list[str]:
    """barman-cloud-backup-delete with 'RECOVERY WINDOW OF N DAYS': the backups (and the WAL
    before the oldest kept one) it deletes, or would delete with `dry_run`."""
    before = {str(b["backup_id"]) for b in list_backups(settings, archive)}
    args = [
        *archive.cloud_args(),
        "--retention-policy",
        f"RECOVERY WINDOW OF {settings.pitr_recovery_window_days} DAYS",
    ]
    if dry_run:
        args.append("--dry-run")
    done = run(
        settings,
        archive,
        "barman-cloud-backup-delete",
        [*args, archive.url, archive.server],
        what="retention",
    )
    if dry_run:
        return sorted(b for b in before if b in done.stdout + done.stderr)
    after = {str(b["backup_id"]) for b in list_backups(settings, archive)}
    return sorted(before - after)


@dataclass
class WalRange:
    first: str | None
    last: str | None
    files: int
    newest_upload: datetime | None


def wal_objects(archive: Archive) -> dict[str, datetime]:
    """Every archived WAL file of a region: name (compression suffix dropped) -> upload time."""
    found: dict[str, datetime] = {}
    for key, _size, modified in archive.store.objects(archive.key_prefix + "wals/"):
        name = key.rsplit("/", 1)[-1]
        for suffix in (".gz", ".bz2", ".xz", ".snappy", ".zst", ".lz4"):
            name = name.removesuffix(suffix)
        if WAL_FILE_RE.fullmatch(name):
            found[name] = modified
    return found


def wal_range(archive: Archive) -> WalRange:
    objects = wal_objects(archive)
    segments = sorted(n for n in objects if len(n) == 24)
    return WalRange(
        segments[0] if segments else None,
        segments[-1] if segments else None,
        len(objects),
        max(objects.values()) if objects else None,
    )


def list_pitr(settings: Settings, archive: Archive) -> dict[str, Any]:
    """A region's base backups and WAL range, for `backup.list`."""
    backups = list_backups(settings, archive)
    wal = wal_range(archive)
    return {
        "base_backups": [
            {
                "id": b.get("backup_id"),
                "name": b.get("backup_name"),
                "status": b.get("status"),
                "begin": b.get("begin_time_iso"),
                "end": b.get("end_time_iso"),
                "begin_wal": b.get("begin_wal"),
                "end_wal": b.get("end_wal"),
            }
            for b in backups
        ],
        "wal": {
            "first": wal.first,
            "last": wal.last,
            "files": wal.files,
            "newest_upload": wal.newest_upload.isoformat() if wal.newest_upload else None,
        },
    }
