"""`backup.pitr --at TIME`: a new cluster recovered to the second before TIME, verified.

1. preflight (also the whole of a run without --yes): the region's base backups
   (`barman-cloud-backup-list`), the newest one that ended before TIME (none: TIME is before the
   oldest base backup); the region's archived WAL must reach past TIME (the newest segment was
   uploaded after it: else TIME is after the newest WAL) and have no gap from the backup's first
   segment to the newest (the missing range is named); the target directory new or empty;
2. `barman-cloud-restore` of that backup into the target directory;
3. recovery settings: `restore_command` = `barman-cloud-wal-restore` (run by the server's user,
   so from RESILIENCE_BARMAN_SERVER_BIN_DIR), `recovery_target_time` = TIME,
   `recovery_target_action = promote`, `archive_mode = off` (the copy must never push its own
   timeline into the archive), its own port on 127.0.0.1; `recovery.signal`;
4. start it (pg_ctl, as the server's user when we are root), wait until it is promoted, and
   verify: it answers, and every company's key count and set digest are read from it.

The live cluster is never touched: replacing it is a separate, confirmed step (runbook). The
restored cluster as a server (its user, binaries, start, digests, stop) is
:mod:`resilience.backup.pitr_server`.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.authstate.pgconn import connect
from resilience.backup.barman import Archive, archives, list_backups, run
from resilience.backup.base import wal_objects
from resilience.backup.pitr_server import (
    company_digests,
    find_pg_ctl,
    log_tail,
    restored_dsn,
    server_user,
    start_server,
    stop_restored,
    wal_restore_command,
)
from resilience.config import Settings
from resilience.errors import DataError, InputError, ResilienceError
from resilience.infra.commandline import operator_command as cmd
from resilience.infra.processes import free_port
from resilience.infra.redact import redact_dsn
from resilience.infra.s3 import regions_from_settings
from resilience.infra.waiting import wait_until
from resilience.runs.record import recorded_run

__all__ = [  # server_user and stop_restored live in pitr_server; callers import them from here
    "PitrResult",
    "Plan",
    "missing_segments",
    "pitr",
    "plan",
    "segment_name",
    "segment_number",
    "server_user",
    "stop_restored",
]

Progress = Callable[[str], None]
PREFETCH_DIR = "pitr-wal-prefetch"


# --- WAL names ------------------------------------------------------------------------------------
def segment_number(name: str, segment_size: int) -> int:
    """A segment's position in its timeline (log id * segments per log id + segment)."""
    per_log = 0x100000000 // segment_size
    return int(name[8:16], 16) * per_log + int(name[16:24], 16)


def segment_name(timeline: int, number: int, segment_size: int) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def missing_segments(
    present: set[str], first: str, last: str, segment_size: int
) -> list[tuple[str, str]]:
    """Ranges (first, last) of segments absent between `first` and `last` on first's timeline."""
    timeline = int(first[:8], 16)
    gaps: list[tuple[str, str]] = []
    start: int | None = None
    end = segment_number(last, segment_size)
    for number in range(segment_number(first, segment_size), end + 1):
        name = segment_name(timeline, number, segment_size)
        if name not in present and start is None:
            start = number
        elif name in present and start is not None:
            gaps.append(
                (
                    segment_name(timeline, start, segment_size),
                    segment_name(timeline, number - 1, segment_size),
                )
            )
            start = None
    if start is not None:
        gaps.append((segment_name(timeline, start, segment_size), last))
    return gaps


