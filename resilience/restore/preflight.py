"""Preflight of the emergency switch: facts gathered before anything changes.

Is the database reachable (a slow one is not a lost one)? Is the tag there and the work tree
clean? Is the PM2 app there? Is there disk for the export, or a snapshot young enough when the
database is gone? Can every file name be mapped back? `problems` block the run; the plan built
from these facts is what the operator confirms.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from resilience.alerting.channels import alert_warnings
from resilience.authstate.pgconn import DbLink, connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.config import validate_company_id
from resilience.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnreachable,
    DataError,
    ResilienceError,
    StackError,
)
from resilience.files import export as export_mod
from resilience.files import importer, snapshot
from resilience.files.merge import InstalledBase
from resilience.mirror.fallback import mirror_fallback
from resilience.restore.state import SwitchState
from resilience.restore.target import Target
from resilience.service import envfile, gitref

Direction = Literal["to-files", "to-postgres"]


@dataclass
class Preflight:
    """Facts gathered before anything changes; `problems` block the run."""

    direction: Direction
    company_id: str
    db_reachable: bool = False
    # "reachable", "outage" (the only verdict that allows a snapshot), "misconfigured" (the
    # DSN is wrong: a typo is never read as an outage) or "unknown"
    db_verdict: str = "unknown"
    db_error: str | None = None
    service_company: str | None = None  # the company the service says it serves
    key_count: int | None = None
    snapshot_path: str | None = None
    snapshot_age_s: float | None = None
    # the live mirror (resilience.mirror), used instead of the snapshot when it is fresher
    mirror_dir: str | None = None
    mirror_confirmed_at: str | None = None
    mirror_loss_window_s: float | None = None
    tag: str | None = None
    tag_commit: str | None = None
    current_ref: str | None = None
    dirty: list[str] = field(default_factory=list)
    pm2_status: str | None = None
    pm2_out_log: str | None = None  # the app's log, watched after the restart
    env_mode: str | None = None
    disk_free: int | None = None
    disk_needed: int | None = None
    unmappable: list[str] = field(default_factory=list)
    #: to-postgres: what the switch to files installed, and the three-way merge's preview
    base_source: str | None = None
    merge: dict[str, Any] | None = None
    #: what kind of refusal the problems make: "input" (exit 2), "data" (a file that does
    #: not decode, exit 4) or "database" (unreachable on the way back, exit 6)
    refusal: str = "input"
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # said, but they do not block the run
    plan: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preflight(
    target: Target,
    direction: Direction,
    *,
    force: bool = False,
    link: DbLink | None = None,
    before_query: Callable[[Preflight], None] | None = None,
) -> Preflight:
    """The facts. With ``link`` the database is asked through that connection (kept open for
    the export: one connect, one statement here).

    ``before_query`` (to-files) is called once connected, when every check that does not need
    the database's answer has passed and the service itself says it serves this company: the
    switch begins stopping the service then, so the stop runs while the statement waits for a
    slow database. Problems found in the answer are the caller's to undo."""
    validate_company_id(target.company_id)
    s = target.settings
    facts = Preflight(direction, target.company_id)
    with contextlib.ExitStack() as opened:
        conn = _database(facts, lambda: link.conn if link else opened.enter_context(
            connect(target.service_dsn, timeout=s.db_connect_timeout)
        ))  # fmt: skip
        _check_company(target, facts)
        facts.warnings += alert_warnings(s)
        try:
            mode = envfile.current_mode(target.env_file)
            facts.env_mode = mode
        except ResilienceError as exc:
            facts.problems.append(str(exc))
        _check_local(target, facts, direction)
        try:
            described = target.pm2.require(s.pm2_app)
            facts.pm2_status = described.status
            facts.pm2_out_log = str(described.out_log) if described.out_log else None
        except StackError as exc:
            facts.problems.append(str(exc))
        if direction == "to-files":
            _preflight_code(target, facts, force)
        if conn is not None:
            store = PgAuthStore(conn)
            if direction == "to-files":
                _export_dir_checks(target, facts)
            if (
                before_query is not None
                and direction == "to-files"
                and not facts.problems
                and facts.service_company == target.company_id
            ):
                before_query(facts)
            if direction == "to-files":  # one statement: the count and the disk estimate
                stored = _database(facts, lambda: store.stored_bytes(target.company_id))
                if stored is not None:
                    facts.key_count = stored[1]
                    facts.disk_needed = export_mod.estimate_from_stored(*stored)
            else:
                facts.key_count = _database(facts, lambda: store.count_keys(target.company_id))
                if facts.key_count is not None:
                    _merge_preview(target, facts, store)
            if facts.key_count is not None:  # the database answered
                facts.db_reachable = True
                facts.db_verdict = "reachable"

    if direction == "to-files":
        _preflight_to_files(target, facts, force)
    else:
        _preflight_to_postgres(target, facts)
    return facts


_T = TypeVar("_T")


