"""Installing a snapshot's copy of a company (the switch's fallback when PostgreSQL is down):
checked against the snapshot's manifest digest, then staged and swapped into the auth root like
an export; or, faster, the standby copy :func:`prepare_standby` left beside it, renamed into
place once its files are read back against that digest."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from resilience.authstate.dirwriter import NewDirWriter
from resilience.authstate.filestore import DIR_MODE, make_durable
from resilience.authstate.fingerprint import AuthDigest, creds_fingerprint, next_pre_key_id
from resilience.authstate.naming import MANIFEST_FILE, company_dir_name, safe_path
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError, VerificationError
from resilience.files.export import ExportResult
from resilience.files.importer import DirectoryState, read_directory
from resilience.files.snapshot import CompanyEntry, Snapshot
from resilience.files.staging import stage_and_swap

log = logging.getLogger(__name__)

STANDBY_PREFIX = ".standby-"


def standby_name(company_id: str) -> str:
    """The standby copy's name in the auth root: ``.standby-company_<id>``."""
    return STANDBY_PREFIX + company_dir_name(company_id)


class _NoStandby(Exception):
    """The standby copy cannot be used (gone, corrupt or of another snapshot): copy instead."""


def prepare_standby(snapshot: Snapshot, company_id: str, root: Path) -> ExportResult:
    """A verified, durable copy of the snapshot's ``company_id`` in ``root`` (the service's
    Baileys directory) as ``.standby-company_<id>``, replacing an older one. When PostgreSQL is
    unreachable, :func:`install_snapshot` of this snapshot then renames it into place instead of
    creating every file during the incident (a thousand file creations cost 0.2-1 s of kernel
    time on the machines we measured). Taken with the snapshot, not in an incident."""
    return _verified_copy(
        snapshot, company_id, root, None, standby_name(company_id), time.monotonic()
    )


def install_snapshot(
    snapshot: Snapshot, company_id: str, root: Path, *, set_aside: list[Path] | None = None
) -> ExportResult:
    """Verify the snapshot's copy of ``company_id`` and install it as ``root/company_<id>``.

    The standby copy :func:`prepare_standby` left in ``root`` is claimed (renamed into a staging
    directory, so a snapshot preparing a newer one cannot change it), read back and checked
    against this snapshot's digest, then swapped into place: no file is created. Without a
    standby of this very snapshot, every file is read once, checked against the manifest digest
    (and the digest recorded in ``snapshot.json``), and the very bytes checked are written,
    through the export's staging and swap (``set_aside``: see
    :func:`~resilience.files.staging.stage_and_swap`). A corrupt snapshot raises
    :class:`VerificationError` and changes nothing.
    """
    started = time.monotonic()
    entry = _entry(snapshot, company_id)
    standby = safe_path(Path(root), standby_name(company_id))
    if standby.is_dir() and not standby.is_symlink():
        try:
            return _from_standby(
                snapshot, company_id, root, standby, entry["digest"], set_aside, started
            )
        except _NoStandby as why:
            log.warning("install of %s: standby copy not used (%s): copying", company_id, why)
    return _verified_copy(snapshot, company_id, root, set_aside, None, started)


def _entry(snapshot: Snapshot, company_id: str) -> CompanyEntry:
    validate_company_id(company_id)
    entry = snapshot.companies.get(company_id)
    if entry is None:
        raise InputError(f"snapshot {snapshot.path.name} holds no company {company_id}")
    return entry


def _from_standby(
    snapshot: Snapshot,
    company_id: str,
    root: Path,
    standby: Path,
    digest: str,
    set_aside: list[Path] | None,
    started: float,
) -> ExportResult:
    def claim(staging: Path) -> tuple[DirectoryState, AuthDigest]:
        target = staging / company_dir_name(company_id)
        try:
            os.rename(standby, target)
        except FileNotFoundError:
            raise _NoStandby("it is gone") from None
        try:
            state = read_directory(target, company_id)
        except DataError as exc:
            raise _NoStandby(f"it does not read back: {exc}") from None
        found = state.digest()
        if state.manifest is None or found.digest != digest:
            raise _NoStandby(f"it is not a copy of snapshot {snapshot.path.name}")
        return state, found

    directory, (state, found) = stage_and_swap(Path(root), company_id, claim, set_aside=set_aside)
    assert state.manifest is not None  # checked by claim
    return ExportResult(
        company_id=company_id,
        directory=directory,
        key_count=found.key_count,
        counts_by_type=state.manifest.counts_by_type,
        digest=found.digest,
        collisions=state.manifest.collisions,
        files_written=0,  # renamed into place, none created
        bytes_written=0,
        duration_s=time.monotonic() - started,
        installed_from="standby",
        fingerprints=state.fingerprints(),
        creds_print=creds_fingerprint(state.creds),
        next_pre_key_id=next_pre_key_id(state.creds),
    )


def _verified_copy(
    snapshot: Snapshot,
    company_id: str,
    root: Path,
    set_aside: list[Path] | None,
    final_name: str | None,
    started: float,
) -> ExportResult:
    entry = _entry(snapshot, company_id)
    name = snapshot.path.name
    source = snapshot.company_dir(company_id)
    try:
        state = read_directory(source, company_id)
    except DataError as exc:
        raise VerificationError(
            f"snapshot {name} of company {company_id} is corrupt: {exc}"
        ) from None
    manifest = state.manifest
    if manifest is None:
        raise VerificationError(
            f"snapshot {name} of company {company_id} is corrupt: no {MANIFEST_FILE}"
        )
    digest = state.digest()
    if digest.digest != manifest.digest or digest.digest != entry["digest"]:
        raise VerificationError(
            f"snapshot {name} of company {company_id} is corrupt: digest mismatch"
        )

    def fill(staging: Path) -> int:
        target = staging / company_dir_name(company_id)
        os.mkdir(target, DIR_MODE)
        writer = NewDirWriter(target, expected=len(state.raw))
        try:
            for file_name, payload in state.raw.items():
                writer.put(file_name, payload)
        except BaseException:
            writer.abort()
            raise
        names = writer.close()
        make_durable(target, names)  # once, before the staged directory is swapped in
        return sum(len(payload) for payload in state.raw.values())

    directory, size = stage_and_swap(
        Path(root), company_id, fill, set_aside=set_aside, final_name=final_name
    )
    return ExportResult(
        company_id=company_id,
        directory=directory,
        key_count=digest.key_count,
        counts_by_type=manifest.counts_by_type,
        digest=digest.digest,
        collisions=manifest.collisions,
        files_written=len(state.raw),
        bytes_written=size,
        duration_s=time.monotonic() - started,
        installed_from="copy",
        fingerprints=state.fingerprints(),
        creds_print=creds_fingerprint(state.creds),
        next_pre_key_id=next_pre_key_id(state.creds),
    )
