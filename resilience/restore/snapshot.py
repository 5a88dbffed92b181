"""Scheduled exports kept on disk, for when PostgreSQL is already unreachable.

A snapshot is ``<snapshots_dir>/<UTC %Y%m%dT%H%M%S%fZ>/`` holding one exported company directory
per company (exactly what :func:`~resilience.restore.export.export_company` writes, manifest
included) and a ``snapshot.json`` (time taken, source, key count and digest per company). It is
built in ``<snapshots_dir>/.staging-<random>/`` and renamed into place, so a listed snapshot is
always complete; only the newest ``keep`` are kept.

:func:`install_snapshot` checks a snapshot's files against its manifest digest before copying
them into the auth root with the same staging and swap as an export.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from resilience.authstate.filestore import DIR_MODE, make_durable
from resilience.authstate.naming import MANIFEST_FILE, company_dir_name, safe_path
from resilience.authstate.pgstore import PgAuthStore, read_transaction
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError, VerificationError
from resilience.infra.redact import redact_dsn
from resilience.restore.export import ExportResult, export_company
from resilience.restore.importer import read_directory
from resilience.restore.staging import stage_and_swap, stage_new, sweep_stale, write_private

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.json"
SNAPSHOT_FORMAT = 1
STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_STAMP_RE = re.compile(r"\d{8}T\d{12}Z")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


class CompanyEntry(TypedDict):
    key_count: int
    digest: str


@dataclass(frozen=True)
class Snapshot:
    """One complete snapshot on disk."""

    path: Path
    taken_at: datetime
    companies: dict[str, CompanyEntry]

    def age_s(self, now: datetime | None = None) -> float:
        """Seconds since the snapshot was taken: the data-loss window of a fallback to it."""
        return ((now or datetime.now(UTC)) - self.taken_at).total_seconds()

    def company_dir(self, company_id: str) -> Path:
        return safe_path(self.path, company_dir_name(company_id))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "taken_at": self.taken_at.isoformat(),
            "companies": {c: dict(e) for c, e in self.companies.items()},
        }


def _load(path: Path) -> Snapshot:
    """The snapshot in directory ``path``; :class:`DataError` if its ``snapshot.json`` is bad."""
    file = path / SNAPSHOT_FILE
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"snapshot {path.name}: cannot read {SNAPSHOT_FILE} ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
        raise DataError(f"snapshot {path.name}: {SNAPSHOT_FILE} is not format {SNAPSHOT_FORMAT}")
    try:
        taken_at = datetime.fromisoformat(str(data.get("taken_at")))
    except ValueError:
        raise DataError(f"snapshot {path.name}: taken_at is not an ISO 8601 time") from None
    if taken_at.tzinfo is None:
        taken_at = taken_at.replace(tzinfo=UTC)
    raw = data.get("companies")
    if not isinstance(raw, dict):
        raise DataError(f"snapshot {path.name}: companies is not an object")
    companies: dict[str, CompanyEntry] = {}
    for company_id, entry in raw.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("key_count"), int)
            or not isinstance(entry.get("digest"), str)
            or not _DIGEST_RE.fullmatch(entry["digest"])
        ):
            raise DataError(f"snapshot {path.name}: entry of company {company_id[:50]!r} is bad")
        validate_company_id(company_id)
        companies[company_id] = CompanyEntry(key_count=entry["key_count"], digest=entry["digest"])
    return Snapshot(path, taken_at, companies)


def list_snapshots(snapshots_dir: Path) -> list[Snapshot]:
    """Complete snapshots, newest first. Staging directories, other names and snapshots whose
    ``snapshot.json`` is unreadable are ignored (the latter logged)."""
    snapshots_dir = Path(snapshots_dir)
    if not snapshots_dir.is_dir():
        return []
    found: list[Snapshot] = []
    with os.scandir(snapshots_dir) as entries:
        for entry in entries:
            if not _STAMP_RE.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                found.append(_load(Path(entry.path)))
            except (DataError, InputError) as exc:
                log.warning("ignoring snapshot %s: %s", entry.name, exc)
    found.sort(key=lambda s: (s.taken_at, s.path.name), reverse=True)
    return found


def newest_snapshot(snapshots_dir: Path, company_id: str) -> Snapshot | None:
    """The newest complete snapshot holding ``company_id``, or None."""
    validate_company_id(company_id)
    return next((s for s in list_snapshots(snapshots_dir) if company_id in s.companies), None)


def prune_snapshots(snapshots_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` snapshots; return the paths deleted."""
    if keep < 1:
        raise InputError(f"keep must be at least 1 (got {keep})")
    removed = []
    for old in list_snapshots(snapshots_dir)[keep:]:
        shutil.rmtree(old.path)
        removed.append(old.path)
    return removed


