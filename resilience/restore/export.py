"""PostgreSQL -> Baileys directory: the export, its manifest, and the staged swap into place.

An export of company ``X`` into ``root`` ends as ``root/company_X/`` in Baileys' multi-file layout
(``creds.json`` plus one ``<type>-<id>.json`` per key of the service's view, see
:mod:`resilience.authstate.view`) with a ``manifest.json`` beside the files. The manifest records
the exact ``(type, id)`` of every file: file names do not reverse (brief §3), so it is what makes
the way back (:mod:`resilience.restore.importer`) exact.

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

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.authstate.filestore import FileAuthStore, plan_payloads, read_raw_files
from resilience.authstate.naming import CREDS_FILE, MANIFEST_FILE, Collision, company_dir_name
from resilience.authstate.pgstore import PgAuthStore, read_transaction
from resilience.authstate.view import view_of
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError, ResilienceError, VerificationError
from resilience.infra.redact import redact_dsn
from resilience.restore.manifest import Manifest, collision_to_dict
from resilience.restore.staging import stage_and_swap, write_private

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

    def to_dict(self) -> dict[str, Any]:
        return {
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


def one_line(message: str) -> str:
    """``message`` on one line (line breaks become spaces)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def shown_company(company_id: str) -> str:
    """The company id as put in a message: as is when valid, else quoted and cut short (an id
    listed by the database is not checked yet when a failure names it)."""
    try:
        return validate_company_id(company_id)
    except InputError:
        return repr(company_id[:60])


@dataclass(frozen=True)
class CompanyFailure:
    """One company a batch (an export of several, a snapshot) could not write, and why."""

    company_id: str
    #: Class name of the error, e.g. ``DataError``.
    error: str
    #: The error's message, on one line.
    message: str
    #: The exit code of that error class (see :mod:`resilience.errors`).
    exit_code: int

    @classmethod
    def of(cls, company_id: str, exc: ResilienceError) -> CompanyFailure:
        return cls(company_id, type(exc).__name__, one_line(str(exc)), exc.exit_code)

    def to_dict(self) -> dict[str, Any]:
        return {
            "company_id": self.company_id,
            "error": self.error,
            "message": self.message,
            "exit_code": self.exit_code,
        }


