"""Preflight of the emergency switch: the facts gathered before anything changes, then judged.

Is the database reachable (a slow one is not a lost one)? Is the tag there and the work tree
clean? Is the PM2 app there? Is there disk for the export, or a snapshot young enough when the
database is gone? Can every file name be mapped back? :func:`gather_to_files` and
:func:`gather_to_postgres` find out (:mod:`.facts`, one dataclass per direction);
:mod:`.refusals` says which facts refuse the switch. The plan built from these facts is what
the operator confirms.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
from resilience.restore.facts import (
    Direction,
    Failure,
    Preflight,
    SwitchFacts,
    ToFilesFacts,
    ToPostgresFacts,
)
from resilience.restore.refusals import (
    Problem,
    problems_to_files,
    problems_to_postgres,
    refusal_kind,
)
from resilience.restore.session import SwitchOptions
from resilience.restore.state import SwitchState
from resilience.restore.target import Target
from resilience.service import envfile, gitref

__all__ = [
    "Direction",
    "Preflight",
    "gather_to_files",
    "gather_to_postgres",
    "judged",
    "preflight",
    "service_company",
]

_F = TypeVar("_F", ToFilesFacts, ToPostgresFacts)


def preflight(
    target: Target,
    direction: Direction,
    *,
    force: bool = False,
    link: DbLink | None = None,
    before_query: Callable[[ToFilesFacts], None] | None = None,
) -> Preflight:
    """The facts of ``direction``, judged: ``problems`` block the run. With ``link`` the
    database is asked through that connection (kept open for the export: one connect, one
    statement here); ``before_query``: see :func:`gather_to_files`."""
    validate_company_id(target.company_id)
    options = SwitchOptions(force=force)
    if direction == "to-files":
        files = gather_to_files(target, options, link=link, before_query=before_query)
        return judged(files, problems_to_files(files, options, target.settings))
    back = gather_to_postgres(target, link=link)
    return judged(back, problems_to_postgres(back))


def judged(facts: _F, problems: list[Problem]) -> _F:
    """``facts`` with the verdict of the rules kept on them (what the report shows)."""
    facts.problems = [problem.message for problem in problems]
    facts.refusal = refusal_kind(problems)
    return facts


def gather_to_files(
    target: Target,
    options: SwitchOptions,
    *,
    link: DbLink | None = None,
    before_query: Callable[[ToFilesFacts], None] | None = None,
) -> ToFilesFacts:
    """The switch to files' facts: the service, the auth directory, the code, then the
    database's count of keys and bytes (one statement), or the copy when it is down.

    ``before_query`` is called once connected, when nothing gathered so far refuses the switch
    and the service itself says it serves this company: the switch begins stopping the service
    then, so the stop runs while the statement waits for a slow database. Problems found in the
    answer are the caller's to undo."""
    facts = ToFilesFacts(target.company_id)
    with contextlib.ExitStack() as opened:
        conn = _connected(target, facts, link, opened)
        _gather_service(target, facts)
        _gather_local(target, facts)
        company_dir = target.company_dir
        if facts.env_mode == "file" and not facts.company_dir_symlink and company_dir.is_dir():
            # a re-run: the service runs on the directory and will again
            facts.files_failure = _check_files(target)
        _gather_code(target, facts)
        if conn is not None:
            _ask_for_export(target, facts, conn, options, before_query)
    return _gather_copy(target, facts)


def gather_to_postgres(target: Target, *, link: DbLink | None = None) -> ToPostgresFacts:
    """The way back's facts: the service, the directory to import (every name mapped back),
    the database's count of keys and the three-way merge's preview, the ref to return to."""
    facts = ToPostgresFacts(target.company_id)
    with contextlib.ExitStack() as opened:
        conn = _connected(target, facts, link, opened)
        _gather_service(target, facts)
        state = _gather_local(target, facts)
        if not facts.company_dir_symlink:
            facts.directory_found = target.company_dir.is_dir()
            if facts.directory_found:
                facts.unmappable = importer.map_directory(target.company_dir)[1]
        if conn is not None:
            store = PgAuthStore(conn)
            facts.key_count = _ask(facts, lambda: store.count_keys(target.company_id))
            if facts.key_count is not None:
                facts.db_verdict = "reachable"
                _merge_preview(target, facts, store)
    service_dir = target.settings.service_dir
    if not facts.company_dir_symlink and state and service_dir and state.previous_ref:
        facts.current_ref = gitref.current_ref(service_dir)
        facts.previous_ref = state.previous_ref
    return facts


# --- the database --------------------------------------------------------------------------------
_T = TypeVar("_T")


def _connected(
    target: Target, facts: SwitchFacts, link: DbLink | None, opened: contextlib.ExitStack
) -> Any:
    """The connection (``link``'s, or one of its own closed with ``opened``), or None."""

    def connection() -> Any:
        if link is not None:
            return link.conn
        timeout = target.settings.db_connect_timeout
        return opened.enter_context(connect(target.service_dsn, timeout=timeout))

    conn = _ask(facts, connection)
    facts.db_connected = conn is not None
    return conn


def _ask(facts: SwitchFacts, ask: Callable[[], _T]) -> _T | None:
    """``ask()`` of the database, or None with how it failed in ``facts``."""
    try:
        return ask()
    except (ConfigError, DatabaseError) as exc:
        failure = _database_failure(exc)
        facts.db_verdict, facts.db_error = failure.kind, failure.message
    return None