def _database(facts: Preflight, ask: Callable[[], _T]) -> _T | None:
    """``ask()`` of the database, or None with the verdict and the problem in ``facts``."""
    try:
        return ask()
    except (ConfigError, DatabaseError) as exc:
        _database_failed(facts, exc)
    return None


def _database_failed(facts: Preflight, exc: ConfigError | DatabaseError) -> None:
    """The verdict and the problem a failed question to the database makes."""
    if isinstance(exc, DatabaseUnreachable):
        facts.db_verdict, facts.db_error = "outage", str(exc)
    elif isinstance(exc, ConfigError):
        facts.db_verdict, facts.db_error = "misconfigured", str(exc)
        facts.problems.append(
            f"PostgreSQL is not down, the configuration is wrong (RESILIENCE_SERVICE_DSN): {exc}; "
            "fix it, no snapshot is used for a typo"
        )
    else:
        facts.db_error = str(exc)
        facts.problems.append(
            f"cannot tell whether PostgreSQL is down ({exc}): not falling back to a snapshot"
        )


def _preflight_code(target: Target, facts: Preflight, force: bool) -> None:
    s = target.settings
    if not s.fallback_tag:
        return
    if s.service_dir is None:
        facts.problems.append("RESILIENCE_FALLBACK_TAG needs RESILIENCE_SERVICE_DIR (the git tree)")
        return
    facts.tag = s.fallback_tag
    try:
        facts.tag_commit = gitref.require_tag(s.service_dir, s.fallback_tag)
        facts.current_ref = gitref.current_ref(s.service_dir)
        facts.dirty = gitref.is_dirty(s.service_dir)
    except ResilienceError as exc:
        facts.problems.append(str(exc))
        return
    if facts.dirty and not force:
        shown = ", ".join(facts.dirty[:5])
        facts.problems.append(
            f"work tree {s.service_dir} has local changes ({shown}): commit them, or --force "
            "(discards them)"
        )


def _preflight_to_files(target: Target, facts: Preflight, force: bool) -> None:
    s = target.settings
    if facts.db_verdict not in ("reachable", "outage"):
        return  # the problem is said already; neither an export nor a snapshot
    if facts.db_reachable:
        if facts.key_count == 0:
            facts.problems.append(f"unknown company {target.company_id}: no keys in the database")
        if (
            facts.disk_free is not None
            and facts.disk_needed
            and facts.disk_free < facts.disk_needed
        ):
            facts.problems.append(
                f"not enough disk for the export: {facts.disk_free} bytes free in "
                f"{_export_probe(target)}, about {facts.disk_needed} needed"
            )
    elif not _preflight_mirror(target, facts, force):
        found = snapshot.newest_snapshot(s.snapshot_dir, target.company_id)
        if found is None:
            facts.problems.append(
                f"{facts.db_error}, and there is no snapshot of "
                f"company {target.company_id} in {s.snapshot_dir}"
            )
        else:
            facts.snapshot_path = str(found.path)
            facts.snapshot_age_s = round(found.age_s(), 1)
            if found.age_s() > s.snapshot_max_age and not force:
                facts.problems.append(
                    f"newest snapshot is {found.age_s():.0f} s old, over the limit of "
                    f"{s.snapshot_max_age:.0f} s (RESILIENCE_SNAPSHOT_MAX_AGE): --force to use it"
                )


def _export_probe(target: Target) -> Path:
    root = target.auth_root
    return root if root.exists() else root.parent


def _export_dir_checks(target: Target, facts: Preflight) -> None:
    """Whether the export can be written where it goes (the free space is compared with what
    the export needs once the database said how much)."""
    probe = _export_probe(target)
    if not probe.exists():
        facts.problems.append(
            f"export dir {target.auth_root} does not exist and neither does its parent"
        )
        return
    facts.disk_free = shutil.disk_usage(probe).free
    if not os.access(probe, os.W_OK):
        facts.problems.append(f"export dir {probe} is not writable")


def _preflight_mirror(target: Target, facts: Preflight, force: bool) -> bool:
    """Whether the mirror is the fallback: it confirmed a position holding the company that
    is fresher than the newest snapshot (whose facts are kept beside it for the report)."""
    s = target.settings
    mirror = mirror_fallback(s, target.company_id)
    if mirror is None:
        return False
    found = snapshot.newest_snapshot(s.snapshot_dir, target.company_id)
    if found is not None and found.taken_at >= mirror.confirmed_at:
        return False
    facts.mirror_dir = str(mirror.mirror_dir)
    facts.mirror_confirmed_at = mirror.confirmed_at.isoformat()
    facts.mirror_loss_window_s = round(mirror.loss_window_s(), 3)
    if found is not None:
        facts.snapshot_path = str(found.path)
        facts.snapshot_age_s = round(found.age_s(), 1)
    if mirror.age_s() > s.snapshot_max_age and not force:
        facts.problems.append(
            f"the mirror's last confirmed position is {mirror.age_s():.0f} s old, over the "
            f"limit of {s.snapshot_max_age:.0f} s (RESILIENCE_SNAPSHOT_MAX_AGE): --force to use it"
        )
    return True


