"""The way back when PostgreSQL is as the export left it: only what file mode touched is read.

After a live export (the switch stopped the service, exported, recorded the base, started the
service in file mode) PostgreSQL is usually untouched until the way back: every key row still
has the version the export read (:mod:`.untouched`). Then PostgreSQL's side of the merge is
the base itself, and the directory's side is the base except for the files the service
touched (their signatures differ). So the way back here:

- stats every key file and reads only those whose signature differs from the base's (each
  then compared by its bytes, and decoded only when they are not the base's);
- reads every row's version (one narrow statement) and, when one differs from the export's,
  leaves the merge to :mod:`.wayback`, which reads everything (nothing is decided here);
- plans the merge over the touched names only (every other name is unchanged on all three
  sides) and writes only what file mode changed: the rows it keeps are named by version and
  checked by the server before commit (:func:`~resilience.authstate.pgimport.sync_company`);
  with nothing to write, only the creds are synced and the rows' versions are read again
  before commit (a row changed meanwhile rolls back: :class:`VerificationError`).

The plan, the rows written and the digests are those the full merge gives for the same three
sides (pinned by ``tests/test_wayback_fast.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from resilience.authstate.bufferform import FormChoice
from resilience.authstate.codec import Style, parse
from resilience.authstate.filestore import read_regular_file
from resilience.authstate.fingerprint import (
    creds_fingerprint,
    digest_of_fingerprints,
    next_pre_key_id,
)
from resilience.authstate.naming import MANIFEST_FILE, try_parse_file_name
from resilience.authstate.pgimport import creds_text, sync_creds
from resilience.authstate.pgstore import PgAuthStore
from resilience.errors import DataError, VerificationError
from resilience.files.importing import (
    ImportResult,
    Ref,
    import_transaction,
    mapped_files,
    refuse_appeared,
    refuse_unmappable,
    sync_keys,
)
from resilience.files.merge import InstalledBase, MergePlan, Side, plan_merge
from resilience.files.merge import pre_keys_issued_in_files as issued_in_files
from resilience.files.ourside import OurFiles, read_our_files
from resilience.files.untouched import (
    Scan,
    file_signatures,
    scan_directory,
    untouched_files,
    versions_again,
    versions_now,
)
from resilience.infra.progress import Meters


def merge_as_exported(
    store: PgAuthStore,
    company_dir: Path,
    company_id: str,
    base: InstalledBase,
    creds: Any,
    meters: Meters,
    started: float,
) -> ImportResult | None:
    """The way back written in one verified transaction when every row is as the export read
    it (module text); None, with nothing written, when the base recorded no versions and
    signatures or a row differs (the caller then merges reading everything)."""
    rows, stats = base.rows, base.stats
    if rows is None or stats is None:
        return None
    with import_transaction(store, company_id), ThreadPoolExecutor(1) as pool:
        # the server sums the rows' versions while the files are listed and stat'ed
        asked = pool.submit(versions_now, store.conn, company_id)
        files, untouched, scan = _mapped(company_dir, company_id, rows, stats)
        touched = {name: ref for name, ref in files.items() if name not in untouched}
        ours = read_our_files(company_dir, touched, base)
        now, again = asked.result()
        if now != base.versions_sum():
            return None
        theirs_text = creds_text(store, company_id)
        theirs_creds = None if theirs_text is None else parse(theirs_text, where="creds")
        plan, names = _plan(base, rows, files, untouched, ours, creds, theirs_creds)
        keys, kept = _writes(plan, base, names, company_dir, ours)
        if keys or len(kept) != len(rows):
            synced = sync_keys(
                store, company_id, company_dir, files, creds, keys, meters, None, kept
            )
            upserted, deleted = synced.upserted, len(synced.deleted)
            creds_changed = synced.creds_changed
            buffer_form = synced.buffer_form.to_dict() if synced.buffer_form else None
        else:
            creds_changed, buffer_form = _sync_creds_only(
                store, company_id, company_dir, files, creds, scan
            )
            if versions_again(store.conn, company_id) != again:
                raise VerificationError(
                    f"way back of company {company_id}: key rows changed while it ran "
                    "(is the service writing to PostgreSQL?); rolled back, nothing changed"
                )
            upserted, deleted = 0, 0
    as_installed = not touched and len(untouched) == len(base.keys)
    if as_installed and not keys and creds_fingerprint(creds) == base.creds:
        digest = digest_dir = base.digest  # every file, row and the creds as installed
    else:
        digest, digest_dir = _digests(base, plan, names, untouched, ours, creds)
    return ImportResult(
        company_id=company_id,
        upserted=upserted,
        deleted=deleted,
        unchanged=len(keys) + len(kept) - upserted,
        key_count=len(keys) + len(kept),
        digest_db=digest,  # the server compared the rows with the merge's (or their versions)
        digest_dir=digest_dir,
        duration_s=time.monotonic() - started,
        creds_changed=creds_changed,
        removed_files=len(plan.deleted_in_files),
        merge=plan.summary(),
        buffer_form=buffer_form,
    )


def _mapped(
    company_dir: Path,
    company_id: str,
    rows: Mapping[str, list[str]],
    stats: Mapping[str, list[int]],
) -> tuple[dict[str, Ref], set[str], Scan | None]:
    """The key files mapped back to their ``(type, id)`` and those untouched: in one pass,
    by the exported rows, while the manifest is the one installed (it maps them so); else by
    :func:`mapped_files`. With the pass, what it saw of the directory."""
    now = file_signatures(company_dir, [MANIFEST_FILE]).get(MANIFEST_FILE)
    if now is None or now != stats.get(MANIFEST_FILE):
        files = mapped_files(company_dir, company_id)[1]
        return files, untouched_files(company_dir, files, stats), None
    scan = scan_directory(company_dir, rows, stats)
    unmappable: list[str] = []
    for name in scan.unmapped:  # created in file mode: mapped by name where that is exact
        ref = try_parse_file_name(name)
        if ref is None:
            unmappable.append(name)
        else:
            scan.files[name] = ref
    refuse_unmappable(company_dir, sorted(unmappable))
    return scan.files, scan.untouched, scan


def _digests(
    base: InstalledBase,
    plan: MergePlan,
    names: Mapping[str, Side],
    untouched: set[str],
    ours: OurFiles,
    creds: Any,
) -> tuple[str, str]:
    """(the merge's digest, the directory's): the base's fingerprints but for what file mode
    changed."""
    merged = dict(base.keys)
    for name in plan.deleted_in_files:
        merged.pop(name, None)
    for name in plan.from_files:
        merged[name] = names[name].fingerprint
    dir_prints = [base.keys[n] for n in untouched] + [s.fingerprint for s in ours.sides.values()]
    return (
        digest_of_fingerprints(creds, merged.values()),
        digest_of_fingerprints(creds, dir_prints),
    )


def _plan(
    base: InstalledBase,
    rows: Mapping[str, list[str]],
    files: Mapping[str, Ref],
    untouched: set[str],
    ours: OurFiles,
    creds: Any,
    theirs_creds: Any | None,
) -> tuple[MergePlan, dict[str, Side]]:
    """The merge over the names file mode touched (created, changed, deleted, or pre-key ids
    it issued); every other name is the base's on all three sides: unchanged. Also the
    directory's side of the names planned."""
    owned = issued_in_files(base, next_pre_key_id(creds), files, rows)
    names = set(files) - untouched
    names.update(name for name in base.keys if name not in files)
    names.update(owned)
    planned = replace(base, keys={n: base.keys[n] for n in names if n in base.keys})
    our_sides = {
        name: ours.sides[name] if name in ours.sides else Side(files[name], base.keys[name])
        for name in names
        if name in files
    }
    their_sides = {
        name: Side((rows[name][0], rows[name][1]), base.keys[name])
        for name in names
        if name in rows
    }
    theirs_print = None if theirs_creds is None else creds_fingerprint(theirs_creds)
    plan = plan_merge(planned, our_sides, their_sides, theirs_print, owned)
    plan.unchanged += len(untouched - names)
    return plan, our_sides


