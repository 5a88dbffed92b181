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

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg.pq import TransactionStatus

from resilience.authstate.codec import canonical, loads, parse
from resilience.authstate.filestore import key_file_names, read_raw_files, read_regular_file
from resilience.authstate.fingerprint import (
    AuthDigest,
    KeyFingerprint,
    creds_fingerprint,
    digest_of_fingerprints,
    next_pre_key_id,
)
from resilience.authstate.model import KeyRecord
from resilience.authstate.naming import (
    CREDS_FILE,
    MANIFEST_FILE,
    company_dir_name,
    file_name_for,
    safe_path,
    try_parse_file_name,
)
from resilience.authstate.pgconn import database_errors, read_transaction
from resilience.authstate.pgimport import SyncResult
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import CompanyView, view_of
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError, ResilienceError
from resilience.files.manifest import Manifest, read_manifest
from resilience.files.merge import (
    InstalledBase,
    Side,
    plan_merge,
    pre_keys_issued_in_files,
)
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.waiting import wait_until

Ref = tuple[str, str]
SHOWN_UNMAPPABLE = 10


def _listed(names: list[str], limit: int = SHOWN_UNMAPPABLE) -> str:
    shown = ", ".join(repr(n[:80]) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return shown + more


# --- mapping names back ----------------------------------------------------------------------


def map_directory(company_dir: Path) -> tuple[dict[str, Ref], list[str]]:
    """``({file name: (type, id)}, [unmappable names])`` for the key files of a directory.

    Files listed in the manifest get the manifest's ``(type, id)``; others are mapped by
    :func:`~resilience.authstate.naming.parse_file_name` where that needs no guessing; the rest
    are returned as unmappable (never guessed). An invalid manifest raises :class:`DataError`.
    """
    company_dir = Path(company_dir)
    return _map_names(company_dir, read_manifest(company_dir))


def _map_names(company_dir: Path, manifest: Manifest | None) -> tuple[dict[str, Ref], list[str]]:
    listed = manifest.files if manifest is not None else {}
    mapped: dict[str, Ref] = {}
    unmappable: list[str] = []
    for name in key_file_names(company_dir):
        ref = listed.get(name) or try_parse_file_name(name)
        if ref is None:
            unmappable.append(name)
        else:
            mapped[name] = ref
    return mapped, unmappable


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


def _mapped(company_dir: Path, company_id: str) -> tuple[Manifest | None, dict[str, Ref]]:
    """The directory's manifest and its key files mapped back; :class:`DataError` listing the
    names that cannot be mapped without guessing."""
    validate_company_id(company_id)
    if company_dir.name != company_dir_name(company_id):
        raise InputError(f"{company_dir} is not the directory of company {company_id}")
    manifest = read_manifest(company_dir)
    mapped, unmappable = _map_names(company_dir, manifest)
    if unmappable:
        raise DataError(
            f"{len(unmappable)} key file(s) in {company_dir} cannot be mapped back to a key id "
            f"without guessing: {_listed(unmappable)}; nothing was imported"
        )
    return manifest, mapped


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
    manifest, mapped = _mapped(company_dir, company_id)
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
            f"{company_dir} changed while it was being read: {_listed(sorted(extra))} appeared"
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


@dataclass
class ImportResult:
    """What an import did (or, with ``dry_run``, would do)."""

    company_id: str
    upserted: int
    deleted: int
    unchanged: int
    key_count: int
    digest_db: str
    digest_dir: str
    duration_s: float
    dry_run: bool = False
    creds_changed: bool = False
    removed_files: int = 0
    #: the three-way merge's summary (:mod:`.merge`), when the import merged
    merge: dict[str, Any] | None = None
    #: the Buffer form written rows are in (resilience.authstate.bufferform.FormChoice)
    buffer_form: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        merged = {} if self.merge is None else {"merge": self.merge}
        return {
            **merged,
            "company_id": self.company_id,
            "upserted": self.upserted,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "key_count": self.key_count,
            "digest_db": self.digest_db,
            "digest_dir": self.digest_dir,
            "duration_s": round(self.duration_s, 6),
            "dry_run": self.dry_run,
            "creds_changed": self.creds_changed,
            "removed_files": self.removed_files,
            "buffer_form": self.buffer_form,
        }


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
    conn = store.conn
    if three_way:
        return _merge_import(store, company_dir, company_id, base, dry_run, meters, started)
    if dry_run:
        state = read_directory(company_dir, company_id, decoded=False)
        if state.creds is None:
            raise DataError(f"no {CREDS_FILE} in {company_dir}: nothing to import without creds")
        digest_dir = state.digest()
        with read_transaction(conn):
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

    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise InputError(
            "import needs a transaction of its own but the connection is already inside one: "
            "commit or roll back first"
        )
    # the key files are read as they are streamed into COPY (see FileValues)
    _manifest, files = _mapped(company_dir, company_id)
    try:
        creds = parse(read_regular_file(company_dir, CREDS_FILE), where=CREDS_FILE)
    except FileNotFoundError:
        raise DataError(
            f"no {CREDS_FILE} in {company_dir}: nothing to import without creds"
        ) from None
    prints: list[str] = []  # the directory's digest, computed on the way
    with _import_transaction(store, company_id):
        values = FileValues(company_dir, files)
        synced = _sync(store, company_id, company_dir, files, creds, values, meters, prints)
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


# --- the way back as a three-way merge (resilience.files.merge) ---------------------------------


def _read_ours(
    company_dir: Path, files: Mapping[str, Ref], *, tolerant: bool
) -> tuple[dict[str, Any], dict[str, Side]]:
    """Every key file's value (Buffers as written) and its :class:`Side`. A value that does
    not decode raises :class:`DataError` naming its file; with ``tolerant`` (the service may
    still be writing: a preview) a file deleted meanwhile is left out, else it is an error."""
    values: dict[str, Any] = {}
    sides: dict[str, Side] = {}
    for name, (key_type, key_id) in files.items():
        try:
            value, form = _decoded(company_dir, name)
        except FileNotFoundError:
            if tolerant:
                continue
            raise DataError(
                f"{name[:80]!r} in {company_dir} vanished while it was being read"
            ) from None
        except DataError:
            if not tolerant:
                raise
            # Baileys writes its files in place (truncate, then write): a running service's
            # file may be caught half written; only one that stays undecodable is refused
            found = _settled(company_dir, name)
            if found is None:
                continue
            value, form = found
        values[name] = value
        sides[name] = Side((key_type, key_id), KeyFingerprint.of_canonical(key_type, key_id, form))
    return values, sides


#: how long a file that does not decode is read again before a live service's write counts as
#: done (Baileys writes a key file in a few milliseconds)
SETTLE_S = 2.0


def _decoded(company_dir: Path, name: str) -> tuple[Any, bytes]:
    value = parse(read_regular_file(company_dir, name), where=name)
    return value, canonical(value, where=name)


def _settled(company_dir: Path, name: str) -> tuple[Any, bytes] | None:
    """The file's value once it decodes (None: deleted meanwhile); :class:`DataError` when it
    still does not decode after :data:`SETTLE_S`."""
    last: list[DataError] = []

    def attempt() -> tuple[tuple[Any, bytes] | None] | None:
        try:
            return (_decoded(company_dir, name),)
        except FileNotFoundError:
            return (None,)
        except DataError as exc:
            last[:] = [exc]
            return None

    try:
        return wait_until(attempt, SETTLE_S, f"{name} to decode", fatal=())[0]
    except ResilienceError:
        raise last[0] if last else DataError(f"{name} does not decode") from None


def read_creds_file(company_dir: Path, *, tolerant: bool = False) -> Any:
    """``creds.json`` parsed, decodable and not empty; :class:`DataError` naming it otherwise
    (with ``tolerant``, a file caught half written by a running service is read again)."""
    missing = DataError(f"no {CREDS_FILE} in {company_dir}: nothing to import without creds")
    try:
        creds = _decoded(company_dir, CREDS_FILE)[0]
    except FileNotFoundError:
        raise missing from None
    except DataError:
        if not tolerant:
            raise
        settled = _settled(company_dir, CREDS_FILE)
        if settled is None:
            raise missing from None
        creds = settled[0]
    if not isinstance(creds, dict) or not creds:
        raise DataError(f"{CREDS_FILE} in {company_dir} holds no creds (empty or not an object)")
    return creds


@contextlib.contextmanager
def _import_transaction(store: PgAuthStore, company_id: str) -> Iterator[None]:
    """The import's one transaction; one import per company at a time (an advisory lock,
    released at commit or rollback)."""
    conn = store.conn
    with database_errors("importing the auth state"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"import:{company_id}",))
        yield


