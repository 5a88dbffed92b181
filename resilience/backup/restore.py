"""`backup.restore`: a backup back into a database, verified against its manifest.

- no target: into a scratch database, verified and dropped (a restore test);
- `--target-dsn`: into that database (refused when it already holds auth rows, unless `--yes`);
- `--company C`: only that company's rows, into the live database, in one transaction whose
  last act checks the company's digest against the manifest (scenarios 2 and 3: one tenant
  corrupt or partly deleted). Other companies are not touched. Without `--yes` it is a preflight
  that says what would change: keys added, changed and removed, and whether creds change. The
  rows are written with their Buffers in the form `RESILIENCE_DB_BUFFER_FORM` picks (`auto`: the
  form most of the company's live rows use; the backup's when none is left).
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from resilience.authstate import pgraw
from resilience.authstate.bufferform import in_form
from resilience.authstate.codec import Style, loads
from resilience.authstate.fingerprint import KeyFingerprint
from resilience.authstate.pgconn import connect, database_errors
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.backup import dump as pgdump
from resilience.backup.catalog import list_region
from resilience.backup.manifest import BackupManifest
from resilience.backup.verify import compare, download_checked, restore_dsn, scratch_database
from resilience.config import Settings, service_dsn, validate_company_id
from resilience.errors import DataError, InputError, ResilienceError, VerificationError
from resilience.infra.commandline import operator_command as cmd
from resilience.infra.oplock import operation_lock
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.redact import redact_dsn
from resilience.infra.s3 import RegionStore, StorageError, regions_from_settings
from resilience.runs.record import recorded_run

Progress = Callable[[str], None]


def find_backup(
    settings: Settings,
    *,
    backup_id: str | None = None,
    at: datetime | None = None,
    region: str | None = None,
) -> tuple[RegionStore, BackupManifest]:
    stores = regions_from_settings(settings)
    if region is not None:
        stores = [s for s in stores if s.name == region]
        if not stores:
            raise InputError(f"unknown or unconfigured region {region!r} (moscow or eu)")
    found: list[tuple[RegionStore, BackupManifest]] = []
    errors = []
    for store in stores:
        try:
            found += [(store, m) for m in list_region(store).manifests]
        except StorageError as exc:
            errors.append(str(exc))
    if not found:
        if errors:  # a region that cannot be read is an outage, not a wrong flag
            raise StorageError("no backup could be read: " + "; ".join(errors))
        raise InputError("no backup found")
    found.sort(key=lambda pair: pair[1].id, reverse=True)
    if backup_id is not None:
        match = [pair for pair in found if pair[1].id == backup_id]
        if not match:
            if errors:
                raise StorageError(
                    f"no backup with id {backup_id!r} in the regions that answered; "
                    + "; ".join(errors)
                )
            raise InputError(f"no backup with id {backup_id!r}: see `{cmd('backup.list')}`")
        return match[0]
    if at is not None:
        before = [pair for pair in found if pair[1].created <= at]
        if not before:
            raise InputError(
                f"no backup at or before {at.isoformat()}: the oldest is {found[-1][1].id}"
            )
        return before[0]
    return found[0]


@dataclass
class CompanyChange:
    added: int
    changed: int
    removed: int
    creds_changed: bool

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


RawCompany = tuple[tuple[Any, ...] | None, list[tuple[Any, ...]]]


def _fingerprint(key_type: str, key_id: str, text: str) -> str:
    """The key's fingerprint, or a marker of its raw text when it does not decode (corrupt
    rows, scenario 2, must still be counted as changed rather than stop the preview)."""
    try:
        return KeyFingerprint.of(key_type, key_id, loads(text, where=f"{key_type}/{key_id}"))
    except DataError:
        return "undecodable:" + hashlib.sha256(text.encode()).hexdigest()


def in_rows_form(rows: RawCompany, style: Style) -> RawCompany:
    """A company's raw rows (:func:`~resilience.authstate.pgraw.raw_company`) with every Buffer
    of every value in ``style``; times and decoded values as they were."""
    creds, keys = rows
    if creds is not None:
        creds = (in_form(creds[0], style, where="creds"), *creds[1:])
    return creds, [(t, i, in_form(v, style, where=f"{t}/{i}"), *rest) for t, i, v, *rest in keys]


def change_between(live: RawCompany, backup: RawCompany) -> CompanyChange:
    """What replacing the live rows by the backup's changes, row by row."""
    now = {(t, i): _fingerprint(t, i, v) for t, i, v, *_ in live[1]}
    then = {(t, i): _fingerprint(t, i, v) for t, i, v, *_ in backup[1]}
    creds = [None if c is None else _fingerprint("creds", "", c[0]) for c in (live[0], backup[0])]
    return CompanyChange(
        added=len(then.keys() - now.keys()),
        changed=sum(1 for k in then.keys() & now.keys() if then[k] != now[k]),
        removed=len(now.keys() - then.keys()),
        creds_changed=creds[0] != creds[1],
    )


