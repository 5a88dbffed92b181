"""The emergency switch against the embedded stack: refusals, dry run, failure and undo, re-runs
after a crash, the way back without a state file, and the `restore.*` tasks.

A refusal asserts the error class, a key phrase of its one-line message and that nothing changed:
the `.env` bytes, the files of the service's work dir, git HEAD, the PM2 app (status, pid,
restarts), the auth directory, the snapshots and the company's rows. Tests that only read share
one service with traffic off (so the rows cannot move); tests that switch get their own, writing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from resilience.authstate import pgraw
from resilience.authstate.naming import company_dir_name
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings, settings_as_env
from resilience.drill.evidence import database_state, differences, replay, seeded
from resilience.drill.fakes.receivers import ReceiverClient
from resilience.drill.service import ServiceUnderTest
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import standin_on_stack
from resilience.errors import InputError, VerificationError
from resilience.files import snapshot
from resilience.files.export import export_company
from resilience.infra.waiting import wait_until
from resilience.restore import commands
from resilience.restore.runner import RunResult, StepFailed, StepResult
from resilience.restore.state import SwitchState
from resilience.restore.switch import (
    Direction,
    build_plan,
    preflight,
    run_switch,
)
from resilience.restore.target import Target, make_target
from resilience.runs.journal import Journal
from resilience.service import envfile, gitref
from resilience.service.modes import FILE_MODE_FLAGS, POSTGRES_MODE_FLAGS

ROOT = Path(__file__).resolve().parents[1]
INVOKE = str(Path(sys.executable).parent / "invoke")
KEYS = 60  # plus the dataset's legacy rows
TO_FILES_STEPS = [
    "stop-service",
    "export",
    "code",
    "env",
    "start-service",
    "verify",
    "remove-previous",
]
#: without anyone to confirm (--yes), the preflight begins the stop while the database answers
UNATTENDED_TO_FILES_STEPS = ["stop-service", "service-stopped", *TO_FILES_STEPS[1:]]

pytestmark = pytest.mark.stack


# --- the service under test ---------------------------------------------------------------------
Service = ServiceUnderTest


def target_of(service: Service, **update: Any) -> Target:
    settings = service.settings.model_copy(update=update) if update else service.settings
    return make_target(settings, service.company)


def tag_commit(service: Service) -> str:
    return gitref.require_tag(service.workdir, service.deployed.fallback_tag)


def observe(service: Service) -> dict[str, Any]:
    """Everything a refused switch must leave as it was (the rows only when no traffic)."""
    app = service.pm2.describe(service.deployed.app)
    creds: Any = None
    rows: list[Any] | None = None
    if not service.writing:
        with connect(service.stack.endpoints.admin_dsn) as conn:
            store = PgAuthStore(conn)
            creds = store.load_creds(service.company)
            rows = sorted(store.records(service.company), key=lambda r: (r.key_type, r.key_id))
    return {
        "env": service.deployed.env_file.read_bytes(),
        "workdir": sorted(os.listdir(service.workdir)),
        "head": gitref.head_commit(service.workdir),
        "ref": gitref.current_ref(service.workdir),
        "dirty": gitref.is_dirty(service.workdir),
        "pm2": (app.status, app.pid, app.restarts) if app else None,
        "auth": _tree(service.auth_root),
        "snapshots": _tree(service.settings.snapshot_dir),
        "creds": creds,
        "rows": rows,
    }


def step_named(result: RunResult, name: str) -> StepResult:
    found = next((s for s in result.steps if s.name == name), None)
    assert found is not None, f"no step {name} in {[s.name for s in result.steps]}"
    return found


def _tree(root: Path) -> dict[str, bytes | None] | None:
    """Every directory (None) and file (its bytes) under ``root``; None when it does not exist."""
    if not root.exists():
        return None
    found: dict[str, bytes | None] = {}
    for directory, dirs, files in os.walk(root):
        base = Path(directory)
        for name in dirs:
            found[str((base / name).relative_to(root)) + "/"] = None
        for name in files:
            found[str((base / name).relative_to(root))] = (base / name).read_bytes()
    return found


def _deploy(
    stack: Stack, settings: DrillSettings, base: Path, *, write_interval_ms: int
) -> Iterator[Service]:
    with standin_on_stack(
        stack,
        settings,
        base,
        prefix="sw",
        keys=KEYS,
        write_interval_ms=write_interval_ms,
        verify_timeout=30.0,
        snapshot_max_age=3600.0,
    ) as s:
        service = Service(
            stack, s.deployed, s.settings, s.pm2, s.dataset, writing=write_interval_ms > 0
        )
        service.wait_mode("postgres")
        yield service


@pytest.fixture(scope="module")
def shared(
    stack: Stack, settings: DrillSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """One service for the tests that must change nothing: no traffic, so rows stay put."""
    yield from _deploy(stack, settings, tmp_path_factory.mktemp("shared"), write_interval_ms=0)


@pytest.fixture
def service(stack: Stack, settings: DrillSettings, tmp_path: Path) -> Iterator[Service]:
    """A service of its own, writing keys, for the tests that really switch."""
    yield from _deploy(stack, settings, tmp_path, write_interval_ms=100)


def refused(
    service: Service,
    target: Target,
    phrase: str,
    direction: Direction = "to-files",
    **kwargs: Any,
) -> str:
    """Run the switch, expect a refusal naming ``phrase``, and prove that nothing changed."""
    before = observe(service)
    journal = Journal("refused")
    with pytest.raises(InputError) as info:
        run_switch(target, direction, journal=journal, **kwargs)
    message = str(info.value)
    assert type(info.value) is InputError
    assert phrase in message
    assert "\n" not in message
    assert journal.steps == []  # refused before the first step
    assert observe(service) == before
    return message


def secrets_of(service: Service) -> list[str]:
    ep = service.stack.endpoints
    found = [urlsplit(ep.service_dsn).password, urlsplit(ep.admin_dsn).password]
    if ep.sentry_dsn:
        found.append(urlsplit(ep.sentry_dsn).username)
    found.append(ep.telegram_bot_token)
    return [s for s in found if s]


# --- preflight refusals -------------------------------------------------------------------------
def test_unknown_company_is_refused(shared: Service) -> None:
    unknown = f"nokeys_{uuid.uuid4().hex[:8]}"
    target = Target(shared.settings, shared.stack.endpoints.service_dsn, unknown)
    message = refused(shared, target, f"unknown company {unknown}: no keys in the database")
    assert message.startswith("preflight refused to-files: ")


def test_a_refusal_from_the_database_starts_the_stopped_service_again(
    stack: Stack, settings: DrillSettings, tmp_path: Path
) -> None:
    """With --yes (no confirm) the stop begins once every check that needs no database passed
    and the service says it serves the company; the database then says it holds no keys of
    it: refused, and the service is started again in the mode it was in."""
    for service in _deploy(stack, settings, tmp_path, write_interval_ms=0):
        with connect(stack.endpoints.admin_dsn) as conn:
            pgraw.delete_company(conn, service.company)
        before = service.pm2.require(service.deployed.app)
        env_before = service.deployed.env_file.read_bytes()
        journal = Journal("refused late")
        with pytest.raises(InputError) as info:
            run_switch(target_of(service), "to-files", journal=journal)
        message = str(info.value)
        assert f"unknown company {service.company}: no keys in the database" in message
        assert message.endswith("the service, stopped meanwhile, was started again")
        kinds = [event["kind"] for event in journal.to_dict()["events"]]
        assert kinds.index("stop-begun") < kinds.index("service-started-again")
        assert journal.steps == []
        after = service.pm2.require(service.deployed.app)
        assert after.status == "online" and after.pid != before.pid
        assert service.deployed.env_file.read_bytes() == env_before  # still PostgreSQL mode
        assert not (service.auth_root / company_dir_name(service.company)).exists()


def test_a_preflight_that_breaks_after_the_stop_began_starts_the_service_again(
    shared: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = shared.pm2.require(shared.deployed.app)

    def broken(self: PgAuthStore, company_id: str) -> Any:
        raise RuntimeError("the preflight's statement broke")

    monkeypatch.setattr(PgAuthStore, "stored_bytes", broken)
    journal = Journal("broken preflight")
    with pytest.raises(RuntimeError, match="statement broke"):
        run_switch(target_of(shared), "to-files", journal=journal)
    kinds = [event["kind"] for event in journal.to_dict()["events"]]
    assert "stop-begun" in kinds and "service-started-again" in kinds
    after = shared.pm2.require(shared.deployed.app)
    assert after.status == "online" and after.pid != before.pid
    shared.wait_mode("postgres")


def test_wrong_password_is_refused_without_showing_it(shared: Service, tmp_path: Path) -> None:
    parts = urlsplit(shared.stack.endpoints.service_dsn)
    wrong = "Wr0ng-pa55word-" + uuid.uuid4().hex[:6]
    netloc = f"{parts.username}:{wrong}@{parts.hostname}:{parts.port}"
    dsn = urlunsplit(parts._replace(netloc=netloc))
    settings = shared.settings.model_copy(update={"snapshot_dir": tmp_path / "no-snapshots"})
    target = Target(settings, dsn, shared.company)

    facts = preflight(target, "to-files")
    assert not facts.db_reachable
    assert facts.db_verdict == "misconfigured"  # a typo is never read as an outage
    assert facts.db_error is not None
    assert "password authentication failed" in facts.db_error
    assert wrong not in facts.db_error
    assert facts.snapshot_path is None
    message = refused(shared, target, "PostgreSQL is not down, the configuration is wrong")
    assert "check its password" in message
    assert "snapshot of company" not in message
    for secret in [wrong, *secrets_of(shared)]:
        assert secret not in message


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("Xq#7zK-9vT", "it holds a '#'"),
        ("Xq@7zK-9vT", "the password holds an '@'"),
        ("Xq/7zK-9vT", "the password holds a '/'"),
    ],
)
def test_unescaped_password_in_the_dsn_is_a_configuration_error(
    shared: Service, tmp_path: Path, password: str, problem: str
) -> None:
    """The seed's 3 a.m. typo: the database is healthy, the DSN says something else. Exit 2,
    the DSN named as wrong, no part of the password shown, no snapshot considered."""
    parts = urlsplit(shared.stack.endpoints.service_dsn)
    dsn = f"postgresql://{parts.username}:{password}@{parts.hostname}:{parts.port}{parts.path}"
    done = run_task(
        ["restore.to-files", "--dry-run", "--json"],
        {**settings_as_env(shared.settings), "RESILIENCE_SERVICE_DSN": dsn},
    )
    assert done.returncode == 2, done.stderr
    assert "RESILIENCE_SERVICE_DSN" in done.stderr and problem in done.stderr
    assert "the DSN is wrong" in done.stderr
    document = json.loads(done.stdout)
    assert (document["ok"], document["exit_code"]) == (False, 2)
    shown = done.stdout + done.stderr
    assert not [
        password[i : i + 4] for i in range(len(password) - 3) if password[i : i + 4] in shown
    ]


def test_a_dsn_pointing_at_an_http_server_is_configuration_never_a_snapshot(
    shared: Service, tmp_path: Path, http_port: int
) -> None:
    """PostgreSQL is healthy, the DSN names the port of an HTTP server: no outage, so the
    snapshot (there is one) is not installed; the switch says so in moments (the link's
    timeout is the settings' 20 s) and the task exits 2."""
    ep = shared.stack.endpoints
    snaps = tmp_path / "snapshots"
    with connect(ep.service_dsn) as conn:
        snapshot.take_snapshot(PgAuthStore(conn), snaps, [shared.company], keep=3, source="test")
    parts = urlsplit(ep.service_dsn)
    dsn = urlunsplit(
        parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{http_port}")
    )
    settings = shared.settings.model_copy(update={"snapshot_dir": snaps})
    target = Target(settings, dsn, shared.company)

    facts = preflight(target, "to-files")
    assert facts.db_verdict == "misconfigured" and facts.snapshot_path is None
    message = refused(shared, target, "PostgreSQL is not down, the configuration is wrong")
    assert "answers, but not as PostgreSQL" in message
    assert "snapshot of company" not in message
    for secret in secrets_of(shared):
        assert secret not in message
    done = run_task(
        ["restore.to-files", "--dry-run", "--json"],
        {**settings_as_env(settings), "RESILIENCE_SERVICE_DSN": dsn},
    )
    assert done.returncode == 2, done.stderr
    assert "the configuration is wrong (RESILIENCE_SERVICE_DSN)" in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 2


def test_missing_env_file_is_refused(shared: Service) -> None:
    missing = shared.workdir / "missing.env"
    refused(shared, target_of(shared, service_env=missing), f"service env file {missing} not found")


def test_missing_fallback_tag_is_refused_naming_the_check(shared: Service) -> None:
    refused(
        shared,
        target_of(shared, fallback_tag="no-such-tag-v9"),
        "git rev-parse --verify refs/tags/no-such-tag-v9",
    )


def test_missing_pm2_app_is_refused(shared: Service) -> None:
    absent = f"baileys-absent-{uuid.uuid4().hex[:6]}"
    refused(shared, target_of(shared, pm2_app=absent), f"PM2 has no app named {absent!r}")


def test_unreachable_postgres_without_snapshot_is_refused(shared: Service, tmp_path: Path) -> None:
    ep = shared.stack.endpoints
    target = target_of(shared, snapshot_dir=tmp_path / "no-snapshots")
    with (
        ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
        faults.proxy_disabled(toxiproxy, ep.toxiproxy_proxy, allowed=ep.drill_target),
    ):
        message = refused(shared, target, "PostgreSQL unreachable at postgresql://")
    assert f"there is no snapshot of company {shared.company} in {tmp_path / 'no-snapshots'}" in (
        message
    )


def test_snapshot_over_the_age_limit_is_refused_unless_forced(
    shared: Service, tmp_path: Path
) -> None:
    ep = shared.stack.endpoints
    snaps = tmp_path / "snapshots"
    with connect(ep.service_dsn) as conn:
        snap = snapshot.take_snapshot(
            PgAuthStore(conn), snaps, [shared.company], keep=3, source="test"
        )
    # backdate it two hours: the limit is one hour
    meta_file = snap.path / "snapshot.json"
    meta = json.loads(meta_file.read_text())
    meta["taken_at"] = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    meta_file.write_text(json.dumps(meta))
    target = target_of(shared, snapshot_dir=snaps, snapshot_max_age=3600.0)
    with (
        ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
        faults.proxy_disabled(toxiproxy, ep.toxiproxy_proxy, allowed=ep.drill_target),
    ):
        message = refused(shared, target, "over the limit of 3600 s")
        assert re.search(r"newest snapshot is 72\d\d s old", message), message
        assert "--force" in message

        before = observe(shared)
        journal = Journal("forced")
        outcome = run_switch(target, "to-files", journal=journal, dry_run=True, force=True)
        assert observe(shared) == before
    facts = outcome.preflight
    assert facts.problems == []
    assert not facts.db_reachable
    assert facts.snapshot_path == str(snap.path)
    assert facts.snapshot_age_s is not None and facts.snapshot_age_s >= 7200
    install = [line for line in facts.plan if "install the newest snapshot" in line]
    assert install == [
        f"PostgreSQL unreachable: install the newest snapshot of {shared.company} "
        f"(age {facts.snapshot_age_s} s = data-loss window)"
    ]


def test_read_only_export_dir_is_refused(shared: Service) -> None:
    root = shared.auth_root
    root.mkdir(mode=0o700, exist_ok=True)
    locked = subprocess.run(["chattr", "+i", str(root)], capture_output=True, text=True)
    if locked.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {locked.stderr.strip()[-120:]}")
    try:
        refused(shared, target_of(shared), f"export dir {root} is not writable")
    finally:
        subprocess.run(["chattr", "-i", str(root)], check=True)


def test_unmappable_file_names_are_refused_and_listed(shared: Service) -> None:
    company_dir = shared.auth_root / company_dir_name(shared.company)
    with connect(shared.stack.endpoints.service_dsn) as conn:
        export_company(PgAuthStore(conn), shared.auth_root, shared.company, source="test")
    try:
        # written in file mode after the export: not in the manifest, and `-` may have been `:`
        (company_dir / "session-a-b__c.json").write_text('{"x": 1}')
        (company_dir / "pre-key-999999.json").write_text('{"x": 2}')  # mappable by its type
        facts = preflight(target_of(shared), "to-postgres")
        assert facts.unmappable == ["session-a-b__c.json"]
        message = refused(
            shared,
            target_of(shared),
            "file names that cannot be mapped back to key ids without guessing",
            "to-postgres",
        )
        assert "session-a-b__c.json" in message
        assert "pre-key-999999.json" not in message
    finally:
        shutil.rmtree(company_dir)


# --- dry run ------------------------------------------------------------------------------------
def test_dry_run_returns_the_plan_and_changes_nothing(shared: Service) -> None:
    before = observe(shared)
    journal = Journal("dry run")
    outcome = run_switch(target_of(shared), "to-files", journal=journal, dry_run=True)
    assert observe(shared) == before
    assert outcome.result is None
    assert journal.steps == []
    plan = outcome.preflight.plan
    s = shared.settings
    expected_starts = [
        f"stop PM2 app {s.pm2_app}",
        f"export company {shared.company} to {shared.auth_root / company_dir_name(shared.company)}",
        f"git checkout {s.fallback_tag} in {shared.workdir}",
        f"set the three file-mode flags in {shared.deployed.env_file}",
        f"restart PM2 app {s.pm2_app}",
        "wait for the file-mode line",
        f"remove the directory the new {company_dir_name(shared.company)} replaced",
    ]
    assert len(plan) == len(expected_starts)
    for line, start in zip(plan, expected_starts, strict=True):
        assert line.startswith(start), (line, start)
    data = outcome.to_dict()
    assert "run" not in data
    with connect(shared.stack.endpoints.admin_dsn) as conn:
        rows = PgAuthStore(conn).count_keys(shared.company)
    assert data["preflight"]["key_count"] == outcome.preflight.key_count == rows >= KEYS
    assert data["preflight"]["env_mode"] == "postgres"
    assert data["preflight"]["pm2_status"] == "online"


# --- switches that change things ----------------------------------------------------------------
def test_dirty_tree_is_refused_and_force_discards_it(service: Service) -> None:
    tracked = service.workdir / "AUTH_BACKEND"
    tracked.write_text("edited on the server\n")
    refused(service, target_of(service), f"work tree {service.workdir} has local changes")

    outcome = run_switch(target_of(service), "to-files", journal=Journal("forced"), force=True)
    assert outcome.result is not None and outcome.result.ok
    assert gitref.head_commit(service.workdir) == tag_commit(service)
    assert gitref.is_dirty(service.workdir) == []
    assert tracked.read_text() == "files\n"
    assert envfile.current_mode(service.deployed.env_file) == "file"
    health = service.wait_mode("file")
    export = step_named(outcome.result, "export")
    assert health["loaded_digest"] == export.details["digest"]


def test_failed_verify_is_undone_and_reported_without_secrets(service: Service) -> None:
    ep = service.stack.endpoints
    assert ep.sentry_dsn and ep.receivers_url
    before = observe(service)
    settings = target_of(
        service, file_mode_pattern=r"this line is never logged for {company}", verify_timeout=3.0
    ).settings
    with pytest.raises(StepFailed) as info:
        commands.switch(settings, "to-files", company_id=service.company)
    failed = info.value
    assert isinstance(failed.cause, VerificationError)
    assert failed.exit_code == VerificationError.exit_code
    assert "did not log /this line is never logged for" in str(failed)
    result = failed.result
    assert [(r.name, r.status) for r in result.steps] == [
        *((name, "ok") for name in UNATTENDED_TO_FILES_STEPS[:-2]),
        ("verify", "failed"),
    ]
    # undone in reverse order, file-mode writes carried back first; export has no undo
    assert [(r.name, r.status) for r in result.rollbacks] == [
        ("start-service", "ok"),
        ("env", "ok"),
        ("code", "ok"),
        ("stop-service", "ok"),
    ]
    assert result.halted is None
    assert failed.record is not None and failed.record.parent == settings.runs_dir
    journal = json.loads((failed.record / "journal.json").read_text())
    assert journal["status"] == "failed"
    assert [(r["name"], r["status"]) for r in journal["rollbacks"]] == [
        ("undo start-service", "ok"),
        ("undo env", "ok"),
        ("undo code", "ok"),
        ("undo stop-service", "ok"),
    ]
    carried = journal["rollbacks"][0]["details"]["carried_back"]
    assert carried["digest_db"] == carried["digest_dir"]

    # the service is back where it was: PostgreSQL mode, main, the same .env bytes
    assert service.deployed.env_file.read_bytes() == before["env"]
    assert gitref.current_ref(service.workdir) == "main"
    assert gitref.head_commit(service.workdir) == before["head"]
    health = service.wait_mode("postgres")
    assert health["company"] == service.company
    app = service.pm2.require(service.deployed.app)
    assert app.status == "online"

    with ReceiverClient(ep.receivers_url) as receivers:
        event = receivers.wait_for(
            "sentry",
            lambda r: (
                r.get("item_type") == "event"
                and r.get("tags", {}).get("company") == service.company
            ),
            timeout=15,
        )
    assert "emergency switch to-files failed at a step and was undone" in (event["message"] or "")
    assert event["level"] == "error"
    assert event["tags"]["direction"] == "to-files"
    assert not event.get("redacted")  # the receiver found no secret to hide
    recorded = json.dumps(event)
    for secret in secrets_of(service):
        assert secret not in recorded

    # no acknowledged write is lost: every one, of both modes, is in PostgreSQL by fingerprint
    service.pm2.stop(service.deployed.app)
    entries = service.acknowledged_writes()
    assert entries is not None and any(e.mode == "file" for e in entries)
    assert service.dataset is not None
    _, in_db, _ = database_state(service.stack.endpoints.admin_dsn, service.company)
    assert differences(in_db, replay(seeded(service.dataset, service.company), entries)) == []


class Crash(Exception):
    """Stands for the process dying at this point: nothing after it runs, nothing is undone."""


def _crash_after(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    real = getattr(module, name)

    def crashing(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise Crash(f"crashed right after {name}")

    monkeypatch.setattr(module, name, crashing)


@pytest.mark.parametrize("crash", ["after-code", "mid-env", "after-env"])
def test_rerun_after_a_crash_converges_and_returns_to_main(
    service: Service, crash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = observe(service)
    target = target_of(service)
    facts = preflight(target, "to-files")
    assert facts.problems == []
    steps = build_plan(target, facts, force=False)
    assert [s.name for s in steps] == TO_FILES_STEPS
    last = {"after-code": "code", "mid-env": "code", "after-env": "env"}[crash]
    for step in steps[: [s.name for s in steps].index(last) + 1]:
        step.do({})
    if crash == "mid-env":  # the new .env is on disk, the process dies before anything else
        with monkeypatch.context() as patch:
            _crash_after(patch, envfile, "set_values")
            with pytest.raises(Crash):
                next(s for s in steps if s.name == "env").do({})
        assert envfile.current_mode(service.deployed.env_file) == "file"
    assert gitref.head_commit(service.workdir) == tag_commit(service)
    assert service.pm2.require(service.deployed.app).status == "stopped"

    there = run_switch(target, "to-files", journal=Journal("re-run"))
    assert there.result is not None and there.result.ok
    state = SwitchState.read(target.state_file)
    assert state is not None
    assert state.previous_ref == "main"  # the original branch, not the tag
    assert gitref.head_commit(service.workdir) == tag_commit(service)
    assert envfile.current_mode(service.deployed.env_file) == "file"
    health = service.wait_mode("file")
    # before the env step the re-run exports again; after it the directory is kept as it is
    first = "export" if crash == "after-code" else "keep-directory"
    stopping = ("stop-service", "service-stopped")
    assert next(s.name for s in there.result.steps if s.name not in stopping) == first
    loaded = next(s for s in there.result.steps if s.name == first)
    assert health["loaded_digest"] == loaded.details["digest"]

    back = run_switch(target, "to-postgres", journal=Journal("back"))
    assert back.result is not None and back.result.ok
    assert gitref.current_ref(service.workdir) == "main"
    assert gitref.head_commit(service.workdir) == before["head"]
    assert envfile.read_flags(service.deployed.env_file) == POSTGRES_MODE_FLAGS
    assert service.deployed.env_file.read_bytes() == before["env"]
    assert SwitchState.read(target.state_file) is None
    service.wait_mode("postgres")


def test_to_postgres_without_state_uses_the_default_flags(service: Service) -> None:
    ep = service.stack.endpoints
    env_file = service.deployed.env_file
    head = gitref.head_commit(service.workdir)
    # the operator switched by hand: exported, set the flags, restarted; no code step, no state
    service.pm2.stop(service.deployed.app)
    with connect(ep.service_dsn) as conn:
        export_company(PgAuthStore(conn), service.auth_root, service.company, source="operator")
    envfile.set_values(env_file, FILE_MODE_FLAGS)
    service.pm2.restart(service.deployed.app)
    service.wait_mode("file")
    target = target_of(service)
    assert SwitchState.read(target.state_file) is None

    outcome = run_switch(target, "to-postgres", journal=Journal("back by hand"))
    assert outcome.result is not None and outcome.result.ok
    assert [s.name for s in outcome.result.steps] == [
        "stop-service",
        "import",
        "env",
        "start-service",
        "verify",
        "done",
    ]
    assert envfile.read_flags(env_file) == POSTGRES_MODE_FLAGS
    verify = next(s for s in outcome.result.steps if s.name == "verify")
    assert "PostgreSQL auth state for company " + service.company in verify.details["log_lines"][0]
    imported = next(s for s in outcome.result.steps if s.name == "import")
    assert verify.details["health"]["mode"] == "postgres"
    assert verify.details["health"]["loaded_digest"] == imported.details["digest_db"]
    assert gitref.head_commit(service.workdir) == head
    assert gitref.current_ref(service.workdir) == "main"
    service.wait_mode("postgres")


# --- the tasks ----------------------------------------------------------------------------------
def run_task(
    args: list[str], settings: dict[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """A task run in `cwd` with these RESILIENCE_* variables and no other."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENCE_")}
    return subprocess.run(
        [INVOKE, "--search-root", str(ROOT), *args],
        cwd=cwd,
        env=clean | settings,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def invoke(service: Service, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The task as an operator runs it: configured by the service's settings alone."""
    settings = settings_as_env(service.settings) | {"RESILIENCE_COMPANY_ID": service.company}
    return run_task(list(args), settings | env)


def test_task_dry_run_prints_the_plan_as_json(shared: Service) -> None:
    before = observe(shared)
    done = invoke(shared, "restore.to-files", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert "run" not in data
    assert data["preflight"]["direction"] == "to-files"
    assert data["preflight"]["company_id"] == shared.company
    assert data["preflight"]["problems"] == []
    assert len(data["preflight"]["plan"]) == len(TO_FILES_STEPS)
    assert data["preflight"]["plan"][2].startswith(f"git checkout {shared.settings.fallback_tag}")
    for secret in secrets_of(shared):
        assert secret not in done.stdout + done.stderr
    assert observe(shared) == before


def test_task_without_yes_and_no_terminal_changes_nothing(shared: Service) -> None:
    before = observe(shared)
    done = invoke(shared, "restore.to-files")
    assert done.returncode == InputError.exit_code
    assert "run with --yes" in done.stderr
    assert "Traceback" not in done.stderr
    assert observe(shared) == before


def test_task_refusal_is_one_line_with_the_input_exit_code(shared: Service) -> None:
    before = observe(shared)
    done = invoke(shared, "restore.to-files", "--yes", RESILIENCE_FALLBACK_TAG="no-such-tag-v9")
    assert done.returncode == InputError.exit_code == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: preflight refused to-files: ")
    assert "git rev-parse --verify refs/tags/no-such-tag-v9" in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert observe(shared) == before


def test_task_snapshot_writes_a_snapshot(shared: Service) -> None:
    done = invoke(shared, "restore.snapshot", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    path = Path(data["path"])
    assert path.parent == shared.settings.snapshot_dir
    newest = snapshot.newest_snapshot(shared.settings.snapshot_dir, shared.company)
    assert newest is not None and newest.path == path
    with connect(shared.stack.endpoints.admin_dsn) as conn:
        store = PgAuthStore(conn)
        company = shared.company
        view = view_of(company, store.load_creds(company), store.records(company))
    digest = view.digest()  # legacy twins collapse into one key each, as in the files
    entry = data["companies"][shared.company]
    assert (entry["key_count"], entry["digest"]) == (digest.key_count, digest.digest)
    expected = {"key_count": digest.key_count, "digest": digest.digest}
    assert newest.companies[shared.company] == expected


def test_rerun_after_the_switch_keeps_file_mode_writes(service: Service) -> None:
    """A second to-files after the service already wrote to its files must not replace them
    with a new export; a second to-postgres must not import the old directory over newer
    database writes."""
    target = target_of(service)
    first = run_switch(target, "to-files", journal=Journal("first"))
    assert first.result is not None and first.result.ok
    written = service.wait_mode("file")["writes_ok"]
    wait_until(  # file-mode writes to keep
        lambda: service.health()["writes_ok"] >= written + 10, 30, "10 writes in file mode"
    )

    again = run_switch(target, "to-files", journal=Journal("again"))
    assert again.result is not None and again.result.ok
    kept = step_named(again.result, "keep-directory").details["digest"]
    assert service.wait_mode("file")["loaded_digest"] == kept
    export_digest = step_named(first.result, "export").details["digest"]
    assert kept != export_digest  # the file-mode writes are still there

    back = run_switch(target, "to-postgres", journal=Journal("back"))
    assert back.result is not None and back.result.ok
    service.wait_mode("postgres")
    again_back = run_switch(target, "to-postgres", journal=Journal("back again"))
    assert again_back.result is not None and again_back.result.ok
    kept_db = step_named(again_back.result, "keep-database").details["digest"]
    assert service.wait_mode("postgres")["loaded_digest"] == kept_db


def test_the_runbooks_before_an_incident_settings_are_enough(
    service: Service, tmp_path: Path
) -> None:
    """The runbook's settings block, with the values of this deployment and the secrets it
    tells the operator to set, and nothing else: no `.env`, no stack settings file."""
    doc = (ROOT / "docs" / "emergency-rollback.md").read_text()
    section = doc.split("## Before an incident")[1].split("## During the incident")[0]
    block = section.split("```env\n")[1].split("```")[0]
    names = [line.split("=")[0] for line in block.splitlines() if line.startswith("RESILIENCE_")]
    prose = section.split("```")[2]  # the paragraph after the block: secrets and PM2
    named_after = re.findall(r"`(RESILIENCE_[A-Z0-9_]+)`", prose)
    assert "RESILIENCE_SERVICE_DSN" in named_after and "RESILIENCE_PM2_HOME" in named_after
    values = {**settings_as_env(service.settings), "RESILIENCE_COMPANY_ID": service.company}
    chosen = {name: values[name] for name in [*names, *named_after] if name in values}
    assert set(names) <= chosen.keys()
    done = run_task(["restore.to-files", "--yes", "--json"], chosen, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["run"]["ok"] is True
    record = Path(data["record"])
    assert record.parent == Path(chosen["RESILIENCE_RUNS_DIR"])
    journal = json.loads((record / "journal.json").read_text())
    assert journal["status"] == "completed"
    assert [s["name"] for s in journal["steps"]] == UNATTENDED_TO_FILES_STEPS
    assert service.wait_mode("file")["company"] == service.company
    for secret in secrets_of(service):
        assert secret not in done.stdout + done.stderr + (record / "journal.html").read_text()


def test_unreachable_postgres_installs_the_snapshot_beside_the_stop(
    service: Service, tmp_path: Path
) -> None:
    """PostgreSQL unreachable: the stop runs beside the snapshot's install and is waited for
    before the code and flags change; the RTO ends at verify, and the directory the snapshot
    replaced is removed after it."""
    ep = service.stack.endpoints
    snaps = tmp_path / "snapshots"
    with connect(ep.service_dsn) as conn:
        store = PgAuthStore(conn)
        taken = snapshot.take_snapshot(store, snaps, [service.company], keep=2, source="test")
        export_company(store, service.auth_root, service.company, source="test")  # replaced
    target = target_of(service, snapshot_dir=snaps)
    with (
        ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
        faults.proxy_disabled(toxiproxy, ep.toxiproxy_proxy, allowed=ep.drill_target),
    ):
        outcome = run_switch(target, "to-files", journal=Journal("unreachable"))
        result = outcome.result
        assert result is not None and result.ok
        assert [s.name for s in result.steps] == [
            "stop-service",
            "install-snapshot",
            "service-stopped",
            "code",
            "env",
            "start-service",
            "verify",
            "remove-previous",
        ]
        assert step_named(result, "stop-service").details["overlapped"] is True
        assert (
            step_named(result, "install-snapshot").details["digest"]
            == (taken.companies[service.company]["digest"])
        )
        assert (
            service.wait_mode("file")["loaded_digest"] == taken.companies[service.company]["digest"]
        )
        removed = step_named(result, "remove-previous").details["removed"]
        assert len(removed) == 1 and ".previous-company_" in removed[0]
        assert not Path(removed[0]).exists()
        assert [p.name for p in service.auth_root.iterdir() if p.name.startswith(".prev")] == []
        assert result.rto_s is not None
        verified_at = sum(s.duration_s for s in result.steps[:-1])
        assert result.rto_s == pytest.approx(verified_at, abs=0.05)
        assert result.rto_s < result.duration_s
        # the operator's RTO: the preflight (PM2 session, DB refused), then the steps
        assert outcome.preflight_s > 0
        assert outcome.to_dict()["rto_s"] == round(outcome.preflight_s + result.rto_s, 3)
        assert outcome.to_dict()["preflight_s"] == round(outcome.preflight_s, 3)
    back = run_switch(target_of(service), "to-postgres", journal=Journal("back"))
    assert back.result is not None and back.result.ok
