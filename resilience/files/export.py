"""PostgreSQL -> Baileys directory: the export, its manifest, and the staged swap into place.

An export of company ``X`` into ``root`` ends as ``root/company_X/`` in Baileys' multi-file layout
(``creds.json`` plus one ``<type>-<id>.json`` per key of the service's view, see
:mod:`resilience.authstate.view`) with a ``manifest.json`` beside the files. The manifest records
the exact ``(type, id)`` of every file: names do not reverse (docs/domain.md §3): it is what makes
the way back (:mod:`resilience.files.importer`) exact.

Nothing is written before every file name has been computed and checked, and nothing replaces the
previous directory until the new one is complete:

1. read creds and keys in one read-only snapshot of the database;
2. build the view (collisions resolved and reported, hostile ids refused);
3. write into ``root/.staging-<random>/company_X/`` (files 0600, dirs 0700; no fsync per file,
   one ``syncfs`` of the whole directory before the swap), read it back and compare digests;
4. rename ``root/company_X`` (if any) to ``root/.previous-company_X-<stamp>``, rename the staged
   directory to ``root/company_X``, fsync ``root``, delete the previous one.

Any failure removes the staging directory and leaves the previous ``company_X`` as it was.
:func:`stage_and_swap` is that staging-and-swap step on its own; snapshots install through it too.

:func:`export_all` exports several companies, each on its own: a company that fails (a row that
does not decode, keys without creds, a failed read-back, ...) is recorded as a
:class:`CompanyFailure` and the next company is exported, so one bad tenant never blocks the
others. It returns an :class:`ExportBatch` of what was put in place and what failed. Companies
named by the operator are checked first (valid ids, present in the database): a typo is refused
before anything is written.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.authstate.codec import file_forms, file_forms_plain
from resilience.authstate.dirwriter import NewDirWriter
from resilience.authstate.filestore import FileAuthStore, MakeDurable, make_durable
from resilience.authstate.fingerprint import (
    KeyFingerprint,
    creds_fingerprint,
    digest_of_fingerprints,
    next_pre_key_id,
)
from resilience.authstate.model import KeyRecord
from resilience.authstate.naming import (
    CREDS_FILE,
    MANIFEST_FILE,
    Collision,
    company_dir_name,
    file_name_for,
)
from resilience.authstate.pgstore import CredsRow, PgAuthStore
from resilience.authstate.view import CompanyView, baileys_ref, view_of
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError, VerificationError
from resilience.files.manifest import Manifest, collision_to_dict
from resilience.files.merge import file_hash
from resilience.files.staging import stage_and_swap, write_private
from resilience.infra.gcpause import collector_paused
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.redact import redact_dsn

log = logging.getLogger(__name__)

#: Disk blocks a small file takes at least; the export estimate counts one per file.
BLOCK_BYTES = 4096
#: Manifest bytes per key (name, type and id, quoted), generously.
MANIFEST_BYTES_PER_KEY = 320

Progress = Callable[[str], None]


def _no_progress(_message: str) -> None:
    return None


@dataclass
class ExportResult:
    """What one export (or snapshot install) put in place."""

    company_id: str
    directory: Path
    key_count: int
    counts_by_type: dict[str, int]
    digest: str
    collisions: list[Collision]
    files_written: int
    bytes_written: int
    duration_s: float
    #: a snapshot install: "copy" (files written) or "standby" (renamed into place)
    installed_from: str | None = None
    #: file name -> key fingerprint of what was put in place, and the creds' fingerprint: the
    #: base of the way back's merge (resilience.files.merge); not in to_dict
    fingerprints: dict[str, str] = field(default_factory=dict, repr=False)
    creds_print: str | None = None
    next_pre_key_id: int | None = None  # the creds' nextPreKeyId (pre-keys issued after it)
    #: file name -> merge.file_hash of the plain files written (the way back reads a file with
    #: these bytes as the base's without decoding it); not in to_dict
    file_hashes: dict[str, str] = field(default_factory=dict, repr=False)
    #: file name -> [type, id, version] of the row each file holds (None when a file holds a
    #: legacy row): the way back tells rows untouched since by it; not in to_dict
    row_versions: dict[str, list[str]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        installed = {} if self.installed_from is None else {"installed_from": self.installed_from}
        return {
            **installed,
            "company_id": self.company_id,
            "directory": str(self.directory),
            "key_count": self.key_count,
            "counts_by_type": dict(self.counts_by_type),
            "digest": self.digest,
            "collisions": [collision_to_dict(c) for c in self.collisions],
            "files_written": self.files_written,
            "bytes_written": self.bytes_written,
            "duration_s": round(self.duration_s, 6),
        }


def estimate_export_bytes(store: PgAuthStore, company_id: str) -> int:
    """Disk an export of the company may take: three times the stored JSON (array Buffers are
    larger than base64, but leave room), a block per file, and the manifest."""
    return estimate_from_stored(*store.stored_bytes(company_id))


def estimate_from_stored(value_bytes: int, count: int, creds_bytes: int) -> int:
    """:func:`estimate_export_bytes` from :meth:`PgAuthStore.stored_bytes`'s answer."""
    return (
        3 * (value_bytes + creds_bytes)
        + (count + 2) * BLOCK_BYTES
        + count * MANIFEST_BYTES_PER_KEY
        + BLOCK_BYTES
    )


