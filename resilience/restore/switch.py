"""The emergency switch: PostgreSQL -> Baileys files (`to_files`) and back (`to_postgres`).

Each direction is preflight facts -> a plan of steps with do/undo -> the runner. The steps:
stop the service, export (live, or the newest snapshot when PostgreSQL is unreachable) or
import, the code step (git tag), the env step (three flags), start, and verify (mode line and
"connection open" logged after the restart; the health digest equal to the expected one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from resilience.alerting.channels import Alerts
from resilience.authstate.naming import company_dir_name
from resilience.authstate.pgstore import PgAuthStore, connect
from resilience.authstate.view import view_of
from resilience.config import Settings, validate_company_id
from resilience.errors import (
    ConfigError,
    DatabaseError,
    InputError,
    ResilienceError,
    StackError,
    VerificationError,
)
from resilience.infra.fsutil import atomic_write
from resilience.infra.pm2 import Pm2
from resilience.infra.redact import redact_dsn
from resilience.restore import export as export_mod
from resilience.restore import importer, snapshot
from resilience.restore.runner import Details, Runner, RunResult, Step, StepFailed
from resilience.runs.journal import Journal
from resilience.service import envfile, gitref
from resilience.service.modes import FILE_MODE_FLAGS, POSTGRES_MODE_FLAGS

Direction = Literal["to-files", "to-postgres"]
STATE_FILE = ".restore-state.json"


@dataclass
class Target:
    """Everything a switch acts on, resolved from settings (and the stack for the DSN)."""

    settings: Settings
    service_dsn: str
    pm2: Pm2
    company_id: str

    @property
    def env_file(self) -> Path:
        path = self.settings.env_path
        if path is None:
            raise ConfigError("set RESILIENCE_SERVICE_DIR or RESILIENCE_SERVICE_ENV (the .env)")
        return path

    @property
    def auth_root(self) -> Path:
        path = self.settings.auth_root
        if path is None:
            raise ConfigError("set RESILIENCE_SERVICE_DIR or RESILIENCE_AUTH_DIR")
        return path

    @property
    def company_dir(self) -> Path:
        return self.auth_root / company_dir_name(self.company_id)

    @property
    def state_file(self) -> Path:
        return self.auth_root / STATE_FILE


@dataclass
class Preflight:
    """Facts gathered before anything changes; `problems` block the run."""

    direction: Direction
    company_id: str
    db_reachable: bool = False
    db_error: str | None = None
    key_count: int | None = None
    snapshot_path: str | None = None
    snapshot_age_s: float | None = None
    tag: str | None = None
    tag_commit: str | None = None
    current_ref: str | None = None
    dirty: list[str] = field(default_factory=list)
    pm2_status: str | None = None
    env_mode: str | None = None
    disk_free: int | None = None
    disk_needed: int | None = None
    unmappable: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- preflight ---------------------------------------------------------------------------------
def preflight(target: Target, direction: Direction, *, force: bool = False) -> Preflight:
    validate_company_id(target.company_id)
    s = target.settings
    facts = Preflight(direction, target.company_id)
    try:
        with connect(target.service_dsn, timeout=s.db_connect_timeout) as conn:
            store = PgAuthStore(conn)
            facts.key_count = store.count_keys(target.company_id)
            if direction == "to-files":
                facts.disk_needed = export_mod.estimate_export_bytes(store, target.company_id)
        facts.db_reachable = True
    except DatabaseError as exc:
        facts.db_error = str(exc)
    try:
        mode = envfile.current_mode(target.env_file)
        facts.env_mode = mode
    except ResilienceError as exc:
        facts.problems.append(str(exc))
    try:
        facts.pm2_status = target.pm2.require(s.pm2_app).status
    except StackError as exc:
        facts.problems.append(str(exc))

    if direction == "to-files":
        _preflight_to_files(target, facts, force)
    else:
        _preflight_to_postgres(target, facts)
    return facts


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
    _preflight_code(target, facts, force)
    if facts.db_reachable:
        if facts.key_count == 0:
            facts.problems.append(f"unknown company {target.company_id}: no keys in the database")
        root = target.auth_root
        probe = root if root.exists() else root.parent
        if not probe.exists():
            facts.problems.append(f"export dir {root} does not exist and neither does its parent")
        else:
            facts.disk_free = shutil.disk_usage(probe).free
            if facts.disk_needed and facts.disk_free < facts.disk_needed:
                facts.problems.append(
                    f"not enough disk for the export: {facts.disk_free} bytes free in {probe}, "
                    f"about {facts.disk_needed} needed"
                )
            if not os.access(probe, os.W_OK):
                facts.problems.append(f"export dir {probe} is not writable")
    else:
        found = snapshot.newest_snapshot(s.snapshot_dir, target.company_id)
        if found is None:
            facts.problems.append(
                f"PostgreSQL is unreachable ({facts.db_error}) and there is no snapshot of "
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
    facts.plan = _plan_lines(target, facts)


def _preflight_to_postgres(target: Target, facts: Preflight) -> None:
    if not facts.db_reachable:
        facts.problems.append(f"PostgreSQL must be reachable to switch back: {facts.db_error}")
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
    state = read_state(target)
    if state and target.settings.service_dir and state.get("previous_ref"):
        facts.current_ref = gitref.current_ref(target.settings.service_dir)
        facts.tag = str(state["previous_ref"])
    facts.plan = _plan_lines(target, facts)


def _plan_lines(target: Target, facts: Preflight) -> list[str]:
    return [step.description for step in build_plan(target, facts, force=False)]


# --- state carried from one direction to the other ----------------------------------------------
def read_state(target: Target) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(target.state_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"restore state {target.state_file} is unreadable: {exc}") from None
    return data


def _write_state(target: Target, data: dict[str, Any]) -> None:
    target.auth_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(target.state_file, json.dumps(data, indent=2).encode())


# --- verification ------------------------------------------------------------------------------
class LogWatch:
    """New lines of the service's PM2 log since this watch was made (i.e. since the restart)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offset = path.stat().st_size if path and path.exists() else 0

    def new_text(self) -> str:
        if self.path is None or not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", errors="replace")

    def wait_for(self, patterns: list[re.Pattern[str]], timeout: float) -> list[str]:
        """The first line matching each pattern, in order, or VerificationError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.new_text().splitlines()
            found: list[str] = []
            start = 0
            for pattern in patterns:
                hit = next((i for i in range(start, len(lines)) if pattern.search(lines[i])), None)
                if hit is None:
                    break
                found.append(lines[hit])
                start = hit + 1
            if len(found) == len(patterns):
                return found
            if time.monotonic() >= deadline:
                missing = patterns[len(found)].pattern
                raise VerificationError(
                    f"the service did not log /{missing}/ within {timeout:.0f} s after the "
                    f"restart (log: {self.path})"
                )
            time.sleep(0.1)


def wait_for_health(url: str, mode: str, digest: str | None, timeout: float) -> dict[str, Any]:
    """Poll the health endpoint until it reports `mode` and, when given, `digest` as what it
    loaded at start (`loaded_digest`; a live service has written more since)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | str = "no answer"
    while True:
        try:
            response = httpx.get(url, timeout=2)
            body = response.json()
            last = body
            loaded = body.get("loaded_digest", body.get("digest"))
            if body.get("mode") == mode and (digest is None or loaded == digest):
                return dict(body)
        except (httpx.HTTPError, ValueError) as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            if isinstance(last, dict):
                loaded = last.get("loaded_digest", last.get("digest"))
                got = f"mode={last.get('mode')} loaded digest={str(loaded)[:12]}"
            else:
                got = last
            want = f"mode={mode}" + (f" digest={digest[:12]}" if digest else "")
            raise VerificationError(
                f"health at {url} did not reach {want} in {timeout:.0f} s: {got}"
            )
        time.sleep(0.1)