def _sync(
    store: PgAuthStore,
    company_id: str,
    company_dir: Path,
    files: Mapping[str, Ref],
    creds: Any,
    keys: Mapping[Ref, Any],
    meters: Meters,
    prints: list[str],
) -> SyncResult:
    """``keys`` made the company's rows (:meth:`PgAuthStore.sync_company`), with progress; a
    file that appeared in the directory meanwhile fails it inside the transaction (nothing is
    imported)."""
    meter = meters.start(f"import {company_id}", len(keys), "keys")
    try:
        synced = store.sync_company(
            company_id,
            creds,
            keys,
            where=lambda t, i: file_name_for(t, i),
            advance=meter.advance,
            prints=prints,
        )
    finally:
        meter.close()
    appeared = set(key_file_names(company_dir)) - set(files)
    if appeared:
        raise DataError(
            f"{company_dir} changed while it was being read: {_listed(sorted(appeared))} appeared"
        )
    return synced


def check_directory(company_dir: Path, company_id: str) -> int:
    """Whether the service can load ``company_dir``: a real directory (no symlink), every file
    name mapped back, ``creds.json`` and every key file decoding. Read while the service may be
    writing (a file deleted meanwhile is skipped). The number of key files; :class:`DataError`
    or :class:`InputError` naming the first problem."""
    if company_dir.is_symlink():
        raise InputError(
            f"{company_dir} is a symlink: refusing to read or replace what it points to"
        )
    if not company_dir.is_dir():
        raise InputError(f"no Baileys directory {company_dir}")
    _manifest, files = _mapped(company_dir, company_id)
    read_creds_file(company_dir, tolerant=True)
    values, _sides = _read_ours(company_dir, files, tolerant=True)
    return len(values)