@dataclass
class ExportBatch:
    """What :func:`export_all` put in place (``results``) and which companies failed."""

    results: list[ExportResult] = field(default_factory=list)
    failures: list[CompanyFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no company failed."""
        return not self.failures

    @property
    def exit_code(self) -> int:
        """0 when no company failed, else the exit code of the first failure."""
        return self.failures[0].exit_code if self.failures else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exports": [r.to_dict() for r in self.results],
            "failures": [f.to_dict() for f in self.failures],
        }


def _dir_bytes(directory: Path) -> tuple[int, int]:
    """(number of regular files, their total size) in ``directory``."""
    files = size = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                files += 1
                size += entry.stat(follow_symlinks=False).st_size
    return files, size


def estimate_export_bytes(store: PgAuthStore, company_id: str) -> int:
    """Disk an export of the company may take: three times the stored JSON (array Buffers are
    larger than base64, but leave room), a block per file, and the manifest."""
    value_bytes, count, creds_bytes = store.stored_bytes(company_id)
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


def _verify_staged(company_dir: Path, company_id: str, expected: dict[str, bytes]) -> None:
    """Read the staged directory back: every file must hold exactly the bytes meant for it.

    (That those bytes decode to the exported values is pinned by the codec's property tests;
    comparing bytes here costs a read, not a second parse of every file.)"""
    raw = read_raw_files(company_dir)
    if raw.keys() != expected.keys():
        raise VerificationError(
            f"export of company {company_id} wrote {len(raw)} files, {len(expected)} were meant"
        )
    wrong = [name for name, payload in raw.items() if payload != expected[name]]
    if wrong:
        raise VerificationError(
            f"export of company {company_id} does not read back as written: "
            f"{len(wrong)} file(s) differ"
        )


def export_company(
    store: PgAuthStore,
    root: Path,
    company_id: str,
    *,
    source: str,
    progress: Progress | None = None,
    verify: bool = True,
) -> ExportResult:
    """Export one company from PostgreSQL to ``root/company_<id>`` (see the module text).

    ``source`` names where the data came from (a DSN is redacted again here). With ``verify``
    the staged directory is read back and its digest compared before it replaces anything.
    Raises :class:`InputError` (unknown company, hostile ids, unwritable or full export dir),
    :class:`DataError` (keys without creds, values that do not decode),
    :class:`VerificationError` or :class:`DatabaseError`; on any of them nothing changed.
    """
    started = time.monotonic()
    report = progress or _no_progress
    validate_company_id(company_id)
    try:
        with read_transaction(store.conn):
            creds = store.load_creds(company_id)
            records = store.records(company_id)
    except DataError as exc:
        raise DataError(f"company {company_id} was not exported: {exc}") from None
    report(f"company {company_id}: read creds and {len(records)} key rows")
    if creds is None and not records:
        raise InputError(f"unknown company {company_id}: no creds and no keys in the database")
    if creds is None:
        raise DataError(
            f"company {company_id} has {len(records)} keys but no creds in the database: "
            "the account must be re-paired (QR code)"
        )
    view = view_of(company_id, creds, records)  # every file name checked before any write
    digest = view.digest()
    manifest = Manifest(
        company_id=company_id,
        source=redact_dsn(source),
        exported_at=datetime.now(UTC),
        key_count=len(view.entries),
        counts_by_type=view.counts_by_type(),
        digest=digest.digest,
        files={name: (e.key_type, e.key_id) for name, e in view.entries.items()},
        collisions=view.collisions,
    )
    for collision in view.collisions:
        report(
            f"company {company_id}: {collision.file_name} named by "
            f"{1 + len(collision.dropped)} rows; kept {collision.chosen[0]}/{collision.chosen[1]}"
        )
    manifest_json = manifest.to_json()

    def fill(staging: Path) -> None:
        # The staging directory is invisible until the swap: write it whole, sync it once.
        creds_payload, planned = plan_payloads(creds, view.key_values())
        FileAuthStore(staging).write_new_dir(company_id, creds_payload, planned)
        staged = staging / company_dir_name(company_id)
        write_private(staged / MANIFEST_FILE, manifest_json)
        if verify:
            expected = {name: p for name, p in planned.items() if p is not None}
            if creds_payload is not None:
                expected[CREDS_FILE] = creds_payload
            expected[MANIFEST_FILE] = manifest_json
            _verify_staged(staged, company_id, expected)

    directory, _ = stage_and_swap(Path(root), company_id, fill)
    files, size = _dir_bytes(directory)
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
    )


def companies_to_export(store: PgAuthStore, companies: list[str] | None) -> list[str]:
    """The companies a batch works on: every company in the database when ``companies`` is None
    (ids checked later, one company at a time), else ``companies`` in order without repeats,
    each a valid id present in the database. An operator's typo is an :class:`InputError`
    raised before anything is written, not a failure of one company."""
    if companies is None:
        with read_transaction(store.conn):
            return store.companies()
    wanted = list(dict.fromkeys(validate_company_id(c) for c in companies))
    if not wanted:
        return []
    with read_transaction(store.conn):
        present = set(store.companies())
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise InputError(
            f"unknown company {', '.join(unknown)}: no creds and no keys in the database; "
            "nothing was exported"
        )
    return wanted


def export_all(
    store: PgAuthStore,
    root: Path,
    companies: list[str] | None,
    *,
    source: str,
    progress: Progress | None = None,
) -> ExportBatch:
    """Export each company (every company in the database when ``companies`` is None), one after
    another; each company directory is replaced atomically.

    A :class:`~resilience.errors.ResilienceError` of one company is recorded in the batch's
    ``failures`` (its previous directory is left as it was) and the next company is exported;
    other exceptions propagate. Raises :class:`InputError` before writing anything when a
    company named in ``companies`` is not a valid id or not in the database.
    """
    report = progress or _no_progress
    batch = ExportBatch()
    for company_id in companies_to_export(store, companies):
        try:
            result = export_company(store, root, company_id, source=source, progress=progress)
        except ResilienceError as exc:
            failure = CompanyFailure.of(company_id, exc)
            batch.failures.append(failure)
            report(
                f"company {shown_company(company_id)}: FAILED, not exported "
                f"({failure.error}): {failure.message}"
            )
        else:
            batch.results.append(result)
    if batch.failures:
        failed = ", ".join(shown_company(f.company_id) for f in batch.failures)
        report(
            f"{len(batch.results)} company(ies) exported, {len(batch.failures)} failed: {failed}"
        )
    return batch
