"""`backup.run`: one backup to every configured region.

1. catch up regions that missed earlier backups (from the local spool);
2. in one REPEATABLE READ snapshot: export it, check that pg_dump is not older than the server,
   `pg_dump --snapshot` the auth tables (or the whole database), and count rows and digest every
   company in that very snapshot (its canonical digest, and its stored rows' digest computed by
   the server), so the manifest describes exactly what the dump holds;
3. judge the backup against its own history (rows down more than 20 %, size halved) and the size
   bound (1 GB): alerts, never a refusal, the backup is kept either way;
4. upload the dump and then its manifest to every region; a region that fails (refuses, hangs
   past its bounds, answers an error) is recorded in the spool and alerted, the others still get
   the backup. Each region is bounded (`resilience.infra.s3`): a region that did not answer is
   not tried again in the same run, so a hanging one costs its bound once.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from resilience.alerting.channels import notify
from resilience.authstate.pgconn import connect, database_errors
from resilience.authstate.pgdigest import stored_digests
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.backup import dump as pgdump
from resilience.backup.catalog import Spool, list_region, upload_backup
from resilience.backup.manifest import BackupManifest, CompanyDigest, Kind, new_id
from resilience.config import Settings, service_dsn
from resilience.errors import PartialFailure, ResilienceError
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.s3 import RegionStore, StorageError, regions_from_settings, sha256_file
from resilience.runs.record import recorded_run

Progress = Callable[[str], None]


@dataclass
class RegionOutcome:
    region: str
    ok: bool
    error: str | None = None
    caught_up: list[str] = field(default_factory=list)


@dataclass
class BackupRun:
    manifest: BackupManifest
    regions: list[RegionOutcome]
    warnings: list[str]
    duration_s: float
    record: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup": self.manifest.summary(),
            "regions": [vars(r) for r in self.regions],
            "warnings": self.warnings,
            "duration_s": round(self.duration_s, 3),
            "record": str(self.record) if self.record else None,
        }


def choose_kind(kind: str, history: list[BackupManifest], now: datetime) -> Kind:
    """`auto`: the first backup of a month is monthly, the first of a day daily, else hourly."""
    if kind in ("hourly", "daily", "monthly"):
        return kind  # type: ignore[return-value]
    month = now.strftime("%Y%m")
    day = now.strftime("%Y%m%d")
    if not any(m.id.startswith(month) for m in history):
        return "monthly"
    if not any(m.id.startswith(day) for m in history):
        return "daily"
    return "hourly"


def sanity_warnings(
    manifest: BackupManifest, previous: BackupManifest | None, settings: Settings
) -> list[str]:
    """Judged against the backup's own history, never fixed bounds (docs/domain.md §9)."""
    warnings = []
    if manifest.size > settings.backup_size_alert_bytes:
        warnings.append(
            f"backup {manifest.id} is {manifest.size} bytes, over the alert size of "
            f"{settings.backup_size_alert_bytes} (RESILIENCE_BACKUP_SIZE_ALERT_BYTES)"
        )
    if previous is not None:
        drop = settings.backup_drop_alert_pct / 100
        for table, count in previous.rows.items():
            now = manifest.rows.get(table, 0)
            if count and now < count * (1 - drop):
                warnings.append(
                    f"{table}: {now} rows, down from {count} in backup {previous.id} "
                    f"(more than {settings.backup_drop_alert_pct:g} %)"
                )
        if previous.size and manifest.size < previous.size / 2:
            warnings.append(
                f"backup {manifest.id} is {manifest.size} bytes, less than half of "
                f"{previous.id} ({previous.size})"
            )
    return warnings


def _history(stores: list[RegionStore]) -> list[BackupManifest]:
    seen: dict[str, BackupManifest] = {}
    for store in stores:
        try:
            for manifest in list_region(store).manifests:
                seen.setdefault(manifest.id, manifest)
        except ResilienceError:
            continue  # a region down: the others still tell the history
    return sorted(seen.values(), key=lambda m: m.id, reverse=True)


def _counts_and_digests(store: PgAuthStore) -> tuple[dict[str, int], dict[str, CompanyDigest]]:
    """Row counts per auth table and every company's key count and set digest."""
    rows = store.row_counts()
    companies = {}
    for company in store.companies():
        view = view_of(company, store.load_creds(company), store.records(company))
        digest = view.digest()
        companies[company] = CompanyDigest(
            digest.key_count, digest.digest, view.counts_by_type(), view.creds is not None
        )
    return rows, companies


def _stored_in_snapshot(dsn: str, snapshot: str, timeout: float) -> dict[str, str]:
    """Every company's stored rows' digest, read in the exported `snapshot` by a connection of
    its own: the server works while this process decodes keys."""
    with (
        connect(dsn, timeout=timeout) as conn,
        database_errors("digesting the backup's snapshot"),
        conn.transaction(),
    ):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        return stored_digests(conn)


