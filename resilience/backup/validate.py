"""`backup.validate` (daily, from cron): prove the newest backup of each kind in every region.

Each is downloaded and checked (SHA-256, size, `pg_restore --list`), restored into a scratch
database and compared with its manifest. One JSON line per check is appended to the validation
log. Every check ends in one of four states:

* ``valid``;
* ``invalid``: the region answered and the backup is bad (corrupt, truncated, does not restore,
  restores to something else than its manifest, its dump or manifest missing, or no backup at
  all): a backup is re-taken at once and the run exits 5 (VerificationError);
* ``unreachable``: the region could not be read (refused, hung past its bounds, or answered an
  S3 error that is not about the backup): nothing is re-taken for it (a new backup would not
  reach it either: `backup.run` spools and catches up), the run exits 6;
* ``unchecked``: the check itself could not run (the scratch database, a setting): exits with
  that error's code, nothing re-taken.

The other region is validated whatever one region does. Anything not valid is alerted; a clean
run sends an info event.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from resilience.alerting.channels import notify
from resilience.backup.catalog import list_region
from resilience.backup.manifest import KINDS, BackupManifest
from resilience.backup.take import take_backup
from resilience.backup.verify import verify_backup
from resilience.config import Settings
from resilience.errors import (
    DataError,
    PartialFailure,
    ResilienceError,
    VerificationError,
)
from resilience.infra.s3 import ObjectMissing, RegionStore, StorageError, regions_from_settings
from resilience.runs.record import recorded_run

Progress = Callable[[str], None]
Status = Literal["valid", "invalid", "unreachable", "unchecked"]


@dataclass
class Check:
    region: str
    backup_id: str | None
    kind: str
    status: Status
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    exit_code: int = 0

    @property
    def valid(self) -> bool:
        return self.status == "valid"

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": datetime.now(UTC).isoformat(),
            "region": self.region,
            "backup_id": self.backup_id,
            "kind": self.kind,
            "valid": self.valid,
            "status": self.status,
            "error": self.error,
            **self.detail,
        }


def failed_check(region: str, backup_id: str | None, kind: str, exc: ResilienceError) -> Check:
    """The check of a backup that failed with `exc`: invalid only when the region answered and
    the backup itself is bad."""
    status: Status
    if isinstance(exc, VerificationError | DataError | ObjectMissing):
        status = "invalid"
    elif isinstance(exc, StorageError):
        status = "unreachable"
    else:
        status = "unchecked"
    return Check(region, backup_id, kind, status, error=str(exc), exit_code=exc.exit_code)


@dataclass
class Validation:
    checks: list[Check]
    retaken: str | None = None
    record: Path | None = None

    @property
    def ok(self) -> bool:
        return all(c.valid for c in self.checks)

    @property
    def invalid(self) -> list[Check]:
        return [c for c in self.checks if c.status == "invalid"]

    @property
    def failed(self) -> list[Check]:
        """Checks that could not prove anything (region unreachable, check could not run)."""
        return [c for c in self.checks if c.status in ("unreachable", "unchecked")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.ok,
            "checks": [c.to_dict() for c in self.checks],
            "invalid": [c.region for c in self.invalid],
            "unreachable": sorted({c.region for c in self.checks if c.status == "unreachable"}),
            "retaken": self.retaken,
            "record": str(self.record) if self.record else None,
        }


def _log(path: Path, check: Check) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(json.dumps(check.to_dict(), sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _newest_per_kind(manifests: list[BackupManifest]) -> dict[str, BackupManifest]:
    newest: dict[str, BackupManifest] = {}
    for manifest in manifests:  # newest first
        newest.setdefault(manifest.kind, manifest)
    return newest


def _check_region(settings: Settings, store: RegionStore, say: Progress) -> list[Check]:
    try:
        listing = list_region(store)
    except ResilienceError as exc:
        say(f"region {store.name}: cannot be read: {exc}")
        return [failed_check(store.name, None, "any", exc)]
    checks: list[Check] = []
    newest = _newest_per_kind(listing.manifests)
    if not newest:
        checks.append(Check(store.name, None, "any", "invalid", error="no backup at all"))
    for unreadable in listing.unreadable:
        checks.append(
            Check(store.name, None, "any", "invalid", error=f"unreadable manifest {unreadable}")
        )
    for kind in KINDS:
        manifest = newest.get(kind)
        if manifest is None:
            continue
        say(f"region {store.name}: checking {kind} backup {manifest.id} ...")
        try:
            verified = verify_backup(settings, store, manifest)
            checks.append(Check(store.name, manifest.id, kind, "valid", verified.to_dict()))
        except ResilienceError as exc:
            check = failed_check(store.name, manifest.id, kind, exc)
            checks.append(check)
            say(f"region {store.name}: {manifest.id} {check.status.upper()}: {exc}")
    return checks


def _summary(checks: list[Check]) -> str:
    return "; ".join(
        f"{c.region}{' ' + c.backup_id if c.backup_id else ''} {c.status}: {c.error}"
        for c in checks[:5]
    )


def validate(settings: Settings, *, progress: Progress | None = None) -> Validation:
    say = progress or (lambda _m: None)
    with recorded_run(settings, "backup.validate") as record:
        stores = regions_from_settings(settings)
        checks: list[Check] = []
        for store in stores:
            checks += _check_region(settings, store, say)
        for check in checks:
            _log(settings.backup_validation_log, check)
        result = Validation(checks)
        if result.invalid:
            # of the kind that was bad, so the newest backup of that kind is a good one again
            kinds = [c.kind for c in result.invalid if c.kind in KINDS]
            retake_kind: str = max(kinds, key=KINDS.index) if kinds else "auto"
            say(f"re-taking a {retake_kind} backup now")
            try:
                taken = take_backup(settings, kind=retake_kind, progress=say, stores=stores)
                result.retaken = taken.manifest.id
            except PartialFailure as exc:  # taken; a region that is down gets it from the spool
                result.retaken = ((exc.details or {}).get("backup") or {}).get("id")
                say(f"re-taken, not in every region: {exc}")
            except ResilienceError as exc:
                result.retaken = None
                say(f"re-taking failed: {exc}")
        record.journal.measurements.update(result.to_dict())
        _alert(settings, result)
        if result.invalid:
            bad = result.invalid + result.failed
            error: ResilienceError = VerificationError(
                f"{len(result.invalid)} backup check(s) invalid: "
                + _summary(bad)
                + (f"; re-taken as {result.retaken}" if result.retaken else "; re-take FAILED")
            )
            error.details = _details(result)
            raise error
        if result.failed:
            failed = result.failed
            error = PartialFailure(
                f"{len(failed)} backup check(s) could not be made, nothing re-taken: "
                + _summary(failed),
                failed[0].exit_code,
                _details(result),
            )
            raise error
    result.record = record.path
    return result


def _alert(settings: Settings, result: Validation) -> None:
    if result.ok:
        text = f"backup validation: {len(result.checks)} backup(s) valid"
        notify(settings, text, level="info", telegram=False)
        return
    bad = [c for c in result.checks if not c.valid]
    text = "backup validation FAILED: " + _summary(bad)
    if result.retaken:
        text += f"; re-taken as {result.retaken}"
    notify(settings, text, level="error")


def _details(result: Validation) -> dict[str, Any]:
    """The error's facts, without `record`: the error's own is set when the record is written
    (a `None` here would hide it in the JSON)."""
    details = result.to_dict()
    del details["record"]
    return details