def take_snapshot(
    store: PgAuthStore,
    snapshots_dir: Path,
    companies: list[str] | None,
    *,
    keep: int,
    source: str,
) -> Snapshot:
    """Export ``companies`` (all in the database when None) into a new snapshot, then prune to
    the newest ``keep``.

    The snapshot is complete or absent: any failure (one company's export included) removes the
    staging directory and prunes nothing. An empty database is refused rather than snapshotted,
    since keeping an empty snapshot would prune the good ones.
    """
    if keep < 1:
        raise InputError(f"keep must be at least 1 (got {keep})")
    snapshots_dir = Path(snapshots_dir)
    if companies is None:
        with read_transaction(store.conn):
            companies = store.companies()
        if not companies:
            raise DataError(
                "no company in the database: refusing to take an empty snapshot "
                "(it would push good ones out)"
            )
    for company_id in companies:
        validate_company_id(company_id)
    if not companies:
        raise InputError("no company given to snapshot")
    taken_at = datetime.now(UTC)
    results: list[ExportResult] = []

    def fill(staging: Path) -> None:
        for company_id in companies:
            results.append(export_company(store, staging, company_id, source=source))
        meta = {
            "format": SNAPSHOT_FORMAT,
            "taken_at": taken_at.isoformat(),
            "source": redact_dsn(source),
            "companies": {
                r.company_id: {
                    "key_count": r.key_count,
                    "digest": r.digest,
                    "counts_by_type": r.counts_by_type,
                    "collisions": len(r.collisions),
                    "bytes": r.bytes_written,
                }
                for r in results
            },
        }
        write_private(staging / SNAPSHOT_FILE, (json.dumps(meta, indent=1) + "\n").encode("ascii"))

    final, _ = stage_new(snapshots_dir, taken_at.strftime(STAMP_FORMAT), fill, what="snapshot")
    prune_snapshots(snapshots_dir, keep)
    sweep_stale(snapshots_dir)
    return Snapshot(
        final,
        taken_at,
        {r.company_id: CompanyEntry(key_count=r.key_count, digest=r.digest) for r in results},
    )


def install_snapshot(snapshot: Snapshot, company_id: str, root: Path) -> ExportResult:
    """Verify the snapshot's copy of ``company_id`` and install it as ``root/company_<id>``.

    Every file is read once, checked against the manifest digest (and the digest recorded in
    ``snapshot.json``), and the very bytes checked are written, through the export's staging and
    swap. A corrupt snapshot raises :class:`VerificationError` and changes nothing.
    """
    started = time.monotonic()
    validate_company_id(company_id)
    name = snapshot.path.name
    entry = snapshot.companies.get(company_id)
    if entry is None:
        raise InputError(f"snapshot {name} holds no company {company_id}")
    source = snapshot.company_dir(company_id)
    try:
        state = read_directory(source, company_id)
    except DataError as exc:
        raise VerificationError(
            f"snapshot {name} of company {company_id} is corrupt: {exc}"
        ) from None
    manifest = state.manifest
    if manifest is None:
        raise VerificationError(
            f"snapshot {name} of company {company_id} is corrupt: no {MANIFEST_FILE}"
        )
    digest = state.digest()
    if digest.digest != manifest.digest or digest.digest != entry["digest"]:
        raise VerificationError(
            f"snapshot {name} of company {company_id} is corrupt: digest mismatch"
        )

    def fill(staging: Path) -> int:
        target = staging / company_dir_name(company_id)
        os.mkdir(target, DIR_MODE)
        written = 0
        for file_name, payload in state.raw.items():
            written += write_private(safe_path(target, file_name), payload, fsync=False)
        make_durable(target, state.raw)  # once, before the staged directory is swapped in
        return written

    directory, size = stage_and_swap(Path(root), company_id, fill)
    return ExportResult(
        company_id=company_id,
        directory=directory,
        key_count=digest.key_count,
        counts_by_type=manifest.counts_by_type,
        digest=digest.digest,
        collisions=manifest.collisions,
        files_written=len(state.raw),
        bytes_written=size,
        duration_s=time.monotonic() - started,
    )
