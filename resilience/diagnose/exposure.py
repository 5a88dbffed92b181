"""How much would be lost: the age of the newest snapshot of a company and, per region, the
newest backup (and whether `backup.validate` found it valid). A region that cannot be read is
said plainly and skipped: the comparison with backups is then skipped, never failed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.backup.catalog import list_region
from resilience.backup.manifest import BackupManifest
from resilience.config import Settings
from resilience.errors import ConfigError, ResilienceError
from resilience.files.snapshot import newest_snapshot
from resilience.infra.s3 import regions_from_settings


@dataclass
class Exposure:
    snapshot: dict[str, Any] | None
    regions: dict[str, dict[str, Any]] = field(default_factory=dict)
    newest: BackupManifest | None = None  # the newest readable backup of any region
    newest_region: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "regions": self.regions}


def _validated(log: Path) -> dict[str, bool]:
    """backup id -> the last validation's verdict, from `backup.validate`'s log."""
    out: dict[str, bool] = {}
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("backup_id"):
            if entry.get("status") in ("unreachable", "unchecked"):
                continue  # the region or the check failed: nothing proven about the backup
            out[str(entry["backup_id"])] = bool(entry.get("valid"))
    return out


def exposure_of(settings: Settings, company_id: str, now: datetime | None = None) -> Exposure:
    moment = now or datetime.now(UTC)
    snap = newest_snapshot(settings.snapshot_dir, company_id) if settings.snapshot_dir else None
    result = Exposure(
        None if snap is None else {"path": str(snap.path), "age_s": round(snap.age_s(moment), 1)}
    )
    verdicts = _validated(settings.backup_validation_log)
    try:
        stores = regions_from_settings(settings)
    except ConfigError as exc:  # no region configured: nothing to compare with, said plainly
        result.regions["(none)"] = {"state": "unconfigured", "error": str(exc)}
        return result
    for store in stores:
        try:
            listing = list_region(store)
        except ResilienceError as exc:
            result.regions[store.name] = {"state": "unreachable", "error": str(exc)}
            continue
        newest = listing.manifests[0] if listing.manifests else None
        valid = [m for m in listing.manifests if verdicts.get(m.id) is True]
        result.regions[store.name] = {
            "state": "ok",
            "newest": None
            if newest is None
            else {
                "id": newest.id,
                "age_s": round((moment - newest.created).total_seconds(), 1),
                "validated": verdicts.get(newest.id),
            },
            "newest_valid": None
            if not valid
            else {
                "id": valid[0].id,
                "age_s": round((moment - valid[0].created).total_seconds(), 1),
            },
            "unreadable_manifests": len(listing.unreadable),
        }
        usable = [m for m in listing.manifests if verdicts.get(m.id) is not False]
        if usable and (result.newest is None or usable[0].id > result.newest.id):
            result.newest, result.newest_region = usable[0], store.name
    return result
