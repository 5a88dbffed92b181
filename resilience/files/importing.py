"""What the import (:mod:`.importer`) and the way back's merge (:mod:`.wayback`) share: key
files mapped back to their ``(type, id)``, the one transaction, the verified write and what
it reports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.pq import TransactionStatus

from resilience.authstate.bufferform import FormChoice
from resilience.authstate.filestore import key_file_names, key_file_set
from resilience.authstate.naming import company_dir_name, file_name_for, try_parse_file_name
from resilience.authstate.pgconn import Conn, database_errors
from resilience.authstate.pgimport import SyncResult, sync_company
from resilience.authstate.pgstore import PgAuthStore
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError
from resilience.files.manifest import Manifest, read_manifest
from resilience.infra.progress import Meters

Ref = tuple[str, str]
SHOWN_UNMAPPABLE = 10


def listed(names: list[str], limit: int = SHOWN_UNMAPPABLE) -> str:
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


def mapped_files(company_dir: Path, company_id: str) -> tuple[Manifest | None, dict[str, Ref]]:
    """The directory's manifest and its key files mapped back; :class:`DataError` listing the
    names that cannot be mapped without guessing."""
    validate_company_id(company_id)
    if company_dir.name != company_dir_name(company_id):
        raise InputError(f"{company_dir} is not the directory of company {company_id}")
    manifest = read_manifest(company_dir)
    mapped, unmappable = _map_names(company_dir, manifest)
    refuse_unmappable(company_dir, unmappable)
    return manifest, mapped


def refuse_unmappable(company_dir: Path, unmappable: list[str]) -> None:
    """:class:`DataError` listing the key files that cannot be mapped back without guessing."""
    if unmappable:
        raise DataError(
            f"{len(unmappable)} key file(s) in {company_dir} cannot be mapped back to a key id "
            f"without guessing: {listed(unmappable)}; nothing was imported"
        )


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


def require_idle(conn: Conn) -> None:
    """:class:`InputError` unless ``conn`` is outside any transaction (the import commits its
    own)."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise InputError(
            "import needs a transaction of its own but the connection is already inside one: "
            "commit or roll back first"
        )


@contextlib.contextmanager
def import_transaction(store: PgAuthStore, company_id: str) -> Iterator[None]:
    """The import's one transaction; one import per company at a time (an advisory lock,
    released at commit or rollback)."""
    conn = store.conn
    with database_errors("importing the auth state"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"import:{company_id}",))
        yield


def sync_keys(
    store: PgAuthStore,
    company_id: str,
    company_dir: Path,
    files: Mapping[str, Ref],
    creds: Any,
    keys: Mapping[Ref, Any],
    meters: Meters,
    prints: list[str] | None,
    kept: Mapping[Ref, str] | None = None,
    form: FormChoice | None = None,
) -> SyncResult:
    """``keys`` (and the rows ``kept``) made the company's rows
    (:func:`~resilience.authstate.pgimport.sync_company`), with progress; a file that appeared
    in the directory meanwhile fails it inside the transaction (nothing is imported)."""
    meter = meters.start(f"import {company_id}", len(keys), "keys")
    try:
        synced = sync_company(
            store,
            company_id,
            creds,
            keys,
            where=lambda t, i: file_name_for(t, i),
            advance=meter.advance,
            prints=prints,
            kept=kept,
            form=form,
        )
    finally:
        meter.close()
    refuse_appeared(company_dir, files)
    return synced


def refuse_appeared(company_dir: Path, files: Mapping[str, Ref]) -> None:
    """:class:`DataError` (inside the import's transaction: nothing imported) when key files
    that were not read appeared in the directory meanwhile."""
    appeared = key_file_set(company_dir) - files.keys()
    if appeared:
        raise DataError(
            f"{company_dir} changed while it was being read: {listed(sorted(appeared))} appeared"
        )