def _preflight_to_postgres(target: Target, facts: Preflight) -> None:
    if facts.db_verdict == "outage":
        facts.problems.append(f"PostgreSQL must be reachable to switch back: {facts.db_error}")
        facts.refusal = "database"
    if target.company_dir.is_symlink():
        return  # said by _check_local
    if not target.company_dir.is_dir():
        facts.problems.append(f"no Baileys directory {target.company_dir} to import")
    else:
        _, facts.unmappable = importer.map_directory(target.company_dir)
        if facts.unmappable:
            shown = ", ".join(facts.unmappable[:10])
            more = f" and {len(facts.unmappable) - 10} more" if len(facts.unmappable) > 10 else ""
            facts.problems.append(
                f"file names that cannot be mapped back to key ids without guessing: {shown}{more}"
            )
    state = SwitchState.read(target.state_file)
    if state and target.settings.service_dir and state.previous_ref:
        facts.current_ref = gitref.current_ref(target.settings.service_dir)
        facts.tag = state.previous_ref


ROOM_FOR_STATE = 1 << 20  # bytes: the switch state, the merge base and the .env copy


def _check_local(target: Target, facts: Preflight, direction: Direction) -> None:
    """What needs no database and would otherwise fail after the stop: the switch state
    readable, the company directory a real one, room beside it for the switch's own files,
    and, when the service already runs on it in file mode (a re-run), every file decoding (the
    way back decodes them in its merge preview)."""
    try:
        SwitchState.read(target.state_file)
    except ResilienceError as exc:
        facts.problems.append(f"{exc}: fix or move it away (it holds the way back)")
    company_dir = target.company_dir
    if company_dir.is_symlink():
        facts.problems.append(
            f"{company_dir} is a symlink: refusing to read or replace what it points to; make "
            "it a real directory"
        )
        return
    probe = _export_probe(target)
    if probe.exists():
        free = shutil.disk_usage(probe).free
        if free < ROOM_FOR_STATE:
            facts.problems.append(
                f"no room in {probe} ({free} bytes free): the switch writes its state there; "
                "free some space first"
            )
    if direction == "to-files" and facts.env_mode == "file" and company_dir.is_dir():
        _check_files(target, facts)  # a re-run: the service runs on it and will again


def _check_files(target: Target, facts: Preflight) -> None:
    try:
        importer.check_directory(target.company_dir, target.company_id)
    except DataError as exc:
        facts.problems.append(f"{exc}: nothing was stopped, the service keeps serving")
        facts.refusal = "data"
    except ResilienceError as exc:
        facts.problems.append(str(exc))


def _merge_preview(target: Target, facts: Preflight, store: PgAuthStore) -> None:
    """The way back's three-way merge as a dry run: every file decoded (a corrupt one refused
    by name, before anything stops), and what would be taken from where."""
    root, company = target.auth_root, target.company_id
    if target.company_dir.is_symlink() or not target.company_dir.is_dir():
        return  # said elsewhere
    try:
        if importer.map_directory(target.company_dir)[1]:
            return  # names that cannot be mapped back: listed by _preflight_to_postgres
        base = InstalledBase.read(root, company)
        facts.base_source = base.source if base is not None else None
        if base is None:
            facts.warnings.append(
                "no record of what the switch to files installed: the directory replaces the "
                "company's rows whole (keys PostgreSQL wrote meanwhile are deleted)"
            )
        # the dry run reads and decodes every file once (a corrupt one is a DataError)
        preview = importer.import_company(
            store, root, company, dry_run=True, three_way=True, base=base
        )
        facts.merge = preview.merge
    except DataError as exc:
        facts.problems.append(f"{exc}: nothing was stopped, the service keeps serving")
        facts.refusal = "data"
    except (ConfigError, DatabaseError) as exc:
        _database_failed(facts, exc)
    except ResilienceError as exc:
        facts.problems.append(str(exc))


def _check_company(target: Target, facts: Preflight) -> None:
    """Refuse to switch a company the service does not serve: its files would be stale and
    the writes it acknowledged in file mode would be lost on the way back."""
    served = service_company(target)
    facts.service_company = served
    if served is None:
        facts.warnings.append(
            "could not tell which company the service serves (no health URL answering with "
            f"'company', no {target.settings.service_company_var} in its .env)"
        )
    elif served != target.company_id:
        facts.problems.append(
            f"the service serves company {served}, not {target.company_id}: switch "
            f"--company {served}, or fix RESILIENCE_COMPANY_ID"
        )


def service_company(target: Target) -> str | None:
    """The company the service says it serves: its health endpoint's `company`, else the
    variable named by RESILIENCE_SERVICE_COMPANY_VAR in its .env."""
    s = target.settings
    if s.health_url:
        try:
            body = httpx.get(s.health_url, timeout=2).json()
        except (httpx.HTTPError, ValueError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("company"), str):
            return str(body["company"])
    try:
        value = envfile.read_values(target.env_file).get(s.service_company_var)
    except ResilienceError:
        return None
    return value or None