def _parse_time(value: Any) -> datetime | None:
    """A timestamp as barman reports it, as an aware datetime (naive: UTC); None if it is none."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- the plan -------------------------------------------------------------------------------------
@dataclass
class Plan:
    region: str
    at: datetime | None  # None: to the end of the archived WAL
    backup_id: str
    backup_end: datetime
    begin_wal: str
    wal_through: str  # the newest archived segment: no gap may lie before it
    newest_wal_upload: datetime
    target_dir: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "at": self.at.isoformat() if self.at else "latest",
            "backup_id": self.backup_id,
            "backup_end": self.backup_end.isoformat(),
            "wal_from": self.begin_wal,
            "wal_through": self.wal_through,
            "newest_wal_upload": self.newest_wal_upload.isoformat(),
            "target_dir": str(self.target_dir),
        }


def plan(settings: Settings, archive: Archive, at: datetime | None, target_dir: Path) -> Plan:
    """Everything checked before anything is written (InputError / DataError otherwise)."""
    backups = [b for b in list_backups(settings, archive) if b.get("status") == "DONE"]
    if not backups:
        raise InputError(
            f"region {archive.name} holds no base backup: run `{cmd('backup.base')}` first"
        )
    ended = [(b, _parse_time(b.get("end_time_iso"))) for b in backups]
    before = [(b, end) for b, end in ended if end is not None and (at is None or end < at)]
    if not before:
        oldest = min(end for _b, end in ended if end is not None)
        raise InputError(
            f"--at {at.isoformat() if at else 'latest'} is before the oldest base backup of "
            f"region {archive.name} (it ended at {oldest.isoformat()})"
        )
    backup, backup_end = max(before, key=lambda pair: pair[1])
    size = int(backup.get("xlog_segment_size") or 16 * 1024 * 1024)
    begin_wal = str(backup["begin_wal"])
    timeline = begin_wal[:8]
    uploaded = {n: t for n, t in wal_objects(archive).items() if len(n) == 24 and n[:8] == timeline}
    if not uploaded:
        raise DataError(f"region {archive.name} holds no WAL of timeline {int(timeline, 16)}")
    newest = max(uploaded.values())
    if at is not None and newest <= at:
        raise InputError(
            f"--at {at.isoformat()} is after the newest WAL of region {archive.name} "
            f"(uploaded at {newest.isoformat()}): push the spool (backup.wal-push) or choose "
            "an earlier time"
        )
    # recovery replays from the backup's first segment until it passes `at`; which segment
    # that is cannot be told from the outside, so the whole range to the newest must be whole
    through = max(uploaded)
    gaps = missing_segments(set(uploaded), begin_wal, through, size)
    if gaps:
        ranges = ", ".join(a if a == b else f"{a}..{b}" for a, b in gaps)
        raise DataError(
            f"region {archive.name}: WAL missing from the archive between base backup "
            f"{backup['backup_id']} and --at: {ranges} (restore cannot pass a gap; try the other "
            "region, or a time before the gap)"
        )
    if target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir())):
        raise InputError(f"--target-dir {target_dir} is not empty: give a new or empty directory")
    return Plan(
        archive.name,
        at,
        str(backup["backup_id"]),
        backup_end,
        begin_wal,
        through,
        newest,
        target_dir,
    )


# --- the restore ----------------------------------------------------------------------------------
@dataclass
class PitrResult:
    plan: Plan
    dry_run: bool
    port: int | None = None
    dsn: str | None = None
    timeline: int | None = None
    recovered_to: str | None = None
    companies: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    stop_command: str | None = None
    record: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "dry_run": self.dry_run,
            "port": self.port,
            "dsn": redact_dsn(self.dsn) if self.dsn else None,
            "timeline": self.timeline,
            "recovered_to": self.recovered_to,
            "companies": self.companies,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "stop_command": self.stop_command,
            "record": str(self.record) if self.record else None,
        }


def _choose_archive(settings: Settings, region: str | None) -> list[Archive]:
    found = archives(settings, regions_from_settings(settings))
    if region is None:
        return found
    chosen = [a for a in found if a.name == region]
    if not chosen:
        raise InputError(f"unknown or unconfigured region {region!r} (moscow or eu)")
    return chosen


def pitr(
    settings: Settings,
    *,
    at: datetime | None,
    region: str | None = None,
    target_dir: Path | None = None,
    port: int | None = None,
    yes: bool = False,
    progress: Progress | None = None,
) -> PitrResult:
    say = progress or (lambda _m: None)
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    target = target_dir or Path(tempfile.gettempdir()) / (
        "resilience-pitr-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    )
    target = target.absolute()
    with recorded_run(settings, "backup.pitr") as record:
        chosen: Plan | None = None
        the_archive: Archive | None = None
        failures: list[ResilienceError] = []
        for archive in _choose_archive(settings, region):
            try:
                chosen, the_archive = plan(settings, archive, at, target), archive
                break
            except ResilienceError as exc:  # this region cannot serve the time: the next one
                failures.append(exc)
                say(f"region {archive.name}: {exc}")
        if chosen is None or the_archive is None:
            raise next((e for e in failures if isinstance(e, InputError | DataError)), failures[0])
        say(
            f"region {chosen.region}: base backup {chosen.backup_id} (ended "
            f"{chosen.backup_end.isoformat()}), WAL {chosen.begin_wal}..{chosen.wal_through}"
        )
        result = PitrResult(chosen, dry_run=not yes)
        record.journal.measurements.update(result.to_dict())
        if yes:
            try:
                _restore(settings, the_archive, result, port, say)
            finally:
                record.journal.measurements.update(result.to_dict())
    result.record = record.path
    return result


def _restore(
    settings: Settings, archive: Archive, result: PitrResult, port: int | None, say: Progress
) -> None:
    """The restore itself, step by step; `result` says how far it got and how long each took."""
    chosen = result.plan
    target = chosen.target_dir
    user = server_user()
    pg_ctl = find_pg_ctl(settings)
    restore_bin = wal_restore_command(settings, user)
    began = time.monotonic()
    _prepare_target(target, user)
    _restore_base_backup(settings, archive, chosen, say)
    result.timings["restore_base"] = time.monotonic() - began
    result.port = port or free_port()
    _configure_recovery(archive, chosen, restore_bin, result.port)
    _hand_to_server_user(target, user)
    started = time.monotonic()
    say(
        f"starting the restored cluster on port {result.port} "
        f"(recovery to {chosen.at.isoformat() if chosen.at else 'the end of the archive'}) ..."
    )
    server = start_server(pg_ctl, target, user, archive.environment())
    result.stop_command = f"pg_ctl -D {target} stop" + (f"  (as {user})" if user else "")
    result.dsn = restored_dsn(settings, result.port)
    try:
        _wait_promoted(settings, result, target, server)
    except BaseException:  # a copy that failed to recover is not left running
        stop_restored(settings, target)
        raise
    result.timings["recover_and_promote"] = time.monotonic() - started
    verified = time.monotonic()
    result.companies = company_digests(result.dsn, settings.db_connect_timeout)
    result.timings["verify"] = time.monotonic() - verified
    result.timings["total"] = time.monotonic() - began
    say(f"promoted on timeline {result.timeline}, recovered to {result.recovered_to}")


def _prepare_target(target: Path, user: str | None) -> None:
    """The target directory, made and owned by the server's user, who must be able to reach it."""
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    if user:
        info = pwd.getpwnam(user)
        os.chown(target, info.pw_uid, info.pw_gid)
    probe = subprocess.run(["test", "-w", str(target)], user=user, check=False, cwd="/")
    if probe.returncode != 0:
        raise InputError(
            f"the server's user {user} cannot reach {target}: choose a --target-dir it can "
            "traverse (e.g. under /var/lib/postgresql or the system temp dir)"
        )


