"""`backup.validate` (daily, from cron): prove the newest backup of each kind in every region.

Each is downloaded and checked (SHA-256, size, `pg_restore --list`), restored into a scratch
database and compared with its manifest. One JSON line per backup checked is appended to the
validation log. A backup that is corrupt, truncated or missing is re-taken at once and alerted;
the run still says it found something invalid (VerificationError: exit 5). A clean run sends an
info event.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.alerting.channels import notify
from resilience.backup.catalog import list_region
from resilience.backup.manifest import KINDS, BackupManifest
from resilience.backup.take import take_backup
from resilience.backup.verify import verify_backup
from resilience.config import Settings
from resilience.errors import ResilienceError, VerificationError
from resilience.infra.s3 import regions_from_settings
from resilience.runs.record import recorded_run

Progress = Callable[[str], None]


@dataclass
class Check:
    region: str
    backup_id: str | None
    kind: str
    valid: bool
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": datetime.now(UTC).isoformat(),
            "region": self.region,
            "backup_id": self.backup_id,
            "kind": self.kind,
            "valid": self.valid,
            "error": self.error,
            **self.detail,
        }


@dataclass
class Validation:
    checks: list[Check]
    retaken: str | None = None
    record: Path | None = None

    @property
    def ok(self) -> bool:
        return all(c.valid for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.ok,
            "checks": [c.to_dict() for c in self.checks],
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


def validate(settings: Settings, *, progress: Progress | None = None) -> Validation:
    say = progress or (lambda _m: None)
    with recorded_run(settings, "backup.validate") as record:
        checks: list[Check] = []
        for store in regions_from_settings(settings):
            try:
                listing = list_region(store)
            except ResilienceError as exc:
                checks.append(Check(store.name, None, "any", False, error=str(exc)))
                continue
            newest = _newest_per_kind(listing.manifests)
            if not newest:
                checks.append(Check(store.name, None, "any", False, error="no backup at all"))
            for unreadable in listing.unreadable:
                checks.append(
                    Check(store.name, None, "any", False, error=f"unreadable manifest {unreadable}")
                )
            for kind in KINDS:
                manifest = newest.get(kind)
                if manifest is None:
                    continue
                say(f"region {store.name}: checking {kind} backup {manifest.id} ...")
                try:
                    verified = verify_backup(settings, store, manifest)
                    checks.append(Check(store.name, manifest.id, kind, True, verified.to_dict()))
                except ResilienceError as exc:
                    checks.append(Check(store.name, manifest.id, kind, False, error=str(exc)))
                    say(f"region {store.name}: {manifest.id} INVALID: {exc}")
        for check in checks:
            _log(settings.backup_validation_log, check)
        result = Validation(checks)
        if not result.ok:
            # of the kind that was bad, so the newest backup of that kind is a good one again
            kinds = [c.kind for c in result.checks if not c.valid and c.kind in KINDS]
            retake_kind: str = max(kinds, key=KINDS.index) if kinds else "auto"
            say(f"re-taking a {retake_kind} backup now")
            try:
                result.retaken = take_backup(settings, kind=retake_kind, progress=say).manifest.id
            except ResilienceError as exc:
                result.retaken = None
                say(f"re-taking failed: {exc}")
        record.journal.measurements.update(result.to_dict())
        _alert(settings, result)
        if not result.ok:
            bad = [c for c in result.checks if not c.valid]
            error = VerificationError(
                f"{len(bad)} backup check(s) failed: "
                + "; ".join(f"{c.region} {c.backup_id or ''}: {c.error}" for c in bad[:5])
                + (f"; re-taken as {result.retaken}" if result.retaken else "; re-take FAILED")
            )
            error.details = result.to_dict()
            raise error
    result.record = record.path
    return result


def _alert(settings: Settings, result: Validation) -> None:
    if result.ok:
        text = f"backup validation: {len(result.checks)} backup(s) valid"
        notify(settings, text, level="info", telegram=False)
        return
    bad = [c for c in result.checks if not c.valid]
    text = "backup validation FAILED: " + "; ".join(
        f"{c.region} {c.backup_id or ''}: {c.error}" for c in bad[:5]
    )
    notify(settings, text, level="error")
