"""`backup.list`: every backup per region, with its age, size and last validation result, and
beside them the region's base backups and WAL range (point-in-time recovery).

A region that cannot be read (refused, hung past its bounds, an S3 error) is listed as
``unreachable`` with the reason, the others as ``ok``; the call then raises a
:class:`PartialFailure` (exit 6) that carries the whole listing, so a script and an operator
still see every region that answered.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.backup.barman import Archive
from resilience.backup.base import list_pitr
from resilience.backup.catalog import list_region
from resilience.config import Settings
from resilience.errors import InputError, PartialFailure, ResilienceError
from resilience.infra.s3 import StorageError, regions_from_settings


def last_validations(log: Path) -> dict[tuple[str, str], bool]:
    """(region, backup id) -> the last validation result the log holds for it."""
    last: dict[tuple[str, str], bool] = {}
    if not log.exists():
        return last
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("backup_id") and entry.get("region"):
            if entry.get("status") in ("unreachable", "unchecked"):
                continue  # nothing was proven either way
            last[(str(entry["region"]), str(entry["backup_id"]))] = bool(entry.get("valid"))
    return last


def list_backups(settings: Settings, region: str | None = None) -> dict[str, Any]:
    """``{"regions": {name: {...}}}``; PartialFailure (exit 6, the listing as its details)
    when a region could not be read."""
    stores = regions_from_settings(settings)
    if region is not None:
        stores = [s for s in stores if s.name == region]
        if not stores:
            raise InputError(f"unknown or unconfigured region {region!r} (moscow or eu)")
    last = last_validations(settings.backup_validation_log)
    now = datetime.now(UTC)
    regions: dict[str, Any] = {}
    failed: list[str] = []
    for store in stores:
        try:
            listing = list_region(store)
        except StorageError as exc:
            regions[store.name] = {"state": "unreachable", "error": str(exc)}
            failed.append(str(exc))
            continue
        regions[store.name] = {
            "state": "ok",
            "backups": [
                {
                    **m.summary(),
                    "age_s": round((now - m.created).total_seconds()),
                    "validated": last.get((store.name, m.id)),
                }
                for m in listing.manifests
            ],
            "orphans": listing.orphans,
            "unreadable": listing.unreadable,
        }
        try:
            archive = Archive(store, settings.pitr_prefix, settings.pitr_server)
            regions[store.name]["pitr"] = list_pitr(settings, archive)
        except ResilienceError as exc:
            regions[store.name]["pitr"] = {"error": str(exc)}
    result = {"regions": regions}
    if failed:
        listed = [name for name, r in regions.items() if r["state"] == "ok"]
        raise PartialFailure(
            f"{len(failed)} region(s) could not be listed"
            + (f" (listed: {', '.join(listed)})" if listed else "")
            + ": "
            + "; ".join(failed),
            StorageError.exit_code,
            result,
        )
    return result