@dataclass
class RestoreRun:
    backup: dict[str, Any]
    region: str
    mode: str  # "scratch", "target", "company-preview", "company"
    verified: dict[str, Any] = field(default_factory=dict)
    change: dict[str, Any] | None = None
    record: Path | None = None
    #: --company: the Buffer form the rows are written in (bufferform.FormChoice)
    buffer_form: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup": self.backup,
            "region": self.region,
            "mode": self.mode,
            "verified": self.verified,
            "change": self.change,
            "buffer_form": self.buffer_form,
            "record": str(self.record) if self.record else None,
        }


def restore_backup(
    settings: Settings,
    *,
    backup_id: str | None = None,
    at: datetime | None = None,
    region: str | None = None,
    company: str | None = None,
    target_dsn: str | None = None,
    yes: bool = False,
    progress: Progress | None = None,
    meters: Meters = NO_METERS,
) -> RestoreRun:
    say = progress or (lambda _m: None)
    if backup_id is not None and at is not None:
        raise InputError("--id and --at both pick the backup: give one")
    if company is not None:
        validate_company_id(company)
    with (
        contextlib.ExitStack() as held,
        recorded_run(settings, "backup.restore", company) as record,
    ):
        # the live database's rows (a company's, or the service's whole database): the lock
        # of the company, or of the service's company, as a switch takes it
        service = settings.service_dsn.get_secret_value() if settings.service_dsn else None
        locked = company if company is not None else settings.company_id
        if yes and (company is not None or (target_dsn is not None and target_dsn == service)):
            held.enter_context(operation_lock(settings, locked, "backup.restore", record.journal))
        if target_dsn:
            record.journal.register_secret(target_dsn)
        store, manifest = find_backup(settings, backup_id=backup_id, at=at, region=region)
        say(f"backup {manifest.id} ({manifest.kind}) from region {store.name}")
        run = RestoreRun(manifest.summary(), store.name, "scratch")
        with tempfile.TemporaryDirectory(prefix="restore-") as tmp:
            path = download_checked(store, manifest, Path(tmp), meters)
            if company is not None:
                _restore_company(settings, manifest, path, company, yes, run, say)
            elif target_dsn is not None:
                run.mode = "target"
                _restore_target(target_dsn, manifest, path, yes, run, say)
            else:
                with scratch_database(
                    restore_dsn(settings), settings.db_connect_timeout
                ) as scratch:
                    pgdump.restore(scratch, path)
                    verified = compare(scratch, manifest)
                run.verified = verified.to_dict()
                if verified.mismatches:
                    raise VerificationError(
                        f"backup {manifest.id} restores to something else than its manifest: "
                        + "; ".join(verified.mismatches[:5])
                    )
        record.journal.measurements.update(run.to_dict())
    run.record = record.path
    return run