def _database_failure(exc: ConfigError | DatabaseError) -> Failure:
    """An outage (the only failure that allows a snapshot), a wrong configuration, or a
    failure that does not tell whether PostgreSQL is down."""
    if isinstance(exc, DatabaseUnreachable):
        return Failure("outage", str(exc))
    if isinstance(exc, ConfigError):
        return Failure("misconfigured", str(exc))
    return Failure("unknown", str(exc))


# --- both directions -----------------------------------------------------------------------------
def _gather_service(target: Target, facts: SwitchFacts) -> None:
    """The company the service serves, the alert channels, its .env's mode, its PM2 app."""
    s = target.settings
    facts.service_company = service_company(target)
    if facts.service_company is None:
        facts.warnings.append(
            "could not tell which company the service serves (no health URL answering with "
            f"'company', no {s.service_company_var} in its .env)"
        )
    facts.warnings += alert_warnings(s)
    try:
        facts.env_mode = envfile.current_mode(target.env_file)
    except ResilienceError as exc:
        facts.env_error = str(exc)
    try:
        described = target.pm2.require(s.pm2_app)
        facts.pm2_status = described.status
        facts.pm2_out_log = str(described.out_log) if described.out_log else None
    except StackError as exc:
        facts.pm2_error = str(exc)


def _gather_local(target: Target, facts: SwitchFacts) -> SwitchState | None:
    """What needs no database and would otherwise fail after the stop: the switch state
    readable, the company directory a real one, room beside it for the switch's own files
    (where the export goes: the auth root, else its parent)."""
    state = None
    try:
        state = SwitchState.read(target.state_file)
    except ResilienceError as exc:
        facts.state_error = str(exc)
    company_dir = target.company_dir
    facts.company_dir = str(company_dir)
    facts.company_dir_symlink = company_dir.is_symlink()
    probe = _disk_probe(target)
    facts.disk_probe = str(probe)
    if probe.exists():
        facts.disk_free = shutil.disk_usage(probe).free
        facts.disk_writable = os.access(probe, os.W_OK)
    return state


def _disk_probe(target: Target) -> Path:
    root = target.auth_root
    return root if root.exists() else root.parent


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


# --- to files ------------------------------------------------------------------------------------
def _ask_for_export(
    target: Target,
    facts: ToFilesFacts,
    conn: Any,
    options: SwitchOptions,
    before_query: Callable[[ToFilesFacts], None] | None,
) -> None:
    """The database's count of keys and bytes (one statement: the disk estimate too), after
    ``before_query`` when nothing gathered so far refuses the switch."""
    if (
        before_query is not None
        and facts.service_company == target.company_id
        and not problems_to_files(facts, options, target.settings)
    ):
        before_query(facts)
    stored = _ask(facts, lambda: PgAuthStore(conn).stored_bytes(target.company_id))
    if stored is not None:
        facts.key_count = stored[1]
        facts.disk_needed = export_mod.estimate_from_stored(*stored)
        facts.db_verdict = "reachable"


def _check_files(target: Target) -> Failure | None:
    try:
        importer.check_directory(target.company_dir, target.company_id)
    except DataError as exc:
        return Failure("data", str(exc))
    except ResilienceError as exc:
        return Failure("other", str(exc))
    return None


def _gather_code(target: Target, facts: ToFilesFacts) -> None:
    """The fallback tag's commit, the ref checked out and the work tree's local changes."""
    s = target.settings
    if not s.fallback_tag or s.service_dir is None:
        return
    facts.tag = s.fallback_tag
    try:
        facts.tag_commit = gitref.require_tag(s.service_dir, s.fallback_tag)
        facts.current_ref = gitref.current_ref(s.service_dir)
        facts.dirty = gitref.is_dirty(s.service_dir)
    except ResilienceError as exc:
        facts.code_error = str(exc)


def _gather_copy(target: Target, facts: ToFilesFacts) -> ToFilesFacts:
    """PostgreSQL is down: the newest snapshot, and the mirror's confirmed position when it
    holds the company and is fresher (the snapshot's facts are kept beside it for the report)."""
    if facts.db_verdict != "outage":
        return facts
    s = target.settings
    found = snapshot.newest_snapshot(s.snapshot_dir, target.company_id)
    if found is not None:
        facts.snapshot_path = str(found.path)
        facts.snapshot_age_s = round(found.age_s(), 1)
        facts.copy_age_s = found.age_s()
    mirror = mirror_fallback(s, target.company_id)
    if mirror is not None and (found is None or found.taken_at < mirror.confirmed_at):
        facts.mirror_dir = str(mirror.mirror_dir)
        facts.mirror_confirmed_at = mirror.confirmed_at.isoformat()
        facts.mirror_loss_window_s = round(mirror.loss_window_s(), 3)
        facts.copy_age_s = mirror.age_s()
    return facts


# --- to PostgreSQL -------------------------------------------------------------------------------
def _merge_preview(target: Target, facts: ToPostgresFacts, store: PgAuthStore) -> None:
    """The way back's three-way merge as a dry run: every file decoded (a corrupt one refused
    by name, before anything stops), and what would be taken from where."""
    root, company = target.auth_root, target.company_id
    if not facts.directory_found or facts.unmappable:
        return  # said by the rules
    try:
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
        facts.merge_failure = Failure("data", str(exc))
    except (ConfigError, DatabaseError) as exc:
        facts.merge_failure = _database_failure(exc)
    except ResilienceError as exc:
        facts.merge_failure = Failure("other", str(exc))