def _read_theirs(
    store: PgAuthStore, company_id: str
) -> tuple[str | None, dict[str, Any], dict[str, Side]]:
    """PostgreSQL now as the service sees it: creds' fingerprint, and by file name each chosen
    row's value (as stored) and :class:`Side` under its Baileys reference."""
    creds: Any | None = None
    records: list[KeyRecord] = []
    for item in store.stream_company(company_id, decoded=False):
        if isinstance(item, KeyRecord):
            records.append(item)
        else:
            creds = item.value
    view = view_of(company_id, creds, records)
    values = {name: entry.record.value for name, entry in view.entries.items()}
    sides = {
        name: Side(
            (entry.key_type, entry.key_id),
            KeyFingerprint.of(entry.key_type, entry.key_id, entry.record.value),
        )
        for name, entry in view.entries.items()
    }
    return creds_fingerprint(creds), values, sides


def _merge_import(
    store: PgAuthStore,
    company_dir: Path,
    company_id: str,
    base: InstalledBase | None,
    dry_run: bool,
    meters: Meters,
    started: float,
) -> ImportResult:
    _manifest, files = _mapped(company_dir, company_id)
    conn = store.conn
    if dry_run:
        creds = read_creds_file(company_dir, tolerant=True)
        ours, our_sides = _read_ours(company_dir, files, tolerant=True)
        with read_transaction(conn):
            theirs_creds, theirs, their_sides = _read_theirs(store, company_id)
            form = store.write_form(company_id)
        owned = pre_keys_issued_in_files(base, next_pre_key_id(creds), our_sides, their_sides)
        plan = plan_merge(base, our_sides, their_sides, theirs_creds, owned)
        merged = {s.fingerprint for n, s in our_sides.items() if n in plan.from_files}
        merged |= {their_sides[n].fingerprint for n in plan.from_postgres}
        digest = digest_of_fingerprints(creds, merged)
        return ImportResult(
            company_id=company_id,
            upserted=sum(
                1
                for n in plan.from_files
                if n not in their_sides or their_sides[n].fingerprint != our_sides[n].fingerprint
            ),
            deleted=len(plan.deleted_in_files),
            unchanged=plan.unchanged,
            key_count=len(merged),
            digest_db=digest,
            digest_dir=digest_of_fingerprints(creds, (s.fingerprint for s in our_sides.values())),
            duration_s=time.monotonic() - started,
            dry_run=True,
            creds_changed=theirs_creds != creds_fingerprint(creds),
            removed_files=len(plan.deleted_in_files),
            merge=plan.summary(),
            buffer_form=form.to_dict(),
        )
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise InputError(
            "import needs a transaction of its own but the connection is already inside one: "
            "commit or roll back first"
        )
    creds = read_creds_file(company_dir)
    ours, our_sides = _read_ours(company_dir, files, tolerant=False)
    prints: list[str] = []  # the merge's digest, computed on the way
    with _import_transaction(store, company_id):
        theirs_creds, theirs, their_sides = _read_theirs(store, company_id)
        owned = pre_keys_issued_in_files(base, next_pre_key_id(creds), our_sides, their_sides)
        plan = plan_merge(base, our_sides, their_sides, theirs_creds, owned)
        keys: dict[Ref, Any] = {ref: ours[name] for name, ref in plan.from_files.items()}
        keys.update({ref: theirs[name] for name, ref in plan.from_postgres.items()})
        synced = _sync(store, company_id, company_dir, files, creds, keys, meters, prints)
    result = AuthDigest(company_id, len(prints), digest_of_fingerprints(creds, prints))
    return ImportResult(
        company_id=company_id,
        upserted=synced.upserted,
        deleted=len(synced.deleted),
        unchanged=synced.key_count - synced.upserted,
        key_count=synced.key_count,
        # the server compared the rows with the uploaded ones (the merge's result)
        digest_db=result.digest,
        digest_dir=digest_of_fingerprints(creds, (s.fingerprint for s in our_sides.values())),
        duration_s=time.monotonic() - started,
        creds_changed=synced.creds_changed,
        removed_files=len(plan.deleted_in_files),
        merge=plan.summary(),
        buffer_form=synced.buffer_form.to_dict() if synced.buffer_form else None,
    )
