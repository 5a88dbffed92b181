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
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from psycopg.pq import TransactionStatus

from resilience.authstate.filestore import (
    DIR_MODE,
    FILE_MODE,
    TEMP_PREFIX,
    FileAuthStore,
    plan_payloads,
)
from resilience.authstate.naming import (
    CREDS_FILE,
    FILE_SUFFIX,
    MANIFEST_FILE,
    Collision,
    KeyRef,
    company_dir_name,
    file_name_for,
    safe_path,
)
from resilience.authstate.pgstore import Conn, PgAuthStore, database_errors
from resilience.authstate.view import view_of
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError, ResilienceError, VerificationError
from resilience.infra.fsutil import fsync_dir
from resilience.infra.redact import redact_dsn

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
STAGING_PREFIX = ".staging-"
PREVIOUS_PREFIX = ".previous-"
#: A staging directory older than this is a leftover of a crash and is removed by the next swap.
STALE_AFTER_S = 3600.0
#: Disk blocks a small file takes at least; the export estimate counts one per file.
BLOCK_BYTES = 4096
#: Manifest bytes per key (name, type and id, quoted), generously.
MANIFEST_BYTES_PER_KEY = 320

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")
Progress = Callable[[str], None]


def _no_progress(_message: str) -> None:
    return None


# --- results -------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _ref_to_json(ref: KeyRef) -> list[str | None]:
    return [ref[0], ref[1], _iso(ref[2])]


def collision_to_dict(collision: Collision) -> dict[str, Any]:
    """JSON form of a :class:`Collision` (times as ISO 8601)."""
    return {
        "file_name": collision.file_name,
        "chosen": _ref_to_json(collision.chosen),
        "dropped": [_ref_to_json(ref) for ref in collision.dropped],
    }


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


# --- manifest ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of an exported company directory."""

    company_id: str
    source: str
    exported_at: datetime
    key_count: int
    counts_by_type: dict[str, int]
    digest: str
    files: dict[str, tuple[str, str]]  # file name -> Baileys (type, id)
    collisions: list[Collision] = field(default_factory=list)
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "company_id": self.company_id,
            "source": self.source,
            "exported_at": self.exported_at.isoformat(),
            "key_count": self.key_count,
            "counts_by_type": dict(self.counts_by_type),
            "digest": self.digest,
            "files": {name: [t, i] for name, (t, i) in self.files.items()},
            "collisions": [collision_to_dict(c) for c in self.collisions],
        }

    def to_json(self) -> bytes:
        # ASCII only: ids from the network stay readable and never break the file's encoding.
        return (json.dumps(self.to_dict(), indent=1, ensure_ascii=True) + "\n").encode("ascii")


def _bad(path: Path, why: str) -> DataError:
    return DataError(f"manifest {path} is invalid: {why}")