def _writes(
    plan: MergePlan,
    base: InstalledBase,
    our_sides: Mapping[str, Side],
    company_dir: Path,
    ours: OurFiles,
) -> tuple[dict[Ref, Any], dict[Ref, str]]:
    """The keys to upload (created or changed in file mode, as :mod:`.wayback` decides them)
    and every other row kept, by the version read (the rows of files deleted in file mode,
    and those a file now names under another reference, are neither: deleted)."""
    rows = base.rows or {}
    keys: dict[Ref, Any] = {}
    kept = {(t, i): version for t, i, version in rows.values()}
    for name, ref in plan.from_files.items():
        row = rows.get(name)
        if row is not None:
            if (row[0], row[1]) == ref and our_sides[name].fingerprint == base.keys[name]:
                continue  # the row as exported holds the file's value
            del kept[(row[0], row[1])]
        keys[ref] = _value(ours, company_dir, name)
    for name in plan.deleted_in_files:
        kept.pop((rows[name][0], rows[name][1]), None)
    return keys, kept


def _value(ours: OurFiles, company_dir: Path, name: str) -> Any:
    """The file's value, Buffers as written (read now if the merge did not read it)."""
    if name in ours.values or name in ours.raw:
        return ours.value(name)
    try:
        return parse(read_regular_file(company_dir, name), where=name)
    except FileNotFoundError:
        raise DataError(f"{name[:80]!r} in {company_dir} vanished while it was read") from None


def _sync_creds_only(
    store: PgAuthStore,
    company_id: str,
    company_dir: Path,
    files: Mapping[str, Ref],
    creds: Any,
    scan: Scan | None,
) -> tuple[bool, dict[str, Any] | None]:
    """The creds synced when no key row changes: (changed, the Buffer form they were written
    in, None when not written); a key file that appeared meanwhile fails the way back inside
    the transaction (as :func:`~.importing.sync_keys` does)."""
    forms: list[FormChoice] = []

    def style() -> Style:
        forms.append(store.write_form(company_id))
        return forms[0].style

    changed, equal = sync_creds(store, company_id, creds, style)
    if not equal:
        raise VerificationError(
            f"way back of company {company_id}: the creds read back differ; rolled back"
        )
    if scan is not None and scan.unchanged_since(company_dir):
        return changed, forms[0].to_dict() if forms else None  # no name came or went
    refuse_appeared(company_dir, files)
    return changed, forms[0].to_dict() if forms else None