def free_space_ok(root: Path, needed_bytes: int) -> tuple[bool, int]:
    """(enough room, free bytes) on the file system ``root`` is (or would be) on."""
    probe = Path(root).absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return free >= needed_bytes, free


# --- export -------------------------------------------------------------------------------------


def _verify_staged(company_dir: Path, company_id: str, expected: set[str]) -> None:
    """The staged directory holds exactly the files meant for it (each was read back and
    compared with its bytes by the writer). That those bytes decode to the exported values is
    pinned by the codec's property tests; comparing bytes costs a read, not a second parse."""
    found = set(os.listdir(company_dir))
    if found != expected:
        raise VerificationError(
            f"export of company {company_id} wrote {len(found)} files, {len(expected)} were meant"
        )


@collector_paused()  # 100k records held while it works: see resilience.infra.gcpause
def export_company(
    store: PgAuthStore,
    root: Path,
    company_id: str,
    *,
    source: str,
    progress: Progress | None = None,
    verify: bool = True,
    meters: Meters = NO_METERS,
    set_aside: list[Path] | None = None,
    durable: MakeDurable = make_durable,
    expected_rows: int | None = None,
    versions: bool = False,
) -> ExportResult:
    """Export one company from PostgreSQL to ``root/company_<id>`` (see the module text).

    ``source`` names where the data came from (a DSN is redacted again here). With
    ``set_aside`` the previous directory is left for the caller to remove (see
    :func:`~resilience.files.staging.stage_and_swap`). ``durable`` makes the staged
    directory durable before the swap (a :class:`~resilience.authstate.filestore.SyncGroup`
    when several companies are exported at once). ``expected_rows`` (the company's key rows,
    when the caller knows) is the progress bar's total; with a bar and no total the rows are
    counted first. With ``verify``
    the staged directory is read back and its digest compared before it replaces anything.
    With ``versions`` the result carries the rows' versions (``row_versions``: what a switch
    records for its way back; left out of batch exports, whose results are all kept).
    Raises :class:`InputError` (unknown company, hostile ids, unwritable or full export dir),
    :class:`DataError` (keys without creds, values that do not decode),
    :class:`VerificationError` or :class:`DatabaseError`; on any of them nothing changed.
    """
    started = time.monotonic()
    report = progress or _no_progress
    validate_company_id(company_id)
    # One statement, one snapshot, streamed: each key is re-encoded for its file (Buffers as
    # stored, re-encoded and fingerprinted in one walk) and handed to the writer as it arrives,
    # so files are created while the server still sends rows. Nothing is visible before the swap.
    if meters is not NO_METERS and expected_rows is None:
        expected_rows = store.count_keys(company_id)  # a bar shows time left
    rows = _translated(store.stream_company(company_id, decoded=False), company_id)
    first = next(rows, None)
    if first is None:
        raise InputError(f"unknown company {company_id}: no creds and no keys in the database")
    fill = _Fill(company_id, first, rows, report, meters, expected_rows, durable, verify)
    fill.source = redact_dsn(source)  # as the manifest names it

    made_dirs = _missing_dirs(Path(root))
    try:
        directory, (files, size) = stage_and_swap(Path(root), company_id, fill, set_aside=set_aside)
    except BaseException:
        for path in made_dirs:  # a root this failed export created goes again (when empty)
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    finally:
        rows.close()  # a failure before the last row: the rest of the stream is dropped
    manifest, view = fill.manifest, fill.view
    report(f"company {company_id}: {manifest.key_count} keys in place at {directory}")
    return ExportResult(
        company_id=company_id,
        directory=directory,
        key_count=manifest.key_count,
        counts_by_type=manifest.counts_by_type,
        digest=manifest.digest,
        collisions=list(view.collisions),
        files_written=files,
        bytes_written=size,
        duration_s=time.monotonic() - started,
        fingerprints=fill.prints,
        file_hashes=fill.hashes,
        row_versions=row_versions(view) if versions else None,
        creds_print=creds_fingerprint(fill.creds),
        next_pre_key_id=next_pre_key_id(fill.creds),
    )