def dump_with_manifest(
    settings: Settings, dsn: str, work: Path, kind: str, history: list[BackupManifest]
) -> tuple[BackupManifest, Path]:
    """Dump into `work` and build its manifest from the same snapshot."""
    started = datetime.now(UTC)
    path = work / "dump.pgc"
    tables = None if settings.backup_whole_database else pgdump.AUTH_TABLES
    tool = pgdump.find_tool("pg_dump")
    client = pgdump.tool_major(tool)
    with connect(dsn, timeout=settings.db_connect_timeout) as conn:
        store = PgAuthStore(conn)
        with database_errors("reading the backup's snapshot"), conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SHOW server_version_num").fetchone()
            server = int(row[0]) // 10000 if row else 0
            pgdump.check_client_version(client, server, tool)
            exported = conn.execute("SELECT pg_export_snapshot()").fetchone()
            snapshot = str(exported[0]) if exported else None
            # pg_dump reads the snapshot in its own process and the server digests its stored
            # rows on a connection of its own while we count and decode keys in ours: they
            # overlap on two cores instead of running one after the other
            with ThreadPoolExecutor(max_workers=2) as pool:
                dumping = pool.submit(pgdump.dump, dsn, path, snapshot=snapshot, tables=tables)
                hashing = (
                    pool.submit(_stored_in_snapshot, dsn, snapshot, settings.db_connect_timeout)
                    if snapshot
                    else None
                )
                rows, companies = _counts_and_digests(store)
                stored = hashing.result() if hashing else stored_digests(conn)
                dumping.result()
            for company, recorded in companies.items():
                recorded.stored_digest = stored.get(company)
    manifest = BackupManifest(
        id=new_id(started),
        kind=choose_kind(kind, history, started),
        started_at=started.isoformat(),
        ended_at=datetime.now(UTC).isoformat(),
        sha256=sha256_file(path),
        size=path.stat().st_size,
        rows=rows,
        companies=companies,
        server_version=server,
        client_version=client,
        previous_id=history[0].id if history else None,
        tables=list(tables or []),
    )
    return manifest, path


def take_backup(
    settings: Settings,
    *,
    kind: str = "auto",
    progress: Progress | None = None,
    meters: Meters = NO_METERS,
    stores: list[RegionStore] | None = None,
) -> BackupRun:
    """One backup to every region. ``stores``: the regions of the command this run is part of
    (`backup.validate`'s re-take), whose bounds it shares; default: fresh ones."""
    say = progress or (lambda _m: None)
    stores = stores if stores is not None else regions_from_settings(settings)
    dsn = service_dsn(settings)
    spool = Spool(settings.backup_spool_dir)
    with recorded_run(settings, "backup.run") as record:
        began = time.monotonic()
        caught_up = _catch_up(stores, spool, say)
        history = _history(stores)
        with tempfile.TemporaryDirectory(prefix="backup-") as tmp:
            say("dumping ...")
            manifest, path = dump_with_manifest(settings, dsn, Path(tmp), kind, history)
            say(f"backup {manifest.id} ({manifest.kind}): {manifest.size} bytes")
            outcomes = []
            for store in stores:
                try:
                    upload_backup(store, manifest, path, meters)
                    outcomes.append(RegionOutcome(store.name, True))
                    say(f"region {store.name}: uploaded")
                except ResilienceError as exc:
                    outcomes.append(RegionOutcome(store.name, False, str(exc)))
                    say(f"region {store.name}: FAILED ({exc})")
            missed = [o.region for o in outcomes if not o.ok]
            if missed:
                spool.keep(manifest, path, missed)
        for outcome in outcomes:
            outcome.caught_up = caught_up.get(outcome.region, [])
        warnings = sanity_warnings(manifest, history[0] if history else None, settings)
        run = BackupRun(manifest, outcomes, warnings, time.monotonic() - began)
        record.journal.measurements.update(run.to_dict())
        _alert(settings, run)
        if all(not o.ok for o in outcomes):
            error = StorageError(
                f"backup {manifest.id} reached no region (kept in {settings.backup_spool_dir} "
                "to catch up): " + "; ".join(f"{o.region}: {o.error}" for o in outcomes)
            )
            error.details = _details(run)
            raise error
        if missed:
            raise PartialFailure(
                f"backup {manifest.id} is in {len(outcomes) - len(missed)} region(s); "
                f"missed {', '.join(missed)} (kept in {settings.backup_spool_dir} to catch up)",
                6,
                _details(run),
            )
    run.record = record.path
    return run


def _catch_up(stores: list[RegionStore], spool: Spool, say: Progress) -> dict[str, list[str]]:
    """Upload what a region missed earlier; what still fails stays in the spool."""
    done: dict[str, list[str]] = {}
    by_name = {s.name: s for s in stores}
    for manifest, path, regions in spool.pending():
        for region in regions:
            store = by_name.get(region)
            if store is None:
                continue
            try:
                upload_backup(store, manifest, path)
            except ResilienceError as exc:
                say(f"region {region}: still cannot catch up {manifest.id} ({exc})")
                continue
            spool.done(manifest.id, region)
            done.setdefault(region, []).append(manifest.id)
            say(f"region {region}: caught up {manifest.id}")
    return done


def _alert(settings: Settings, run: BackupRun) -> None:
    problems = [f"region {o.region} missed the backup: {o.error}" for o in run.regions if not o.ok]
    problems += run.warnings
    if not problems:
        return
    text = f"backup {run.manifest.id}: " + "; ".join(problems)
    notify(settings, text, level="warning", tags={"backup": run.manifest.id})


def _details(run: BackupRun) -> dict[str, Any]:
    """The error's facts, without `record`: the error's own is set when the record is written
    (a `None` here would hide it in the JSON)."""
    details = run.to_dict()
    del details["record"]
    return details