def _restore_base_backup(settings: Settings, archive: Archive, chosen: Plan, say: Progress) -> None:
    say(f"restoring base backup {chosen.backup_id} into {chosen.target_dir} ...")
    run(
        settings,
        archive,
        "barman-cloud-restore",
        [
            *archive.cloud_args(),
            archive.url,
            archive.server,
            chosen.backup_id,
            str(chosen.target_dir),
        ],
        what=f"restoring base backup {chosen.backup_id}",
    )


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _configure_recovery(archive: Archive, chosen: Plan, restore_bin: str, port: int) -> None:
    """The recovery settings appended to postgresql.auto.conf, `recovery.signal`, no stale
    pid or standby file, and the WAL prefetch spool."""
    target = chosen.target_dir
    cloud = " ".join(archive.cloud_args())
    # prefetch a few segments per call into a spool of the copy's own (fewer processes)
    prefetch = target / PREFETCH_DIR
    restore_command = (
        f"{restore_bin} {cloud} --parallel 3 --spool-dir {prefetch} "
        f"{archive.url} {archive.server} %f %p"
    )
    lines = [
        "",
        "# backup.pitr: point-in-time recovery of this copy",
        f"restore_command = {_quote(restore_command)}",
        *([f"recovery_target_time = {_quote(chosen.at.isoformat())}"] if chosen.at else []),
        "recovery_target_action = 'promote'",
        "archive_mode = 'off'",
        f"port = {port}",
        "listen_addresses = '127.0.0.1'",
        "unix_socket_directories = ''",
        "",
    ]
    with open(target / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
        conf.write("\n".join(lines))
    (target / "recovery.signal").touch()
    for stale in ("postmaster.pid", "standby.signal"):
        (target / stale).unlink(missing_ok=True)
    prefetch.mkdir(mode=0o700, exist_ok=True)


def _hand_to_server_user(target: Path, user: str | None) -> None:
    """Everything in the target owned by the server's user; the directory private (0700)."""
    if user:
        info = pwd.getpwnam(user)
        for root, dirs, files in os.walk(target):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), info.pw_uid, info.pw_gid)
        os.chown(target, info.pw_uid, info.pw_gid)
    target.chmod(0o700)


def _wait_promoted(
    settings: Settings, result: PitrResult, target: Path, server: subprocess.Popen[bytes]
) -> None:
    assert result.dsn is not None

    def promoted() -> bool:
        if server.poll() is not None:  # the server exited: recovery failed
            raise DataError(f"the restored cluster stopped during recovery: {log_tail(target)}")
        with connect(result.dsn or "", timeout=2) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), "
                "pg_walfile_name(pg_current_wal_lsn()), "
                "pg_last_xact_replay_timestamp()"
            ).fetchone()
        if row is None or row[0]:
            return False
        result.timeline = int(str(row[1])[:8], 16)
        result.recovered_to = row[2].isoformat() if row[2] else None
        return True

    def timeout(last: Exception | None) -> ResilienceError:
        return DataError(
            f"the restored cluster was not promoted within {settings.pitr_timeout:.0f} s "
            f"(RESILIENCE_PITR_TIMEOUT): {log_tail(target)}"
        )

    wait_until(
        promoted,
        settings.pitr_timeout,
        "restored cluster",
        interval=0.25,
        on_timeout=timeout,
        fatal=(DataError,),
    )
