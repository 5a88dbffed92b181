"""Where a restarted mirror picks up: the position it last confirmed, and each company's
directory when it still matches that position (else the company is exported again)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from resilience.authstate.filestore import TEMP_PREFIX, FileAuthStore
from resilience.authstate.fingerprint import KeyFingerprint
from resilience.errors import DataError, ResilienceError
from resilience.files.importer import read_directory
from resilience.mirror.position import Position, read_position
from resilience.mirror.state import CompanyState


def carry_over(root: Path, position: Position) -> None:
    """Keep what the last position confirmed (its time, the moment the database was
    lost, the companies' digests) until this process confirms a newer one: a mirror
    restarted while the database is down must not forget the position it reached."""
    try:
        previous = read_position(root)
    except DataError:
        return
    if previous is None:
        return
    p = position
    p.confirmed_at, p.failing_since = previous.confirmed_at, previous.failing_since
    p.last_change_id = previous.last_change_id
    p.companies = dict(previous.companies)
    p.reconcile_at = previous.reconcile_at
    p.reconcile_repairs_total = previous.reconcile_repairs_total


def resume_company(
    files: FileAuthStore,
    company_id: str,
    previous: Position | None,
    on_event: Callable[[str], None],
) -> CompanyState | None:
    """The company's state read back from its directory, if the previous position recorded
    the same digest; None (said through ``on_event``) when it must be exported again."""
    if previous is None or company_id not in previous.companies:
        return None
    try:
        directory = files.company_dir(company_id)
        for leftover in directory.glob(f"{TEMP_PREFIX}*"):  # a cycle killed mid-write
            leftover.unlink(missing_ok=True)
        state = read_directory(directory, company_id)
    except ResilienceError as exc:
        on_event(f"company {company_id}: directory not resumable ({exc})")
        return None
    entries = {
        name: (*ref, KeyFingerprint.of(*ref, state.values[name]))
        for name, ref in state.files.items()
    }
    collisions = {c.file_name: c for c in state.manifest.collisions} if state.manifest else {}
    resumed = CompanyState(company_id, state.creds, entries, collisions)
    if resumed.digest() != previous.companies[company_id].get("digest"):
        on_event(f"company {company_id}: directory differs from its position")
        return None
    return resumed
