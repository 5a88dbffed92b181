"""Baileys directory -> PostgreSQL: the way back, with the exact original key ids.

File names do not reverse (``/`` became ``__``, ``:`` became ``-``), so every key file is mapped
back to its ``(type, id)`` by, in order:

1. the ``manifest.json`` written by the export, for every file that existed then;
2. :func:`~resilience.authstate.naming.parse_file_name`'s type-aware rules, for files the service
   created in file mode (realistic Baileys 7 id shapes only);
3. nothing else: a name neither can map is refused, listed, and nothing is imported.

The import makes the company's rows exactly the directory's keys, in one transaction, with the
service's write semantics (:meth:`PgAuthStore.sync_company`): into a company without key rows
the keys go by one ``COPY`` with their type's TTL (every key is new); otherwise they are
streamed by ``COPY`` into a temporary table, then one ``INSERT ... ON CONFLICT DO UPDATE``
upserts the new and changed ones with their type's TTL (an unchanged row is not touched), and
one ``DELETE`` removes every other row of the company (legacy twins of a file, files gone).
Creds are saved when they differ.

Still inside the transaction the server compares the company's rows with the uploaded ones
(count, jsonb equality, creds; after the direct ``COPY`` the count); a difference raises
:class:`VerificationError` and rolls everything back. The uploaded rows are the directory's
decoded values, their Buffers in the form the store chooses (``RESILIENCE_DB_BUFFER_FORM``;
with ``auto`` the form most of the company's rows use; the codec round trip is property-tested),
so the database's digest is then the directory's. ``--dry-run`` still reads both sides and
plans the diff by file name (:func:`plan_import`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resilience.authstate.codec import canonical, loads, parse
from resilience.authstate.filestore import read_raw_files, read_regular_file
from resilience.authstate.fingerprint import (
    AuthDigest,
    KeyFingerprint,
    digest_of_fingerprints,
)
from resilience.authstate.model import KeyRecord
from resilience.authstate.naming import (
    CREDS_FILE,
    MANIFEST_FILE,
    company_dir_name,
    file_name_for,
    safe_path,
)
from resilience.authstate.pgconn import read_transaction
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import CompanyView, view_of
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError
from resilience.files.importing import (
    ImportResult,
    Ref,
    import_transaction,
    listed,
    map_directory,
    mapped_files,
    require_idle,
    sync_keys,
)
from resilience.files.manifest import Manifest
from resilience.files.merge import InstalledBase
from resilience.files.wayback import check_directory, merge_import
from resilience.infra.gcpause import collector_paused
from resilience.infra.progress import NO_METERS, Meters

#: names other modules import from here
__all__ = [
    "DirectoryState",
    "FileValues",
    "ImportPlan",
    "ImportResult",
    "check_directory",
    "import_company",
    "map_directory",
    "plan_import",
    "read_directory",
]


@dataclass
class DirectoryState:
    """A company directory read and mapped back: what it holds, under which ids."""

    company_id: str
    directory: Path
    creds: Any | None
    files: dict[str, Ref]  # file name -> (type, id)
    values: dict[str, Any]  # file name -> decoded value
    manifest: Manifest | None
    raw: dict[str, bytes] = field(repr=False, default_factory=dict)  # every *.json, as read
    _prints: dict[str, str] | None = field(default=None, repr=False)

    def keys(self) -> dict[Ref, Any]:
        return {self.files[name]: value for name, value in self.values.items()}

    def fingerprints(self) -> dict[str, str]:
        """File name -> key fingerprint (a value that does not decode raises
        :class:`DataError` naming its file); computed once."""
        if self._prints is None:
            self._prints = {
                name: KeyFingerprint.of_canonical(t, i, canonical(self.values[name], where=name))
                for name, (t, i) in self.files.items()
            }
        return self._prints

    def digest(self) -> AuthDigest:
        """The digest of what the directory holds (a value that does not decode raises
        :class:`DataError` naming its file)."""
        prints = self.fingerprints()
        creds = self.creds
        if creds is not None:
            canonical(creds, where=CREDS_FILE)  # named in the error, if any
        validate_company_id(self.company_id)
        return AuthDigest(
            self.company_id, len(prints), digest_of_fingerprints(creds, prints.values())
        )


class FileValues(Mapping[Ref, Any]):
    """A directory's key files as ``{(type, id): value}``, each file read and parsed when its
    value is asked for (Buffers as written): an import streams them into ``COPY`` as it reads
    them, instead of reading the whole directory first. A file gone meanwhile, or not a
    regular file, raises :class:`DataError`."""

    def __init__(self, company_dir: Path, files: Mapping[str, Ref]) -> None:
        self.company_dir = company_dir
        self._names = {ref: name for name, ref in files.items()}

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[Ref]:
        return iter(self._names)

    def __getitem__(self, ref: Ref) -> Any:
        name = self._names[ref]
        try:
            raw = read_regular_file(self.company_dir, name)
        except FileNotFoundError:  # a live service deleted it since the listing
            raise DataError(
                f"{name[:80]!r} in {self.company_dir} vanished while it was being read"
            ) from None
        return parse(raw, where=name)


def read_directory(company_dir: Path, company_id: str, *, decoded: bool = True) -> DirectoryState:
    """Read every file of a company directory once, decode it and map names back (with
    ``decoded`` False, values keep their Buffer objects as written: digests and encodings
    accept them, and the import re-encodes each in one walk).

    Raises :class:`DataError` for unmappable names (listed), files that do not decode, and an
    invalid or foreign manifest.
    """
    company_dir = Path(company_dir)
    manifest, mapped = mapped_files(company_dir, company_id)
    raw = read_raw_files(company_dir)
    creds_raw = raw.get(CREDS_FILE)
    read = loads if decoded else parse
    creds = None if creds_raw is None else read(creds_raw, where=CREDS_FILE)
    values: dict[str, Any] = {}
    for name in mapped:
        if name not in raw:  # deleted between listing and reading (a live service)
            raise DataError(f"{name[:80]!r} in {company_dir} vanished while it was being read")
        values[name] = read(raw[name], where=name)
    extra = set(raw) - set(mapped) - {CREDS_FILE, MANIFEST_FILE}
    if extra:
        raise DataError(
            f"{company_dir} changed while it was being read: {listed(sorted(extra))} appeared"
        )
    return DirectoryState(company_id, company_dir, creds, mapped, values, manifest, raw)


# --- the diff ------------------------------------------------------------------------------------


@dataclass
class ImportPlan:
    upserts: dict[Ref, Any] = field(default_factory=dict)  # mapped ref -> value
    deletes: list[Ref] = field(default_factory=list)  # rows (type, id) as stored
    unchanged: int = 0
    removed_files: list[str] = field(default_factory=list)
    creds_changed: bool = False


def plan_import(
    state: DirectoryState, db_creds: Any | None, records: list[KeyRecord]
) -> tuple[ImportPlan, CompanyView]:
    """The changes that make the database's view equal to the directory, and that view."""
    view = view_of(state.company_id, db_creds, records)
    rows_by_name: dict[str, list[KeyRecord]] = defaultdict(list)
    for record in records:
        rows_by_name[file_name_for(record.key_type, record.key_id)].append(record)
    plan = ImportPlan()
    for name, ref in state.files.items():
        value = state.values[name]
        entry = view.entries.get(name)
        if (
            entry is not None
            and (entry.record.key_type, entry.record.key_id) == ref
            and canonical(entry.record.value) == canonical(value)
        ):
            plan.unchanged += 1
        else:
            plan.upserts[ref] = value
        # every other row naming this file goes (legacy twins, collision losers)
        plan.deletes += [
            (r.key_type, r.key_id)
            for r in rows_by_name.get(name, [])
            if (r.key_type, r.key_id) != ref
        ]
    for name in view.entries:
        if name not in state.files:
            plan.removed_files.append(name)
            plan.deletes += [(r.key_type, r.key_id) for r in rows_by_name[name]]
    plan.creds_changed = db_creds is None or canonical(db_creds) != canonical(state.creds)
    return plan, view


