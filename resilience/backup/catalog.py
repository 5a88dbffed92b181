"""What each region holds: the backups whose manifest is there, newest first, and the spool of
local copies kept until every region has them (a region that was down is caught up from it)."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from resilience.backup.manifest import PREFIX, BackupManifest, dump_key, manifest_key
from resilience.errors import DataError
from resilience.infra.fsutil import atomic_write
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.s3 import RegionStore


@dataclass
class Listing:
    region: str
    manifests: list[BackupManifest]  # newest first
    unreadable: list[str]  # manifest keys that do not parse
    orphans: list[str]  # dumps without a manifest (an upload that did not finish)


def list_region(store: RegionStore) -> Listing:
    """Every backup of a region, newest first (StorageError when the region cannot be read)."""
    objects = dict(store.keys(PREFIX + "/"))
    manifests: list[BackupManifest] = []
    unreadable: list[str] = []
    for key in sorted(k for k in objects if k.endswith("/manifest.json")):
        try:
            manifests.append(BackupManifest.from_json(store.get_bytes(key), f"{store.name}:{key}"))
        except DataError:
            unreadable.append(key)
    with_manifest = {dump_key(m.id) for m in manifests}
    orphans = sorted(k for k in objects if k.endswith("/dump.pgc") and k not in with_manifest)
    manifests.sort(key=lambda m: m.id, reverse=True)
    return Listing(store.name, manifests, unreadable, orphans)


class Spool:
    """Local copies of backups not yet in every region: `<dir>/<id>/dump.pgc`, `manifest.json`
    and `pending` (the regions still missing it, one per line)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def keep(self, manifest: BackupManifest, dump: Path, pending: list[str]) -> None:
        target = self.dir / manifest.id
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(dump, target / "dump.pgc")
        atomic_write(target / "manifest.json", manifest.to_json(), mode=0o600)
        atomic_write(target / "pending", ("\n".join(pending) + "\n").encode(), mode=0o600)

    def pending(self) -> list[tuple[BackupManifest, Path, list[str]]]:
        found: list[tuple[BackupManifest, Path, list[str]]] = []
        if not self.dir.is_dir():
            return found
        for entry in sorted(self.dir.iterdir()):
            try:
                manifest = BackupManifest.from_json(
                    (entry / "manifest.json").read_bytes(), str(entry)
                )
                regions = [r for r in (entry / "pending").read_text().split() if r]
            except (OSError, DataError):
                continue
            found.append((manifest, entry / "dump.pgc", regions))
        return found

    def done(self, backup_id: str, region: str) -> None:
        entry = self.dir / backup_id
        with contextlib.suppress(OSError):
            left = [r for r in (entry / "pending").read_text().split() if r and r != region]
            if left:
                atomic_write(entry / "pending", ("\n".join(left) + "\n").encode(), mode=0o600)
            else:
                shutil.rmtree(entry, ignore_errors=True)


def upload_backup(
    store: RegionStore, manifest: BackupManifest, dump: Path, meters: Meters = NO_METERS
) -> None:
    """The dump, then the manifest: a dump without its manifest is never taken for a backup."""
    store.upload(dump, dump_key(manifest.id), sha256=manifest.sha256, meters=meters)
    store.put_bytes(manifest_key(manifest.id), manifest.to_json())
