"""``bench backup``: a backup and a verified restore, each beside its raw limit, in one run.

An auth database of about ``size_mb`` (many companies from the dataset generator) is seeded,
then ``repeat`` times each, side by side, the order of each pair alternating:

- **backup**: :func:`~resilience.backup.take.take_backup` to both regions (snapshot, pg_dump,
  row counts and every company's digest, SHA-256, uploads with SSE, manifest);
- **raw backup**: ``pg_dump -Fc`` of the same tables plus one ``put_object`` per region;
- **restore**: :func:`~resilience.backup.restore.restore_backup` into a scratch database with
  verification (download, SHA-256, pg_restore, counts and every company's digest: the server's
  digest of the stored rows, as ``restore_compared`` says);
- **raw restore**: download with ``get_object`` plus ``pg_restore`` into a fresh database.

Ratios are medians over medians; the target is 1.3 or better for each. The bench's companies,
buckets' objects and scratch databases are removed at the end.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.backup import dump as pgdump
from resilience.backup.manifest import dump_key
from resilience.backup.restore import restore_backup
from resilience.backup.take import take_backup
from resilience.backup.verify import scratch_database
from resilience.config import Settings
from resilience.drill.bench import measure
from resilience.infra.s3 import RegionStore, regions_from_settings

TARGET_RATIO = 1.3
Progress = Callable[[str], None]


def seed(admin_dsn: str, size_mb: float, say: Progress) -> tuple[list[str], int]:
    """Companies of 1,000 keys each until the auth tables hold about `size_mb`."""
    made: list[str] = []
    with connect(admin_dsn) as conn:
        store = PgAuthStore(conn)
        size = 0
        while size < size_mb * 1024 * 1024:
            company = f"benchbk_{secrets.token_hex(4)}"
            data = generate(company, 1000)
            pgraw.insert_raw(store.conn, company, data.creds, data.rows())
            made.append(company)
            row = conn.execute(
                "SELECT pg_total_relation_size('whatsapp_keys') + "
                "pg_total_relation_size('whatsapp_auth')"
            ).fetchone()
            size = int(row[0]) if row else 0
        say(f"seeded {len(made)} companies, {size / 1024 / 1024:.1f} MB")
    return made, size


def _raw_backup(dsn: str, stores: list[RegionStore], work: Path, n: int) -> None:
    path = work / f"raw-{n}.pgc"
    pgdump.dump(dsn, path)
    body = path.read_bytes()
    for store in stores:
        store.client.put_object(Bucket=store.bucket, Key=f"raw/{n}.pgc", Body=body)
    path.unlink()


def _raw_restore(admin_dsn: str, store: RegionStore, key: str, work: Path, timeout: float) -> None:
    path = work / "raw-restore.pgc"
    with open(path, "wb") as handle:
        handle.write(store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    with scratch_database(admin_dsn, timeout) as scratch:
        pgdump.restore(scratch, path)
    path.unlink()


def bench_backup(
    settings: Settings,
    admin_dsn: str,
    *,
    size_mb: float = 50.0,
    repeat: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    stores = regions_from_settings(settings)
    for store in stores:
        store.ensure_bucket()
    companies, size = seed(admin_dsn, size_mb, say)
    times: dict[str, list[float]] = {"backup": [], "raw_backup": [], "restore": [], "raw": []}
    dsn = settings.service_dsn.get_secret_value() if settings.service_dsn else admin_dsn
    try:
        with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
            work = Path(tmp)
            last_id = ""
            compared = ""
            for n in range(repeat):
                pair = [("backup", None), ("raw_backup", None)]
                for name, _ in pair if n % 2 == 0 else reversed(pair):
                    began = time.monotonic()
                    if name == "backup":
                        last_id = take_backup(settings).manifest.id
                    else:
                        _raw_backup(dsn, stores, work, n)
                    times[name].append(time.monotonic() - began)
                    say(f"{name} {n + 1}/{repeat}: {times[name][-1]:.2f} s")
                for name in ("restore", "raw") if n % 2 == 0 else ("raw", "restore"):
                    began = time.monotonic()
                    if name == "restore":
                        done = restore_backup(settings, backup_id=last_id, region=stores[-1].name)
                        compared = str(done.verified.get("compared", ""))
                    else:
                        _raw_restore(
                            admin_dsn,
                            stores[-1],
                            dump_key(last_id),
                            work,
                            settings.db_connect_timeout,
                        )
                    times[name].append(time.monotonic() - began)
                    say(f"{name} restore {n + 1}/{repeat}: {times[name][-1]:.2f} s")
    finally:
        with connect(admin_dsn) as conn:
            for company in companies:
                pgraw.delete_company(conn, company)
    backup_ratio = measure.ratio(times["backup"], times["raw_backup"])
    restore_ratio = measure.ratio(times["restore"], times["raw"])
    return {
        "bench": "backup",
        "database_bytes": size,
        "companies": len(companies),
        "repeat": repeat,
        "backup": measure.stats(times["backup"]),
        "raw_backup": measure.stats(times["raw_backup"]),
        "backup_ratio": backup_ratio,
        "restore_verified": measure.stats(times["restore"]),
        "raw_restore": measure.stats(times["raw"]),
        "restore_ratio": restore_ratio,
        "restore_compared": compared,
        "target_ratio": TARGET_RATIO,
        "met": backup_ratio is not None
        and restore_ratio is not None
        and backup_ratio <= TARGET_RATIO
        and restore_ratio <= TARGET_RATIO,
        "raw_definition": (
            "raw backup: pg_dump -Fc of the auth tables and one put_object per region; raw "
            "restore: get_object of the dump and pg_restore into a fresh database"
        ),
    }
