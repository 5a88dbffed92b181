"""Every refusal comes before anything stops (issue: nothing lost under operator behaviour).

A symlinked company directory, a full filesystem, files that do not decode, the database down on
the way back, an export over the live directory, a second command while one runs: each refused
with its own exit code, one line, and nothing changed (the service keeps serving)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_switch import Service, observe, shared, target_of  # noqa: F401

from resilience.authstate.naming import company_dir_name
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.backup.restore import restore_backup
from resilience.errors import (
    DatabaseUnreachable,
    DataError,
    InputError,
    LockHeld,
    ResilienceError,
)
from resilience.files.export import export_company
from resilience.infra.fsutil import atomic_write
from resilience.maintenance.cleanup import cleanup_keys
from resilience.maintenance.legacy import cleanup_legacy
from resilience.restore import commands
from resilience.restore.preflight import Direction
from resilience.restore.switch import run_switch
from resilience.restore.target import Target
from resilience.runs.journal import Journal
from resilience.service import envfile
from resilience.service.modes import FILE_MODE_FLAGS

pytestmark = pytest.mark.stack


def refused_with(
    service: Service,
    target: Target,
    kind: type[ResilienceError],
    phrase: str,
    direction: Direction = "to-files",
) -> str:
    before = observe(service)
    journal = Journal("refused")
    with pytest.raises(ResilienceError) as info:
        run_switch(target, direction, journal=journal)
    assert type(info.value) is kind, info.value
    message = str(info.value)
    assert phrase in message and "\n" not in message
    assert journal.steps == []  # refused before the first step: nothing was stopped
    assert observe(service) == before
    return message


@pytest.fixture
def in_file_mode(shared: Service) -> Iterator[Path]:  # noqa: F811
    """The shared service's company exported and its .env in file mode, as after a switch
    (the service itself keeps running: only the refusals are under test)."""
    with connect(shared.stack.endpoints.service_dsn) as conn:
        export_company(PgAuthStore(conn), shared.auth_root, shared.company, source="test")
    env = shared.deployed.env_file
    saved = env.read_bytes()
    envfile.set_values(env, FILE_MODE_FLAGS)
    company_dir = shared.auth_root / company_dir_name(shared.company)
    try:
        yield company_dir
    finally:
        atomic_write(env, saved)
        for backup in env.parent.glob(".env.bak*"):
            backup.unlink()
        shutil.rmtree(company_dir, ignore_errors=True)


def test_creds_that_do_not_decode_are_refused_before_the_stop(
    shared: Service,  # noqa: F811
    in_file_mode: Path,
) -> None:
    atomic_write(in_file_mode / "creds.json", b"{not json")
    message = refused_with(shared, target_of(shared), DataError, "creds.json", "to-postgres")
    assert "nothing was stopped" in message


def test_a_key_file_that_does_not_decode_is_refused_by_name(
    shared: Service,  # noqa: F811
    in_file_mode: Path,
) -> None:
    victim = sorted(in_file_mode.glob("session-*.json"))[0]
    atomic_write(victim, b'{"k": {"type": "Buffer", "data": "%% not base64 %%"}}')
    refused_with(shared, target_of(shared), DataError, victim.name, "to-postgres")


def test_the_database_down_on_the_way_back_is_exit_6(
    shared: Service,  # noqa: F811
    in_file_mode: Path,
) -> None:
    closed = _closed_port()
    dsn = f"postgresql://nobody:secret@127.0.0.1:{closed}/none"
    target = Target(shared.settings, dsn, shared.company)
    message = refused_with(shared, target, DatabaseUnreachable, "must be reachable", "to-postgres")
    assert DatabaseUnreachable.exit_code == 6 and "secret" not in message


@pytest.mark.parametrize("direction", ["to-files", "to-postgres"])
def test_a_symlinked_company_directory_is_refused(
    shared: Service,  # noqa: F811
    tmp_path: Path,
    direction: Direction,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = shared.auth_root / company_dir_name(shared.company)
    shared.auth_root.mkdir(mode=0o700, exist_ok=True)
    link.symlink_to(elsewhere)
    try:
        refused_with(shared, target_of(shared), InputError, "is a symlink", direction)
        assert list(elsewhere.iterdir()) == []
    finally:
        link.unlink()


def test_a_full_filesystem_under_the_auth_dir_is_refused(
    shared: Service,  # noqa: F811
    tmp_path: Path,
) -> None:
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()[-120:]}")
    try:
        filler = full / "filler"
        with filler.open("wb") as out, pytest.raises(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        target = target_of(shared, auth_dir=full / "auth")
        refused_with(shared, target, InputError, "no room in")
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_an_export_over_the_live_directory_in_file_mode_is_refused(
    shared: Service,  # noqa: F811
    in_file_mode: Path,
) -> None:
    before = observe(shared)
    with pytest.raises(InputError, match="live auth directory of a service in file mode"):
        commands.export(shared.settings, company_id=shared.company, directory=shared.auth_root)
    assert observe(shared) == before


def test_the_export_defaults_to_a_directory_of_its_own(
    shared: Service,  # noqa: F811
    tmp_path: Path,
) -> None:
    own = tmp_path / "exports"
    settings = shared.settings.model_copy(update={"export_dir": own})
    before = observe(shared)
    run = commands.export(settings, company_id=shared.company)
    assert (own / company_dir_name(shared.company) / "manifest.json").is_file()
    assert run.batch.results[0].directory.parent == own
    assert observe(shared) == before  # the service's own directory untouched


HOLD = """
import sys
from resilience.config import Settings
from resilience.infra.oplock import company_lock
s = Settings(auth_dir=sys.argv[1], runs_dir=sys.argv[2])
with company_lock(s, sys.argv[3], "restore.to-files"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_switch_or_an_export_while_another_command_holds_the_lock_is_refused(
    shared: Service,  # noqa: F811
) -> None:
    s = shared.settings
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(s.auth_root), str(s.runs_dir), shared.company],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        before = observe(shared)
        for attempt in (
            lambda: commands.switch(s, "to-files", company_id=shared.company),
            lambda: commands.switch(s, "to-postgres", company_id=shared.company),
            lambda: commands.export(s, company_id=shared.company, directory=s.auth_root),
            lambda: cleanup_keys(s, company_id=shared.company, yes=True),
            lambda: cleanup_legacy(s, company_id=shared.company, yes=True),
            lambda: restore_backup(s, company=shared.company, yes=True),
        ):
            with pytest.raises(LockHeld, match=f"pid {holder.pid}") as info:
                attempt()
            assert info.value.record is not None  # the refusal is recorded too
        assert observe(shared) == before
        # a dry run reads only: it takes no lock
        dry: Any = commands.switch(s, "to-files", company_id=shared.company, dry_run=True)
        assert dry.outcome.result is None
        assert cleanup_keys(s, company_id=shared.company).dry_run
    finally:
        holder.communicate("", timeout=30)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