def _time(text: Any, path: Path, what: str) -> datetime | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise _bad(path, f"{what} is not a time")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(path, f"{what} is not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _ref_from_json(item: Any, path: Path) -> KeyRef:
    if (
        not isinstance(item, list)
        or len(item) != 3
        or not isinstance(item[0], str)
        or not isinstance(item[1], str)
    ):
        raise _bad(path, "a collision entry is not [type, id, updated_at]")
    return item[0], item[1], _time(item[2], path, "a collision time")


def _collision_from_json(item: Any, path: Path) -> Collision:
    if not isinstance(item, dict) or not isinstance(item.get("file_name"), str):
        raise _bad(path, "a collision is not an object with a file_name")
    dropped = item.get("dropped")
    if not isinstance(dropped, list):
        raise _bad(path, "a collision has no list of dropped rows")
    return Collision(
        file_name=item["file_name"],
        chosen=_ref_from_json(item.get("chosen"), path),
        dropped=[_ref_from_json(ref, path) for ref in dropped],
    )


def parse_manifest(data: Any, path: Path) -> Manifest:
    """A :class:`Manifest` from parsed JSON; :class:`DataError` naming what is wrong."""
    if not isinstance(data, dict):
        raise _bad(path, "not a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise _bad(path, f"format {data.get('format')!r} is not {MANIFEST_FORMAT}")
    company_id = data.get("company_id")
    try:
        if not isinstance(company_id, str):
            raise InputError("not a string")
        validate_company_id(company_id)
    except InputError:
        raise _bad(path, "company_id is not a valid company id") from None
    digest = data.get("digest")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise _bad(path, "digest is not 64 hex digits")
    files_raw = data.get("files")
    if not isinstance(files_raw, dict):
        raise _bad(path, "files is not an object")
    files: dict[str, tuple[str, str]] = {}
    for name, ref in files_raw.items():
        if (
            not isinstance(ref, list)
            or len(ref) != 2
            or not all(isinstance(part, str) for part in ref)
        ):
            raise _bad(path, f"entry {name[:60]!r} is not [type, id]")
        try:
            expected = file_name_for(ref[0], ref[1])
        except InputError:
            raise _bad(path, f"entry {name[:60]!r} holds a key no file can be named by") from None
        if expected != name:
            raise _bad(path, f"entry {name[:60]!r} holds a key of another file")
        files[name] = (ref[0], ref[1])
    key_count = data.get("key_count")
    if not isinstance(key_count, int) or isinstance(key_count, bool) or key_count != len(files):
        raise _bad(path, "key_count does not match the files listed")
    counts = data.get("counts_by_type")
    if not isinstance(counts, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in counts.values()
    ):
        raise _bad(path, "counts_by_type is not an object of counts")
    collisions = data.get("collisions", [])
    if not isinstance(collisions, list):
        raise _bad(path, "collisions is not a list")
    source = data.get("source")
    if not isinstance(source, str):
        raise _bad(path, "source is not a string")
    exported_at = _time(data.get("exported_at"), path, "exported_at")
    if exported_at is None:
        raise _bad(path, "exported_at is missing")
    return Manifest(
        company_id=company_id,
        source=source,
        exported_at=exported_at,
        key_count=key_count,
        counts_by_type={str(k): int(v) for k, v in counts.items()},
        digest=digest,
        files=files,
        collisions=[_collision_from_json(c, path) for c in collisions],
    )


def read_manifest(company_dir: Path) -> Manifest | None:
    """The manifest of an exported company directory; ``None`` if it has none.

    Raises :class:`DataError` if it cannot be read, does not parse, does not describe this
    directory's company, or lists a key under a file name that key does not have.
    """
    path = Path(company_dir) / MANIFEST_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad(path, "not valid JSON") from None
    manifest = parse_manifest(data, path)
    if Path(company_dir).name != company_dir_name(manifest.company_id):
        raise _bad(path, f"it describes company {manifest.company_id!r}, not this directory")
    return manifest


# --- low-level file helpers ---------------------------------------------------------------------


def write_private(path: Path, payload: bytes, *, fsync: bool = True) -> int:
    """Create ``path`` (which must not exist) with mode 0600, write ``payload`` and (unless
    ``fsync`` is False, for a caller that calls :func:`make_durable` afterwards) fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return len(payload)


def read_raw_files(company_dir: Path) -> dict[str, bytes]:
    """Bytes of every ``*.json`` regular file of a company directory (creds and manifest
    included, temp files skipped), by name. A ``*.json`` entry that is not a regular file, or
    one that cannot be read, raises :class:`DataError`."""
    out: dict[str, bytes] = {}
    try:
        entries = list(os.scandir(company_dir))
    except OSError as exc:
        raise DataError(f"cannot list {company_dir}: {exc.strerror}") from None
    for entry in entries:
        name = entry.name
        if not name.endswith(FILE_SUFFIX) or name.startswith(TEMP_PREFIX):
            continue
        if not entry.is_file(follow_symlinks=False):
            raise DataError(f"{name[:60]!r} in {company_dir} is not a regular file")
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise DataError(f"cannot read {name[:60]!r} in {company_dir}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            out[name] = handle.read()
    return dict(sorted(out.items()))


def key_file_names(company_dir: Path) -> list[str]:
    """Names of the key files of a company directory (not creds, manifest or temp files)."""
    try:
        names = os.listdir(company_dir)
    except OSError as exc:
        raise DataError(f"cannot list {company_dir}: {exc.strerror}") from None
    return sorted(
        n
        for n in names
        if n.endswith(FILE_SUFFIX)
        and n not in (CREDS_FILE, MANIFEST_FILE)
        and not n.startswith(TEMP_PREFIX)
    )


def _dir_bytes(directory: Path) -> tuple[int, int]:
    """(number of regular files, their total size) in ``directory``."""
    files = size = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                files += 1
                size += entry.stat(follow_symlinks=False).st_size
    return files, size


# --- errors of the file system --------------------------------------------------------------------

_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def os_error(exc: OSError, directory: Path, what: str) -> ResilienceError:
    """A one-line error for an OSError met while writing ``what`` into ``directory``."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _NOT_WRITABLE:
        return InputError(f"export dir {directory} is not writable ({reason}); {what} not written")
    if exc.errno in _NO_SPACE:
        return InputError(
            f"no space left in export dir {directory} ({reason}); {what} not written, "
            "the previous directory is intact"
        )
    if exc.errno == errno.ENOTDIR:
        return InputError(f"export dir {directory} is not a directory; {what} not written")
    return InputError(f"cannot write {what} into {directory}: {reason}")


# --- staging and swap -----------------------------------------------------------------------------


def ensure_root(root: Path) -> None:
    """Create ``root`` (0700) if missing; refuse a root that exists but is not a directory."""
    if root.is_dir():
        return
    if root.exists() or root.is_symlink():
        raise InputError(f"export dir {root} exists and is not a directory")
    root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(root, DIR_MODE)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def sweep_stale(directory: Path, previous_of: str | None = None) -> None:
    """Remove what crashed runs left in ``directory``: staging directories untouched for
    :data:`STALE_AFTER_S` and, when ``previous_of`` names a company directory now in place,
    its ``.previous-`` copies. Errors are ignored (the next run tries again)."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            stale_previous = previous_of is not None and entry.name.startswith(
                f"{PREVIOUS_PREFIX}{previous_of}-"
            )
            stale_staging = entry.name.startswith(STAGING_PREFIX) and (
                now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            )
            if stale_previous or stale_staging:
                shutil.rmtree(entry.path, ignore_errors=True)


def _swap(root: Path, staged: Path, final: Path) -> None:
    previous: Path | None = None
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise InputError(f"{final} exists and is not a directory: refusing to replace it")
    if final.exists():
        previous = root / f"{PREVIOUS_PREFIX}{final.name}-{_stamp()}-{secrets.token_hex(3)}"
        os.rename(final, previous)
    try:
        os.rename(staged, final)
    except BaseException:
        if previous is not None:
            os.rename(previous, final)
        raise
    fsync_dir(root)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def stage_and_swap(root: Path, company_id: str, fill: Callable[[Path], T]) -> tuple[Path, T]:
    """Build ``company_<id>`` in a fresh staging directory of ``root`` and swap it into place.

    ``fill(staging)`` must create ``staging/company_<id>/`` with its content. On success the
    previous ``root/company_<id>`` (if any) is replaced and removed; on any failure the staging
    directory is removed and the previous one is left as it was. OSErrors become one-line
    :class:`InputError`\\ s (not writable, no space, ...). Returns the final path and what
    ``fill`` returned.
    """
    name = company_dir_name(company_id)
    root = Path(root)
    try:
        ensure_root(root)
        final = safe_path(root, name)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
        try:
            os.chmod(staging, DIR_MODE)
            out = fill(staging)
            staged = staging / name
            if not staged.is_dir():
                raise InputError(f"nothing was staged for company {company_id!r} in {staging}")
            os.chmod(staged, DIR_MODE)
            fsync_dir(staged)
            _swap(root, staged, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        sweep_stale(root, name)
    except OSError as exc:
        raise os_error(exc, root, f"company {company_id}") from None
    return final, out


# --- reading the database -------------------------------------------------------------------------


@contextmanager
def read_transaction(conn: Conn) -> Iterator[None]:
    """A consistent read: a REPEATABLE READ, READ ONLY transaction when the connection is idle
    (committed at the end, so the connection is idle again), a savepoint inside the caller's
    transaction otherwise."""
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with database_errors("reading the auth state"), conn.transaction():
        if idle:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def estimate_export_bytes(store: PgAuthStore, company_id: str) -> int:
    """Disk an export of the company may take: three times the stored JSON (array Buffers are
    larger than base64, but leave room), a block per file, and the manifest."""
    validate_company_id(company_id)
    with read_transaction(store.conn):
        keys = store.conn.execute(
            "SELECT coalesce(sum(pg_column_size(value)), 0), count(*) FROM whatsapp_keys "
            "WHERE company_id = %s",
            (company_id,),
        ).fetchone()
        creds = store.conn.execute(
            "SELECT coalesce(sum(pg_column_size(creds)), 0) FROM whatsapp_auth "
            "WHERE company_id = %s",
            (company_id,),
        ).fetchone()
    value_bytes = int(keys[0]) if keys else 0
    count = int(keys[1]) if keys else 0
    creds_bytes = int(creds[0]) if creds else 0
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
        raise DataError(f"company {company_id}: {exc}; nothing was exported") from None
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


def export_all(
    store: PgAuthStore,
    root: Path,
    companies: list[str] | None,
    *,
    source: str,
    progress: Progress | None = None,
) -> list[ExportResult]:
    """Export each company (every company in the database when ``companies`` is None), one after
    another; each company directory is replaced atomically. Stops at the first failure."""
    if companies is None:
        with read_transaction(store.conn):
            companies = store.companies()
    for company_id in companies:
        validate_company_id(company_id)
    return [
        export_company(store, root, company_id, source=source, progress=progress)
        for company_id in companies
    ]
