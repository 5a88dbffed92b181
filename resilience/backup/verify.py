"""Proving a backup restores: download, check, and restore into a scratch database.

The dump is downloaded and its SHA-256 and size compared with the manifest; `pg_restore --list`
must show the auth tables and their data; then it is restored into a scratch database (created
with `RESILIENCE_RESTORE_DSN`, a role that may create databases, and always dropped again) and
its row counts and every company's digest are compared with the manifest.

The company digests compared are those of the rows as stored, recomputed by the server in one
statement (:mod:`resilience.authstate.pgdigest`): the restored rows are checked byte for byte
and no key is decoded. A manifest written before those were recorded is verified by the
canonical set digests, every key decoded (:func:`company_digests`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from resilience.authstate.pgconn import connect, database_errors
from resilience.authstate.pgdigest import stored_digests
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.backup import dump as pgdump
from resilience.backup.manifest import BackupManifest, dump_key
from resilience.config import Settings
from resilience.errors import ConfigError, DataError, VerificationError
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.s3 import RegionStore


def restore_dsn(settings: Settings) -> str:
    if settings.restore_dsn is None:
        raise ConfigError(
            "set RESILIENCE_RESTORE_DSN: a role that may create databases, where backups are "
            "restored into a scratch database to be verified"
        )
    return settings.restore_dsn.get_secret_value()


def with_database(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**{k: str(v) for k, v in params.items()})


@contextlib.contextmanager
def scratch_database(admin_dsn: str, timeout: float) -> Iterator[str]:
    """A fresh, empty database (its DSN), dropped afterwards whatever happens."""
    name = f"resilience_scratch_{secrets.token_hex(4)}"
    with (
        connect(admin_dsn, timeout=timeout, autocommit=True) as conn,
        database_errors("creating a scratch database"),
    ):
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(admin_dsn, name)
    finally:
        with (
            connect(admin_dsn, timeout=timeout, autocommit=True) as conn,
            database_errors("dropping the scratch database"),
        ):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def download_checked(
    store: RegionStore, manifest: BackupManifest, work: Path, meters: Meters = NO_METERS
) -> Path:
    """The dump, downloaded and checked against the manifest (VerificationError otherwise)."""
    path = work / f"{manifest.id}.pgc"
    digest = store.download(dump_key(manifest.id), path, meters=meters)
    size = path.stat().st_size
    if size != manifest.size:
        raise VerificationError(
            f"backup {manifest.id} in {store.name}: {size} bytes, the manifest says "
            f"{manifest.size} (truncated?)"
        )
    if digest != manifest.sha256:
        raise VerificationError(
            f"backup {manifest.id} in {store.name}: SHA-256 differs from the manifest (corrupt)"
        )
    return path


@dataclass
class Verified:
    backup_id: str
    rows: dict[str, int]
    companies: int
    keys: int
    mismatches: list[str] = field(default_factory=list)
    restore_s: float = 0.0
    compared: str = "stored rows"  # or "decoded keys" (a manifest without stored digests)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "rows": self.rows,
            "companies": self.companies,
            "keys": self.keys,
            "mismatches": self.mismatches,
            "restore_s": round(self.restore_s, 3),
            "compared": self.compared,
        }


def _digests(job: tuple[str, list[str]]) -> dict[str, tuple[int, str]]:
    """(key count, set digest) of each company, read through a connection of its own."""
    dsn, companies = job
    found = {}
    with connect(dsn) as conn:
        store = PgAuthStore(conn)
        for company in companies:
            digest = view_of(company, store.load_creds(company), store.records(company)).digest()
            found[company] = (digest.key_count, digest.digest)
    return found


def company_digests(dsn: str, companies: list[str]) -> dict[str, tuple[int, str]]:
    """Every company's digest; decoding every key is CPU work, so the companies are shared
    among one process per core (forked with no connection open)."""
    workers = min(os.cpu_count() or 1, 4, len(companies))
    if workers <= 1:
        return _digests((dsn, companies))
    chunks = [companies[i::workers] for i in range(workers)]
    found: dict[str, tuple[int, str]] = {}
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for part in pool.map(_digests, [(dsn, chunk) for chunk in chunks]):
            found.update(part)
    return found


def by_stored_rows(manifest: BackupManifest) -> bool:
    """Whether the manifest records every company's stored rows' digest (backups taken since
    they are recorded), so a restore is compared by those."""
    return all(c.stored_digest is not None for c in manifest.companies.values())


def stored_rows_digests(dsn: str, companies: list[str]) -> dict[str, str]:
    """Every company's stored rows' digest; the server does the work, so the companies are
    shared among one connection per core."""

    def digests(chunk: list[str] | None) -> dict[str, str]:
        with connect(dsn) as conn:
            return stored_digests(conn, chunk)

    workers = min(os.cpu_count() or 1, 4, len(companies))
    if workers <= 1:
        return digests(None)
    found: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(digests, [companies[i::workers] for i in range(workers)]):
            found.update(part)
    return found


def compare(dsn: str, manifest: BackupManifest) -> Verified:
    """Row counts and every company's digest of the database at `dsn` against the manifest:
    the stored rows' digests when the manifest has them, else the canonical set digests."""
    stored = by_stored_rows(manifest)
    with connect(dsn) as conn:
        store = PgAuthStore(conn)
        rows = store.row_counts()
        companies = store.companies()
    expected: dict[str, tuple[int, str]]  # company: (key count, digest)
    found: dict[str, tuple[int, str]]
    if stored:
        expected = {c: (d.key_count, d.stored_digest or "") for c, d in manifest.companies.items()}
        found = {}
        for company, digest in stored_rows_digests(dsn, companies).items():
            # equal stored rows hold equal keys: a company that matches has the manifest's count
            count, recorded = expected.get(company, (0, ""))
            found[company] = (count if digest == recorded else 0, digest)
    else:
        expected = {c: (d.key_count, d.digest) for c, d in manifest.companies.items()}
        found = company_digests(dsn, companies)
    mismatches = [
        f"{table}: {rows.get(table)} rows, the manifest says {count}"
        for table, count in manifest.rows.items()
        if rows.get(table) != count
    ]
    for company, (_, digest) in expected.items():
        got = found.get(company)
        if got is None:
            mismatches.append(f"company {company}: missing")
        elif got[1] != digest:
            mismatches.append(f"company {company}: digest differs from the manifest")
    mismatches += [f"company {c}: not in the manifest" for c in found if c not in expected]
    keys = sum(count for count, _ in found.values())
    compared = "stored rows" if stored else "decoded keys"
    return Verified(manifest.id, rows, len(found), keys, mismatches, compared=compared)


def verify_backup(settings: Settings, store: RegionStore, manifest: BackupManifest) -> Verified:
    """Download, check, restore into a scratch database and compare (VerificationError or
    DataError when the backup is not what its manifest says)."""
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        path = download_checked(store, manifest, Path(tmp))
        pgdump.check_archive(path, manifest.tables or pgdump.AUTH_TABLES)
        began = time.monotonic()
        with scratch_database(restore_dsn(settings), settings.db_connect_timeout) as scratch:
            try:
                pgdump.restore(scratch, path)
            except Exception as exc:
                raise DataError(f"backup {manifest.id} does not restore: {exc}") from None
            result = compare(scratch, manifest)
        result.restore_s = time.monotonic() - began
    if result.mismatches:
        raise VerificationError(
            f"backup {manifest.id} in {store.name} restores to something else than its "
            "manifest: " + "; ".join(result.mismatches[:5])
        )
    return result
