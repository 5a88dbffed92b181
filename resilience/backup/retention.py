"""Grandfather-father-son retention as a small policy object, per region.

Keep the newest `hourly` backups; the first backup of each of the newest `daily` days; the first
of each of the newest `monthly` months; and always the newest backup. Days and months come from
the backup's id (its UTC start), so a backup's class never depends on what ran before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resilience.backup.catalog import list_region
from resilience.backup.manifest import BackupManifest, dump_key, manifest_key
from resilience.config import Settings
from resilience.errors import ResilienceError
from resilience.infra.s3 import regions_from_settings
from resilience.runs.record import recorded_run


@dataclass(frozen=True)
class Retention:
    hourly: int = 48
    daily: int = 30
    monthly: int = 12

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(
            settings.backup_keep_hourly, settings.backup_keep_daily, settings.backup_keep_monthly
        )

    def keep(self, ids: list[str]) -> set[str]:
        """The ids to keep out of `ids` (any order)."""
        newest_first = sorted(ids, reverse=True)
        kept = set(newest_first[: max(self.hourly, 1)])  # the newest one always stays
        for width, count in ((8, self.daily), (6, self.monthly)):  # YYYYMMDD, YYYYMM
            firsts: dict[str, str] = {}
            for backup_id in sorted(ids):  # oldest first: the first of each period wins
                firsts.setdefault(backup_id[:width], backup_id)
            periods = sorted(firsts, reverse=True)[:count]
            kept |= {firsts[p] for p in periods}
        return kept


@dataclass
class Pruned:
    region: str
    kept: list[str]
    deleted: list[str]
    error: str | None = None


def prune(
    settings: Settings, *, yes: bool = False, progress: Callable[[str], None] | None = None
) -> tuple[list[Pruned], Any]:
    """Apply the retention in every region; without `yes` only say what would go."""
    say = progress or (lambda _m: None)
    policy = Retention.from_settings(settings)
    results: list[Pruned] = []
    with recorded_run(settings, "backup.prune") as record:
        for store in regions_from_settings(settings):
            try:
                manifests: list[BackupManifest] = list_region(store).manifests
                keep = policy.keep([m.id for m in manifests])
                doomed = [m.id for m in manifests if m.id not in keep]
                if yes:
                    for backup_id in doomed:
                        store.delete(manifest_key(backup_id))  # first: never a dangling manifest
                        store.delete(dump_key(backup_id))
                        say(f"region {store.name}: deleted {backup_id}")
                results.append(Pruned(store.name, sorted(keep, reverse=True), doomed))
            except ResilienceError as exc:
                results.append(Pruned(store.name, [], [], str(exc)))
        record.journal.measurements["regions"] = [vars(r) for r in results]
        record.journal.measurements["dry_run"] = not yes
    return results, record.path
