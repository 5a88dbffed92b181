"""The way back as a three-way merge (:mod:`.merge`): the base the switch installed, the
directory the service wrote, PostgreSQL's rows now; and the checks of a directory the service
may still be writing.

The merge compares fingerprints by file name. Most keys are untouched on both sides, so the
way back avoids decoding them:

- a key file whose bytes hash as the base recorded them (:func:`~.merge.file_hash`, recorded
  by an export for its plain files) has the base's fingerprint: it is not parsed;
- those files' JSON text is sent to the server, which compares each with the row of the same
  ``(type, id)`` (:func:`~resilience.authstate.pgimport.rows_beside`): a row whose jsonb equals
  it holds the file's decoded value (the files are plain: no float, no integer beyond a
  double's range, see :func:`~resilience.authstate.codec.file_forms_plain`), so it has the
  file's fingerprint and is not sent back; only the other rows travel and are decoded;
- rows the merge keeps as PostgreSQL has them are not uploaded again: the write names them
  as kept (by ``xmin``, checked by the server before commit) and uploads only the keys that
  may change.

Every other file and row is decoded and fingerprinted as before; the plan, the rows written
and the digests are those of the merge over every decoded value.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from resilience.authstate.bufferform import (
    FormChoice,
    FormCounts,
    RowForm,
    choose,
    form_of_compact,
    form_of_text,
)
from resilience.authstate.codec import canonical, parse
from resilience.authstate.filestore import read_regular_file
from resilience.authstate.fingerprint import (
    AuthDigest,
    KeyFingerprint,
    creds_fingerprint,
    digest_of_fingerprints,
    next_pre_key_id,
)
from resilience.authstate.model import KeyRecord
from resilience.authstate.naming import CREDS_FILE, file_name_for, resolve_collisions
from resilience.authstate.pgconn import read_transaction
from resilience.authstate.pgimport import creds_text, rows_beside
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import baileys_ref, view_of
from resilience.errors import DataError, InputError, ResilienceError
from resilience.files.importing import (
    ImportResult,
    Ref,
    import_transaction,
    mapped_files,
    require_idle,
    sync_keys,
)
from resilience.files.merge import (
    InstalledBase,
    MergePlan,
    Side,
    plan_merge,
    pre_keys_issued_in_files,
)
from resilience.files.ourside import OurFiles, read_our_files
from resilience.files.wayback_fast import merge_as_exported
from resilience.infra.progress import Meters
from resilience.infra.waiting import wait_until


# --- a directory the service may be writing ----------------------------------------------------
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
    _manifest, files = mapped_files(company_dir, company_id)
    read_creds_file(company_dir, tolerant=True)
    values, _sides = _read_ours(company_dir, files, tolerant=True)
    return len(values)


# --- the merge ---------------------------------------------------------------------------------


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


def merge_import(
    store: PgAuthStore,
    company_dir: Path,
    company_id: str,
    base: InstalledBase | None,
    dry_run: bool,
    meters: Meters,
    started: float,
) -> ImportResult:
    """The way back of ``import_company(three_way=True)``: the merge planned (``dry_run``) or
    written in one verified transaction (module text)."""
    if dry_run:
        _manifest, files = mapped_files(company_dir, company_id)
        return _preview_merge(store, company_dir, company_id, base, files, started)
    require_idle(store.conn)
    creds = read_creds_file(company_dir)
    if base is not None:  # PostgreSQL as the export left it: only what file mode touched
        quick = merge_as_exported(store, company_dir, company_id, base, creds, meters, started)
        if quick is not None:
            return quick
    _manifest, files = mapped_files(company_dir, company_id)
    ours = read_our_files(company_dir, files, base)
    with import_transaction(store, company_id):
        theirs = _read_theirs_beside(store, company_id, files, ours)
        owned = pre_keys_issued_in_files(base, next_pre_key_id(creds), ours.sides, theirs.sides)
        plan = plan_merge(base, ours.sides, theirs.sides, theirs.creds, owned)
        keys, kept = _writes(plan, ours, theirs)
        synced = sync_keys(
            store, company_id, company_dir, files, creds, keys, meters, None, kept, theirs.form
        )
    merged = [ours.sides[name].fingerprint for name in plan.from_files]
    merged += [theirs.sides[name].fingerprint for name in plan.from_postgres]
    result = AuthDigest(company_id, len(merged), digest_of_fingerprints(creds, merged))
    return ImportResult(
        company_id=company_id,
        upserted=synced.upserted,
        deleted=len(synced.deleted),
        unchanged=synced.key_count - synced.upserted,
        key_count=synced.key_count,
        # the server compared the rows with the uploaded ones (the merge's result)
        digest_db=result.digest,
        digest_dir=digest_of_fingerprints(creds, (s.fingerprint for s in ours.sides.values())),
        duration_s=time.monotonic() - started,
        creds_changed=synced.creds_changed,
        removed_files=len(plan.deleted_in_files),
        merge=plan.summary(),
        buffer_form=synced.buffer_form.to_dict() if synced.buffer_form else None,
    )


def _preview_merge(
    store: PgAuthStore,
    company_dir: Path,
    company_id: str,
    base: InstalledBase | None,
    files: Mapping[str, Ref],
    started: float,
) -> ImportResult:
    """The dry run: both sides read (the service may still be writing its files), the merge
    planned, nothing written."""
    creds = read_creds_file(company_dir, tolerant=True)
    _ours, our_sides = _read_ours(company_dir, files, tolerant=True)
    with read_transaction(store.conn):
        theirs_creds, _theirs, their_sides = _read_theirs(store, company_id)
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


# --- the write's reads: only what differs is decoded ----------------------------------------------


class _Row(NamedTuple):
    """A key row as the way back reads it; ``text`` None: its jsonb equals the file of the
    same ``(type, id)`` (one of :attr:`OurFiles.raw`)."""

    key_type: str
    key_id: str
    updated_at: datetime | None
    xmin: str
    text: str | None


@dataclass
class _Theirs:
    """PostgreSQL now as the service sees it: the creds' fingerprint, and by file name the
    row chosen and its :class:`Side` under its Baileys reference."""

    creds: str | None
    rows: dict[str, _Row] = field(default_factory=dict)
    sides: dict[str, Side] = field(default_factory=dict)
    #: the file name of each reference whose file was sent to the server
    name_of: dict[Ref, str] = field(default_factory=dict)
    #: the form rows are written in (PgAuthStore.write_form), from the rows read
    form: FormChoice | None = None

    def value(self, row: _Row, ours: OurFiles) -> Any:
        """The row's value, Buffers as stored."""
        if row.text is None:
            return ours.value(self.name_of[(row.key_type, row.key_id)])
        return parse(row.text, where=f"{row.key_type}/{row.key_id}")