@collector_paused()  # every key held while it works: see resilience.infra.gcpause
def import_company(
    store: PgAuthStore,
    root: Path,
    company_id: str,
    *,
    dry_run: bool = False,
    meters: Meters = NO_METERS,
    three_way: bool = False,
    base: InstalledBase | None = None,
) -> ImportResult:
    """Import ``root/company_<id>`` into PostgreSQL in one verified transaction (module text).

    With ``three_way`` the way back merges ``base`` (what the switch installed), the directory
    and PostgreSQL (:mod:`.merge`; no base: the directory whole), inside the transaction, and
    the server verifies the merge's result; the summary is in ``merge``.

    The connection must not be inside a transaction (the import needs its own, committed here).
    ``dry_run`` reads both sides and returns the plan (``digest_db`` is then the database's
    current digest) without writing. Raises :class:`InputError` (no directory, bad company id,
    connection already in a transaction), :class:`DataError` (unmappable names, files that do not
    decode, no creds.json), :class:`VerificationError` (digests differ after writing; rolled
    back) or :class:`DatabaseError`.
    """
    started = time.monotonic()
    validate_company_id(company_id)
    company_dir = safe_path(Path(root), company_dir_name(company_id))
    if not company_dir.is_dir():
        raise InputError(f"no Baileys directory {company_dir} to import for company {company_id}")
    if three_way:
        return merge_import(store, company_dir, company_id, base, dry_run, meters, started)
    if dry_run:
        return _preview_import(store, company_dir, company_id, started)
    return _write_import(store, company_dir, company_id, meters, started)