class _Fill:
    """The staging step of one export (what :func:`stage_and_swap` calls): the rows streamed
    into files as they arrive, collisions resolved, creds, manifest, durability and the check of
    the staged directory. What it made stays on it for the result."""

    def __init__(
        self,
        company_id: str,
        first: CredsRow | KeyRecord,
        rows: Iterator[CredsRow | KeyRecord],
        report: Progress,
        meters: Meters,
        expected_rows: int | None,
        durable: MakeDurable,
        verify: bool,
    ) -> None:
        self.company_id, self.first, self.rows, self.report = company_id, first, rows, report
        self.meters, self.expected_rows = meters, expected_rows
        self.durable, self.verify = durable, verify
        self.source = ""
        self.creds: Any | None = None
        self.prints: dict[str, str] = {}  # file name -> key fingerprint
        self.hashes: dict[str, str] = {}  # file name -> merge.file_hash (plain files)
        self.sizes: dict[str, int] = {}
        self.view: CompanyView
        self.manifest: Manifest

    def __call__(self, staging: Path) -> tuple[int, int]:
        company_id = self.company_id
        staged = staging / company_dir_name(company_id)
        FileAuthStore(staging).make_new_dir(company_id)
        writer = NewDirWriter(staged)
        meter = self.meters.start(f"export {company_id}", self.expected_rows, "keys")
        try:
            records, written_from = self._write_keys(writer, meter.advance)
            if self.creds is None:
                raise DataError(
                    f"company {company_id} has {len(records)} keys but no creds in the "
                    "database: the account must be re-paired (QR code)"
                )
            self.view = view_of(company_id, self.creds, records)
            self._rewrite_collisions(writer, written_from)
            creds_payload = file_forms(self.creds, where="creds")[0]
            writer.put(CREDS_FILE, creds_payload)
            size = len(creds_payload) + sum(self.sizes.values())
        except BaseException:
            writer.abort()  # this error is the one raised, not the writer's
            raise
        finally:
            meter.close()
        written = writer.close()
        manifest_size = self._finish(staged, written)
        return len(written) + 1, size + manifest_size

    def _write_keys(
        self, writer: NewDirWriter, advance: Callable[[], None]
    ) -> tuple[list[KeyRecord], dict[str, KeyRecord]]:
        """Every row read, the first row naming each file written to it (the creds kept)."""
        records: list[KeyRecord] = []
        written_from: dict[str, KeyRecord] = {}  # file name -> the row whose bytes it holds
        for item in itertools.chain([self.first], self.rows):
            if isinstance(item, CredsRow):
                self.creds = item.value
                continue
            records.append(item)
            advance()
            name = file_name_for(item.key_type, item.key_id)  # a hostile id is refused
            if name in written_from:
                continue  # rows naming one file: resolved once every row is in
            self._put(writer, name, item, replace=False)
            written_from[name] = item
        self.report(f"company {self.company_id}: read creds and {len(records)} key rows")
        return records, written_from

    def _rewrite_collisions(self, writer: NewDirWriter, written_from: dict[str, KeyRecord]) -> None:
        """Where several rows name one file and the one written lost, the winner's bytes."""
        for collision in self.view.collisions:
            name = collision.file_name
            self.report(
                f"company {self.company_id}: {name} named by {1 + len(collision.dropped)} rows; "
                f"kept {collision.chosen[0]}/{collision.chosen[1]}"
            )
            winner = self.view.entries[name].record
            if written_from[name] is not winner:  # the file holds a row that lost
                self._put(writer, name, winner, replace=True)

    def _put(self, writer: NewDirWriter, name: str, record: KeyRecord, *, replace: bool) -> None:
        payload, self.prints[name] = _file_of(record, self.company_id, self.hashes, name)
        if replace:
            writer.replace(name, payload)
        else:
            writer.put(name, payload)
        self.sizes[name] = len(payload)

    def _finish(self, staged: Path, written: list[str]) -> int:
        """The manifest written, the staged directory made durable and checked; the
        manifest's size."""
        view = self.view
        self.manifest = Manifest(
            company_id=self.company_id,
            source=self.source,
            exported_at=datetime.now(UTC),
            key_count=len(view.entries),
            counts_by_type=view.counts_by_type(),
            digest=digest_of_fingerprints(self.creds, self.prints.values()),
            files={name: (e.key_type, e.key_id) for name, e in view.entries.items()},
            collisions=view.collisions,
        )
        manifest_json = self.manifest.to_json()
        write_private(staged / MANIFEST_FILE, manifest_json, fsync=False)
        self.durable(staged, [*written, MANIFEST_FILE])
        # every file was read back as written (the writer) and the listing is checked below:
        # count and size come from what was written, not from a stat of every file
        if self.verify:
            _verify_staged(staged, self.company_id, set(written) | {MANIFEST_FILE})
        return len(manifest_json)


