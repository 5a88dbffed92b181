"""Scheduled exports kept on disk, for when PostgreSQL is already unreachable.

A snapshot is ``<snapshots_dir>/<UTC %Y%m%dT%H%M%S%fZ>/`` holding one exported company directory
per company (exactly what :func:`~resilience.files.export.export_company` writes, manifest
included) and a ``snapshot.json`` (time taken, source, key count and digest per company, and the
companies that failed). It is built in ``<snapshots_dir>/.staging-<random>/`` and renamed into
place, so a listed snapshot is always complete; only the newest ``keep`` are kept.

One bad tenant never blocks the others: a company whose export fails (a row that does not
decode, keys without creds, ...) is left out of the snapshot and listed under ``"failed"`` with
its error class and message, and every other company is snapshotted. A snapshot holds exactly the
companies under ``"companies"``, so :func:`newest_snapshot` of a company that failed lately is an
older snapshot that holds it, and pruning keeps that one (see :func:`prune_snapshots`). When every
company fails nothing is written (an empty snapshot would push good ones out). Snapshots written
before ``"failed"`` existed have none and load as before (same format number).

Installing a snapshot's copy (:mod:`resilience.files.install`) checks its files against its
manifest digest before copying them into the auth root with the same staging and swap as an
export; a standby copy put beside the service's directory ahead of time (``restore.snapshot`` does
it for the service's company): an install then renames it into place, creating no file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from resilience.authstate.filestore import MakeDurable, SyncGroup, make_durable
from resilience.authstate.naming import company_dir_name, safe_path
from resilience.authstate.pgstore import PgAuthStore
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError, ResilienceError
from resilience.files.batch import CompanyFailure, companies_to_export, shown_company
from resilience.files.export import ExportResult, export_company
from resilience.files.parallel import per_company
from resilience.files.staging import stage_new, sweep_stale, write_private
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.redact import redact_dsn

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.json"
SNAPSHOT_FORMAT = 1
STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_STAMP_RE = re.compile(r"\d{8}T\d{12}Z")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


class CompanyEntry(TypedDict):
    key_count: int
    digest: str


class FailedEntry(TypedDict):
    #: Class name of the error, e.g. ``DataError``.
    error: str
    #: The error's message, on one line.
    message: str


#: At most this many failures are spelt out in the error of a snapshot where every company failed.
_LISTED_FAILURES = 5


@dataclass(frozen=True)
class Snapshot:
    """One complete snapshot on disk: ``companies`` are the ones it holds, ``failed`` the ones
    that were asked for but could not be exported (not in the snapshot)."""

    path: Path
    taken_at: datetime
    companies: dict[str, CompanyEntry]
    failed: dict[str, FailedEntry] = field(default_factory=dict)

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
            "failed": {c: dict(e) for c, e in self.failed.items()},
        }


def load_snapshot(path: Path) -> Snapshot:
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
    return Snapshot(path, taken_at, companies, _load_failed(path, data.get("failed", {})))


def _load_failed(path: Path, raw: object) -> dict[str, FailedEntry]:
    """The ``"failed"`` object of a ``snapshot.json`` (absent in older snapshots: empty). Its
    keys are not checked as company ids: a company whose id the database holds but which is not
    valid fails for that very reason, and is only named, never used as a path."""
    if not isinstance(raw, dict):
        raise DataError(f"snapshot {path.name}: failed is not an object")
    failed: dict[str, FailedEntry] = {}
    for company_id, entry in raw.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("error"), str)
            or not isinstance(entry.get("message"), str)
        ):
            raise DataError(f"snapshot {path.name}: failure of company {company_id[:50]!r} is bad")
        failed[company_id] = FailedEntry(error=entry["error"], message=entry["message"])
    return failed


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
                found.append(load_snapshot(Path(entry.path)))
            except (DataError, InputError) as exc:
                log.warning("ignoring snapshot %s: %s", entry.name, exc)
    found.sort(key=lambda s: (s.taken_at, s.path.name), reverse=True)
    return found


def newest_snapshot(snapshots_dir: Path, company_id: str) -> Snapshot | None:
    """The newest complete snapshot that holds ``company_id``, or None. A snapshot in which the
    company failed does not hold it: an older one that does is returned instead."""
    validate_company_id(company_id)
    return next((s for s in list_snapshots(snapshots_dir) if company_id in s.companies), None)


def prune_snapshots(snapshots_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` snapshots; return the paths deleted.

    One exception: a company that failed in a kept snapshot and is held by none of them keeps
    the newest older snapshot that holds it, so a tenant that stays bad for ``keep`` runs does
    not lose its last fallback (at most one extra snapshot per such company; it goes once a
    newer snapshot holds the company again)."""
    if keep < 1:
        raise InputError(f"keep must be at least 1 (got {keep})")
    snapshots = list_snapshots(snapshots_dir)
    kept = snapshots[:keep]
    held = {c for s in kept for c in s.companies}
    missing = {c for s in kept for c in s.failed} - held
    removed = []
    for old in snapshots[keep:]:
        fallback_of = missing & old.companies.keys()
        if fallback_of:
            missing -= fallback_of
            log.info(
                "keeping snapshot %s: newest one holding %s", old.path.name, sorted(fallback_of)
            )
            continue
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
    workers: int = 1,
    stores: Callable[[], AbstractContextManager[PgAuthStore]] | None = None,
    meters: Meters = NO_METERS,
) -> Snapshot:
    """Export ``companies`` (all in the database when None) into a new snapshot, then prune to
    the newest ``keep`` (see :func:`prune_snapshots`). With ``stores`` (a connection per
    worker) up to ``workers`` companies are exported at the same time.

    A company whose export raises a :class:`~resilience.errors.ResilienceError` is left out and
    listed in the snapshot's ``failed`` (``snapshot.json`` and the returned :class:`Snapshot`);
    every other company is snapshotted. When every company fails no snapshot is written and
    nothing is pruned: the error names them and is of their error class when they all share one,
    else :class:`DataError`. Any other failure (including a company named in ``companies`` that
    is not in the database, an :class:`InputError`) removes the staging directory and prunes
    nothing. An empty database is refused rather than snapshotted, since keeping an empty
    snapshot would prune the good ones.
    """
    if keep < 1:
        raise InputError(f"keep must be at least 1 (got {keep})")
    snapshots_dir = Path(snapshots_dir)
    wanted = companies_to_export(store, companies)
    if companies is None and not wanted:
        raise DataError(
            "no company in the database: refusing to take an empty snapshot "
            "(it would push good ones out)"
        )
    if not wanted:
        raise InputError("no company given to snapshot")
    taken_at = datetime.now(UTC)
    results: list[ExportResult] = []
    failures: list[CompanyFailure] = []

    def fill(staging: Path) -> None:
        parallel = workers if stores is not None else 1
        durable: MakeDurable = SyncGroup() if parallel > 1 else make_durable

        def one(company_id: str) -> ExportResult:
            with stores() if stores is not None else nullcontext(store) as own:
                return export_company(own, staging, company_id, source=source, durable=durable)

        meter = meters.start("snapshot", len(wanted), "companies")
        try:
            outcomes = per_company(wanted, one, workers=parallel, done=lambda *_: meter.advance())
        finally:
            meter.close()
        _sort_outcomes(staging, outcomes, results, failures)
        write_private(staging / SNAPSHOT_FILE, _snapshot_json(taken_at, source, results, failures))

    final, _ = stage_new(snapshots_dir, taken_at.strftime(STAMP_FORMAT), fill, what="snapshot")
    prune_snapshots(snapshots_dir, keep)
    sweep_stale(snapshots_dir)
    return Snapshot(
        final,
        taken_at,
        {r.company_id: CompanyEntry(key_count=r.key_count, digest=r.digest) for r in results},
        {f.company_id: FailedEntry(error=f.error, message=f.message) for f in failures},
    )