def _restore_company(
    settings: Settings,
    manifest: BackupManifest,
    path: Path,
    company: str,
    yes: bool,
    run: RestoreRun,
    say: Progress,
) -> None:
    expected = manifest.companies.get(company)
    if expected is None:
        raise InputError(f"backup {manifest.id} holds no company {company}")
    with scratch_database(restore_dsn(settings), settings.db_connect_timeout) as scratch:
        pgdump.restore(scratch, path)
        with connect(scratch) as conn:
            source = PgAuthStore(conn)
            creds, keys = pgraw.raw_company(source.conn, company)
            backup_view = view_of(company, source.load_creds(company), source.records(company))
            backup_form = source.write_form(company, settings.db_buffer_form)
    if backup_view.digest().digest != expected.digest:
        raise VerificationError(
            f"backup {manifest.id}: company {company} does not match its manifest digest"
        )
    dsn = service_dsn(settings)
    with connect(dsn, timeout=settings.db_connect_timeout) as conn:
        live = PgAuthStore(conn, buffer_form=settings.db_buffer_form)
        form = live.write_form(company)
        if form.counts is not None and not form.counts.total:
            form = backup_form  # auto, and the company has no rows left: the backup's form
        run.buffer_form = form.to_dict()
        creds, keys = in_rows_form((creds, keys), form.style)
        change = change_between(pgraw.raw_company(live.conn, company), (creds, keys))
        run.change = change.to_dict()
        if not yes:
            run.mode = "company-preview"
            say(
                f"company {company}: {change.added} keys would be added, {change.changed} "
                f"changed, {change.removed} removed; creds "
                f"{'would change' if change.creds_changed else 'unchanged'}; Buffers written "
                f"as {form.describe()}: --yes to restore"
            )
            return
        run.mode = "company"
        with database_errors("restoring the company"), conn.transaction():
            pgraw.replace_company_raw(live.conn, company, creds, keys)
            after = view_of(company, live.load_creds(company), live.records(company)).digest()
            if after.digest != expected.digest:
                raise VerificationError(
                    f"company {company} after the restore does not match backup {manifest.id}; "
                    "rolled back"
                )
    run.verified = {"company": company, "digest": expected.digest, "key_count": expected.key_count}
    say(
        f"company {company}: restored to backup {manifest.id} ({expected.key_count} keys, "
        f"Buffers as {form.describe()})"
    )


def _restore_target(
    target_dsn: str,
    manifest: BackupManifest,
    path: Path,
    yes: bool,
    run: RestoreRun,
    say: Progress,
) -> None:
    with connect(target_dsn) as conn, database_errors("inspecting the target"):
        present = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ANY(%s)",
            (list(pgdump.AUTH_TABLES),),
        ).fetchone()
        if present and present[0] and not yes:
            raise InputError(
                f"the target {redact_dsn(target_dsn)} already has auth tables: --yes to "
                "replace them"
            )
        if present and present[0]:
            for table in pgdump.AUTH_TABLES:
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table))
                )
            conn.commit()
    say(f"restoring into {redact_dsn(target_dsn)} ...")
    pgdump.restore(target_dsn, path)
    verified = compare(target_dsn, manifest)
    run.verified = verified.to_dict()
    if verified.mismatches:
        raise VerificationError(
            f"the target does not match backup {manifest.id}: " + "; ".join(verified.mismatches[:5])
        )


RESTORE_TARGET_S = 30 * 60.0


def test_restore(
    settings: Settings, *, progress: Progress | None = None, report_dir: Path | None = None
) -> dict[str, Any]:
    """The monthly restore test: the newest backup into a scratch database, every company's
    keys verified by fingerprint (the set digests) against the manifest, timed against the
    30-minute target; the result goes to Sentry and Telegram and into the run record."""
    from resilience.alerting.channels import notify
    from resilience.backup.verify import verify_backup

    say = progress or (lambda _m: None)
    with recorded_run(settings, "backup.test-restore") as record:
        store, manifest = find_backup(settings)
        say(f"restore test of backup {manifest.id} from region {store.name} ...")
        began = time.monotonic()
        error: str | None = None
        verified: dict[str, Any] = {}
        try:
            verified = verify_backup(settings, store, manifest).to_dict()
        except ResilienceError as exc:
            error = str(exc)
        duration = time.monotonic() - began
        result = {
            "backup": manifest.summary(),
            "region": store.name,
            "duration_s": round(duration, 3),
            "target_s": RESTORE_TARGET_S,
            "within_target": duration < RESTORE_TARGET_S,
            "verified": verified,
            "ok": error is None and duration < RESTORE_TARGET_S,
            "error": error,
        }
        record.journal.measurements.update(result)
        text = (
            f"monthly restore test of backup {manifest.id}: "
            + ("ok" if result["ok"] else f"FAILED ({error or 'over the 30-minute target'})")
            + f", {duration:.1f} s, {verified.get('keys', 0)} keys verified"
        )
        notify(settings, text, level="info" if result["ok"] else "error")
        if report_dir is not None:
            result["report"] = str(_write_report(report_dir, result))
        if not result["ok"]:
            failure = VerificationError(text)
            failure.details = result
            raise failure
    result["record"] = str(record.path) if record.path else None
    return result


def _write_report(report_dir: Path, result: dict[str, Any]) -> Path:
    """`restore-test-<backup id>.json` under `report_dir` (0600: it names the deployment)."""
    import json

    from resilience.infra.fsutil import atomic_write

    path = report_dir / f"restore-test-{result['backup']['id']}.json"
    atomic_write(path, (json.dumps(result, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
    return path