# --- the plan ------------------------------------------------------------------------------------
def build_plan(target: Target, facts: Preflight, *, force: bool) -> list[Step]:
    if facts.direction == "to-files":
        return _plan_to_files(target, facts, force)
    return _plan_to_postgres(target, facts, force)


def _start_and_verify(target: Target, mode: str, expected: Callable[[], str | None]) -> list[Step]:
    s = target.settings
    app = s.pm2_app
    watch: dict[str, LogWatch] = {}

    def start(details: Details) -> None:
        described = target.pm2.require(app)
        watch["w"] = LogWatch(described.out_log)
        target.pm2.restart(app)
        details["app"] = app

    def verify(details: Details) -> None:
        pattern = s.file_mode_pattern if mode == "file" else s.postgres_mode_pattern
        patterns = [
            re.compile(pattern.replace("{company}", re.escape(target.company_id))),
            re.compile(s.connected_pattern),
        ]
        lines = watch["w"].wait_for(patterns, s.verify_timeout)
        details["log_lines"] = lines
        if s.health_url:
            digest = expected()
            health = wait_for_health(s.health_url, mode, digest, s.verify_timeout)
            keys = ("mode", "loaded_key_count", "loaded_digest", "key_count", "digest")
            details["health"] = {k: health.get(k) for k in keys}

    return [
        Step("start-service", f"restart PM2 app {app} (it reads the new .env)", start),
        Step("verify", f"wait for the {mode}-mode line, 'connection open' and health", verify),
    ]