def row_versions(view: CompanyView) -> dict[str, list[str]] | None:
    """File name -> ``[type, id, version]`` of the row each file holds, when each holds one
    row stored under its Baileys reference (no legacy row, no several rows naming one file):
    what :mod:`~resilience.files.untouched` compares PostgreSQL's rows with. None otherwise."""
    if view.collisions:
        return None
    versions: dict[str, list[str]] = {}
    for name, entry in view.entries.items():
        row = entry.record
        if row.version is None or (row.key_type, row.key_id) != (entry.key_type, entry.key_id):
            return None
        versions[name] = [row.key_type, row.key_id, row.version]
    return versions


def _missing_dirs(root: Path) -> list[Path]:
    """``root`` and its parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    path = root.absolute()
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing


def _translated(
    rows: Iterator[CredsRow | KeyRecord], company_id: str
) -> Generator[CredsRow | KeyRecord, None, None]:
    """``rows``, a value that does not parse named as the company's failed export."""
    try:
        yield from rows
    except DataError as exc:
        raise DataError(f"company {company_id} was not exported: {exc}") from None


def _file_of(
    record: KeyRecord, company_id: str, hashes: dict[str, str], name: str
) -> tuple[bytes, str]:
    """(the bytes of the row's file, its fingerprint under the Baileys reference); the file's
    hash put in ``hashes`` when its value is plain (else any earlier one removed)."""
    try:
        payload, canonical_form, plain = file_forms_plain(
            record.value, where=f"{record.key_type}/{record.key_id}"
        )
    except DataError as exc:
        raise DataError(f"company {company_id} was not exported: {exc}") from None
    key_type, key_id = baileys_ref(record.key_type, record.key_id)
    if plain:
        hashes[name] = file_hash(key_type, key_id, payload)
    else:
        hashes.pop(name, None)
    return payload, KeyFingerprint.of_canonical(key_type, key_id, canonical_form)