def _preview_import(
    store: PgAuthStore, company_dir: Path, company_id: str, started: float
) -> ImportResult:
    """The dry run: both sides read, the diff planned by file name, nothing written."""
    state = read_directory(company_dir, company_id, decoded=False)
    if state.creds is None:
        raise DataError(f"no {CREDS_FILE} in {company_dir}: nothing to import without creds")
    digest_dir = state.digest()
    with read_transaction(store.conn):
        db_creds = store.load_creds(company_id)
        records = store.records(company_id)
        form = store.write_form(company_id)
    plan, view = plan_import(state, db_creds, records)
    return ImportResult(
        company_id=company_id,
        upserted=len(plan.upserts),
        deleted=len(plan.deletes),
        unchanged=plan.unchanged,
        key_count=len(state.files),
        digest_db=view.digest().digest,
        digest_dir=digest_dir.digest,
        duration_s=time.monotonic() - started,
        dry_run=True,
        creds_changed=plan.creds_changed,
        removed_files=len(plan.removed_files),
        buffer_form=form.to_dict(),
    )


def _write_import(
    store: PgAuthStore, company_dir: Path, company_id: str, meters: Meters, started: float
) -> ImportResult:
    """The directory's keys made the company's rows in one verified transaction."""
    require_idle(store.conn)
    # the key files are read as they are streamed into COPY (see FileValues)
    _manifest, files = mapped_files(company_dir, company_id)
    try:
        creds = parse(read_regular_file(company_dir, CREDS_FILE), where=CREDS_FILE)
    except FileNotFoundError:
        raise DataError(
            f"no {CREDS_FILE} in {company_dir}: nothing to import without creds"
        ) from None
    prints: list[str] = []  # the directory's digest, computed on the way
    with import_transaction(store, company_id):
        values = FileValues(company_dir, files)
        synced = sync_keys(store, company_id, company_dir, files, creds, values, meters, prints)
    digest_dir = AuthDigest(company_id, len(prints), digest_of_fingerprints(creds, prints))
    upserted, deleted = synced.upserted, len(synced.deleted)
    gone = {file_name_for(t, i) for t, i in synced.deleted} - set(files)
    return ImportResult(
        company_id=company_id,
        upserted=upserted,
        deleted=deleted,
        unchanged=synced.key_count - upserted,
        key_count=synced.key_count,
        # the database's rows were compared with the uploaded ones by the server (count and
        # jsonb equality) inside the transaction: they are the directory's keys, so its digest
        digest_db=digest_dir.digest,
        digest_dir=digest_dir.digest,
        duration_s=time.monotonic() - started,
        creds_changed=synced.creds_changed,
        removed_files=len(gone),
        buffer_form=synced.buffer_form.to_dict() if synced.buffer_form else None,
    )