def _stop_step(target: Target) -> Step:
    app = target.settings.pm2_app

    def stop(details: Details) -> None:
        target.pm2.stop(app)
        details["app"] = app

    def undo() -> None:
        target.pm2.restart(app)

    return Step("stop-service", f"stop PM2 app {app} (no writes during the switch)", stop, undo)


def _plan_to_files(target: Target, facts: Preflight, force: bool) -> list[Step]:
    s = target.settings
    expected: dict[str, str] = {}
    steps = [_stop_step(target)]

    if facts.env_mode == "file" and target.company_dir.is_dir():
        # A re-run after the env step: the service may already have written to these files,
        # so they are never replaced; the service is stopped, so their digest is stable.
        def keep(details: Details) -> None:
            state = importer.read_directory(target.company_dir, target.company_id)
            expected["digest"] = state.digest().digest
            details.update(kept=str(target.company_dir), digest=expected["digest"])

        steps.append(
            Step(
                "keep-directory",
                f"the service is already in file mode: keep {target.company_dir} as it is",
                keep,
            )
        )
    elif facts.db_reachable:

        def export(details: Details) -> None:
            with connect(target.service_dsn, timeout=s.db_connect_timeout) as conn:
                result = export_mod.export_company(
                    PgAuthStore(conn),
                    target.auth_root,
                    target.company_id,
                    source=redact_dsn(target.service_dsn),
                )
            expected["digest"] = result.digest
            details.update(result.to_dict())

        steps.append(
            Step("export", f"export company {target.company_id} to {target.company_dir}", export)
        )
    else:

        def install(details: Details) -> None:
            found = snapshot.newest_snapshot(s.snapshot_dir, target.company_id)
            if found is None:
                raise InputError(f"no snapshot of company {target.company_id} any more")
            age = found.age_s()
            if age > s.snapshot_max_age and not force:
                raise InputError(f"newest snapshot is {age:.0f} s old: --force to use it")
            result = snapshot.install_snapshot(found, target.company_id, target.auth_root)
            expected["digest"] = result.digest
            details.update(result.to_dict())
            details["snapshot"] = str(found.path)
            details["snapshot_age_s"] = round(age, 1)
            details["snapshot_taken_at"] = found.taken_at.isoformat()

        steps.append(
            Step(
                "install-snapshot",
                f"PostgreSQL unreachable: install the newest snapshot of {target.company_id} "
                f"(age {facts.snapshot_age_s} s = data-loss window)",
                install,
            )
        )

    state: dict[str, Any] = read_state(target) or {}

    if s.fallback_tag and s.service_dir:
        service_dir, tag = s.service_dir, s.fallback_tag

        def code(details: Details) -> None:
            current = gitref.current_ref(service_dir)
            if state.get("previous_ref") and current == state.get("tag_commit"):
                details["already_at_tag"] = True  # a re-run after a crash: keep the first ref
            else:
                state["previous_ref"] = current
                state["tag_commit"] = gitref.require_tag(service_dir, tag)
                _write_state(target, state)  # before the checkout: a crash keeps the way back
                gitref.checkout(service_dir, tag, force=force)
            details["previous_ref"] = state["previous_ref"]
            details["tag"] = tag

        def code_back() -> None:
            gitref.checkout(service_dir, str(state["previous_ref"]), force=True)

        steps.append(Step("code", f"git checkout {tag} in {service_dir}", code, code_back))

    def env(details: Details) -> None:
        # Already in file mode (a re-run after a crash, or switched by hand): keep the flags the
        # first run saw; none known means the way back uses the defaults.
        if envfile.current_mode(target.env_file) == "postgres":
            state["env_before"] = envfile.read_flags(target.env_file)
        state.update(
            company_id=target.company_id,
            switched_to_files_at=datetime.now(UTC).isoformat(),
        )
        _write_state(target, state)  # before the change: a crash keeps the way back
        change = envfile.set_values(target.env_file, FILE_MODE_FLAGS)
        details["changed"] = change.changed
        details["backup"] = str(change.backup) if change.backup else None

    def env_back() -> None:
        before = state.get("env_before")
        if before is not None:
            envfile.restore_values(target.env_file, before)

    steps.append(Step("env", f"set the three file-mode flags in {target.env_file}", env, env_back))
    steps += _start_and_verify(target, "file", lambda: expected.get("digest"))
    return steps