def _sort_outcomes(
    staging: Path,
    outcomes: list[tuple[str, ExportResult | ResilienceError]],
    results: list[ExportResult],
    failures: list[CompanyFailure],
) -> None:
    """Each company's export into ``results`` or, with its files discarded, ``failures``;
    every company failing is an error (nothing to keep)."""
    error_classes: set[type[ResilienceError]] = set()
    for company_id, outcome in outcomes:
        if isinstance(outcome, ResilienceError):
            failures.append(CompanyFailure.of(company_id, outcome))
            error_classes.add(type(outcome))
            _discard(staging, company_id)
            log.warning(
                "snapshot: company %s left out (%s): %s",
                shown_company(company_id),
                failures[-1].error,
                failures[-1].message,
            )
        else:
            results.append(outcome)
    if not results:
        raise _nothing_to_keep(failures, error_classes)


def _snapshot_json(
    taken_at: datetime, source: str, results: list[ExportResult], failures: list[CompanyFailure]
) -> bytes:
    """``snapshot.json``: when, from where, each company kept and each left out."""
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
        "failed": {f.company_id: {"error": f.error, "message": f.message} for f in failures},
    }
    return (json.dumps(meta, indent=1) + "\n").encode("ascii")


def _discard(staging: Path, company_id: str) -> None:
    """Remove what a failed export may have left of ``company_id`` in the snapshot's staging
    directory (normally nothing: the export swaps its directory in only once complete)."""
    try:
        leftover = safe_path(staging, company_dir_name(company_id))
    except InputError:
        return
    if leftover.is_dir() and not leftover.is_symlink():
        shutil.rmtree(leftover, ignore_errors=True)


def _nothing_to_keep(
    failures: list[CompanyFailure], error_classes: set[type[ResilienceError]]
) -> ResilienceError:
    """The error of a snapshot in which every company failed: it names each of them."""
    listed = "; ".join(
        f"{shown_company(f.company_id)} ({f.error}: {f.message})"
        for f in failures[:_LISTED_FAILURES]
    )
    if len(failures) > _LISTED_FAILURES:
        listed += f"; and {len(failures) - _LISTED_FAILURES} more"
    error_class = error_classes.pop() if len(error_classes) == 1 else DataError
    return error_class(
        f"no snapshot taken, every company failed ({len(failures)}): {listed}; "
        "nothing was written or pruned"
    )