def _read_theirs_beside(
    store: PgAuthStore, company_id: str, files: Mapping[str, Ref], ours: OurFiles
) -> _Theirs:
    """PostgreSQL's creds and rows read beside the files with the base's bytes (their rows
    compared by the server); only the rows that differ from them are decoded."""
    creds = creds_text(store, company_id)
    theirs = _Theirs(None if creds is None else creds_fingerprint(parse(creds, where="creds")))
    name_of = theirs.name_of = {files[name]: name for name in ours.raw}
    texts = ((t, i, ours.raw[name].decode("utf-8")) for (t, i), name in name_of.items())
    chosen: dict[str, _Row] = {}
    twins: dict[str, list[_Row]] = {}  # file names several rows name (legacy twins)
    forms: dict[RowForm, int] = {}
    for found in rows_beside(store, company_id, texts):
        row = _Row(*found)
        name = name_of.get((row.key_type, row.key_id)) or file_name_for(row.key_type, row.key_id)
        if name in chosen:
            twins.setdefault(name, [chosen[name]]).append(row)
        else:
            chosen[name] = row
        form = form_of_compact(ours.raw[name]) if row.text is None else form_of_text(row.text)
        forms[form] = forms.get(form, 0) + 1
    counts = FormCounts(forms, None if creds is None else form_of_text(creds))
    theirs.form = choose(store.buffer_form, counts)  # what write_form would count now
    for name, group in twins.items():
        chosen[name] = _chosen(company_id, group, theirs, ours)
    for name, row in chosen.items():
        ref = baileys_ref(row.key_type, row.key_id)
        theirs.rows[name] = row
        if row.text is None and ref == (row.key_type, row.key_id):
            theirs.sides[name] = Side(ref, ours.sides[name].fingerprint)
        else:
            value = theirs.value(row, ours)
            theirs.sides[name] = Side(ref, KeyFingerprint.of(ref[0], ref[1], value))
    return theirs


def _chosen(company_id: str, group: list[_Row], theirs: _Theirs, ours: OurFiles) -> _Row:
    """The row the service reads of several naming one file (legacy twins), chosen as
    :func:`~resilience.authstate.view.view_of` chooses."""
    records = {
        (row.key_type, row.key_id): KeyRecord(
            company_id, row.key_type, row.key_id, theirs.value(row, ours), row.updated_at, None
        )
        for row in group
    }
    chosen, _collisions = resolve_collisions(records.values())
    (winner,) = chosen.values()
    return next(r for r in group if (r.key_type, r.key_id) == (winner.key_type, winner.key_id))


def _writes(
    plan: MergePlan, ours: OurFiles, theirs: _Theirs
) -> tuple[dict[Ref, Any], dict[Ref, str]]:
    """The merge's keys: those to upload (new, changed, or under another row's reference) and
    the rows kept as they are, by ``xmin``."""
    keys: dict[Ref, Any] = {}
    kept: dict[Ref, str] = {}
    for name, ref in plan.from_files.items():
        row = theirs.rows.get(name)
        if (
            row is not None
            and (row.key_type, row.key_id) == ref
            and theirs.sides[name].fingerprint == ours.sides[name].fingerprint
        ):
            kept[ref] = row.xmin
        else:
            keys[ref] = ours.value(name)
    for name, ref in plan.from_postgres.items():
        row = theirs.rows[name]
        if (row.key_type, row.key_id) == ref:
            kept[ref] = row.xmin
        else:
            keys[ref] = theirs.value(row, ours)
    return keys, kept