def _plan_to_postgres(target: Target, facts: Preflight, force: bool) -> list[Step]:
    s = target.settings
    expected: dict[str, str] = {}
    state = read_state(target) or {}
    steps = [_stop_step(target)]

    if facts.env_mode == "postgres":
        # A re-run after the env step: the import is done and the service may have written to
        # the database since; importing the older directory again would undo those writes.
        def keep(details: Details) -> None:
            with connect(target.service_dsn, timeout=s.db_connect_timeout) as conn:
                store = PgAuthStore(conn)
                creds = store.load_creds(target.company_id)
                view = view_of(target.company_id, creds, store.records(target.company_id))
            expected["digest"] = view.digest().digest
            details.update(kept="database", digest=expected["digest"])

        steps.append(
            Step(
                "keep-database",
                "the service is already in PostgreSQL mode: keep the database as it is",
                keep,
            )
        )
    else:

        def do_import(details: Details) -> None:
            with connect(target.service_dsn, timeout=s.db_connect_timeout) as conn:
                store = PgAuthStore(conn)
                result = importer.import_company(store, target.auth_root, target.company_id)
            expected["digest"] = result.digest_db
            details.update(result.to_dict())

        steps.append(
            Step(
                "import",
                f"import {target.company_dir} into PostgreSQL (one transaction, digest-checked)",
                do_import,
            )
        )

    before = state.get("env_before") or POSTGRES_MODE_FLAGS

    def env(details: Details) -> None:
        change = envfile.restore_values(target.env_file, before)
        details["changed"] = change.changed

    def env_back() -> None:
        envfile.set_values(target.env_file, FILE_MODE_FLAGS)

    steps.append(
        Step("env", f"restore the PostgreSQL-mode flags in {target.env_file}", env, env_back)
    )

    previous = state.get("previous_ref")
    if previous and s.service_dir:
        service_dir = s.service_dir
        tag_ref: dict[str, str] = {}

        def code(details: Details) -> None:
            tag_ref["ref"] = gitref.checkout(service_dir, str(previous), force=force)
            details["ref"] = previous

        def code_back() -> None:
            if "ref" in tag_ref:
                gitref.checkout(service_dir, tag_ref["ref"], force=True)

        steps.append(Step("code", f"git checkout {previous} in {service_dir}", code, code_back))

    steps += _start_and_verify(target, "postgres", lambda: expected.get("digest"))

    def forget(details: Details) -> None:
        target.state_file.unlink(missing_ok=True)
        details["removed"] = str(target.state_file)

    steps.append(Step("done", "forget the file-mode state (the switch is complete)", forget))
    return steps


# --- one call for tasks and drills ---------------------------------------------------------------
@dataclass
class SwitchOutcome:
    preflight: Preflight
    result: RunResult | None  # None for a dry run or a run refused at preflight

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"preflight": self.preflight.to_dict()}
        if self.result is not None:
            data["run"] = self.result.to_dict()
            data["rto_s"] = round(self.result.duration_s, 3)
        return data


def make_target(settings: Settings, company_id: str | None = None) -> Target:
    """Resolve the DSN and PM2 from settings, or from the running stack when not configured."""
    from resilience.drill.stack import make_stack
    from resilience.infra.pm2 import find_pm2

    dsn = settings.service_dsn.get_secret_value() if settings.service_dsn else None
    pm2_home: str | None = None
    if settings.backend != "external":
        endpoints = make_stack(settings).endpoints
        dsn = dsn or endpoints.service_dsn
        pm2_home = endpoints.pm2_home
    if dsn is None:
        raise ConfigError("set RESILIENCE_SERVICE_DSN (the DSN the service uses)")
    pm2 = Pm2(find_pm2(settings.tools_dir.resolve()), home=Path(pm2_home) if pm2_home else None)
    return Target(settings, dsn, pm2, validate_company_id(company_id or settings.company_id))


def run_switch(
    target: Target,
    direction: Direction,
    *,
    journal: Journal,
    dry_run: bool = False,
    force: bool = False,
    confirm: Callable[[Preflight], bool] | None = None,
    progress: Callable[[str], None] | None = None,
    alerts: Alerts | None = None,
) -> SwitchOutcome:
    """Preflight, plan, (confirm), run. Raises on refusal or failure after undoing done steps."""
    journal.register_secret(target.service_dsn)
    facts = preflight(target, direction, force=force)
    journal.event("preflight", f"{direction} preflight", **facts.to_dict())
    if facts.problems:
        raise InputError(f"preflight refused {direction}: " + "; ".join(facts.problems))
    if dry_run:
        return SwitchOutcome(facts, None)
    if confirm is not None and not confirm(facts):
        raise InputError("not confirmed: nothing changed")
    steps = build_plan(target, facts, force=force)
    try:
        result = Runner(journal, progress).run(steps)
    except StepFailed as failed:
        if alerts is not None:
            alerts.sentry.event(
                f"emergency switch {direction} failed at a step and was undone: {failed}",
                level="error",
                tags={"direction": direction, "company": target.company_id},
                extra={"run": failed.result.to_dict()},
            )
        raise
    return SwitchOutcome(facts, result)
