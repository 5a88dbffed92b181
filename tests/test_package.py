"""The package an operator installs: the wheel's command, core dependencies only (the drill
rig's and barman-cloud's are extras), and no core module importing an extra at import time.

The issue's done-when (slow: a wheel built and installed into a fresh venv): the installed
command lists the operator's tasks, schedules itself, and against the embedded stack `check
--json` passes with warnings at most and `restore.export` writes a company from a `.env`."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import uuid
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.config import DrillSettings, settings_as_env
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import operator_settings
from resilience.files.manifest import read_manifest
from resilience.infra.pm2 import Pm2, find_pm2

ROOT = Path(__file__).resolve().parents[1]
#: Packages of the extras (drill, barman), never imported by a core module at import time.
EXTRAS = ("moto", "testcontainers", "brotli", "barman", "psycopg2", "docker")
OPERATOR = ("restore.", "backup.", "cleanup.", "schedule.", "monitor.", "mirror.", "diagnose")
RIG = ("stack.", "drill.", "bench", "lint", "test")


def _core_modules() -> list[str]:
    names = ["tasks", "tasks.program"]
    for path in sorted((ROOT / "resilience").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module.startswith("resilience.drill") or path.name == "rss_probe.py":
            continue
        names.append(module.removesuffix(".__init__"))
    names += [f"tasks.{p.stem}" for p in sorted((ROOT / "tasks").glob("*.py"))]
    return names


def test_no_core_module_imports_an_extra() -> None:
    """Every module outside the drill rig imports with the extras' packages made unimportable."""
    script = (
        "import importlib, sys\n"
        f"for name in {EXTRAS!r}: sys.modules[name] = None\n"
        f"for module in {_core_modules()!r}: importlib.import_module(module)\n"
        "print('imported')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported" in done.stdout


def test_program_lists_the_operator_namespaces_only() -> None:
    from tasks.program import operator_namespace

    names = operator_namespace().task_names
    for prefix in OPERATOR:
        assert any(name.startswith(prefix) for name in names), prefix
    for prefix in RIG:
        assert not any(name.startswith(prefix) for name in names), prefix


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built and installed into a fresh venv without extras (pip's cache or PyPI):
    the venv's `baileys-resilience`."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    env = _clean_env()
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("baileys_resilience-*.whl")
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    python = str(target / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    return target / "bin" / "baileys-resilience"


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without its settings (`RESILIENCE_*`) and venv, plus
    `extra`: an operator's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("RESILIENCE_") and not k.startswith("BAILEYS_RESILIENCE_")
    }
    env.pop("VIRTUAL_ENV", None)
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def _run(command: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(command), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=_clean_env(**env),
        cwd=cwd,
    )


@pytest.mark.slow
def test_wheel_installs_with_core_dependencies_only(installed: Path, tmp_path: Path) -> None:
    """Its core dependencies only; its command lists the operator's tasks, not the rig's."""
    python = str(installed.parent / "python")
    present = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
    ).stdout.lower()
    for package in ("moto", "testcontainers", "barman", "psycopg2", "brotli"):
        assert f"\n{package}==" not in f"\n{present}", package
    listed = _run(installed, tmp_path, "--list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "restore.to-files" in listed.stdout and "backup.run" in listed.stdout
    assert "stack.up" not in listed.stdout and "drill." not in listed.stdout


@pytest.mark.slow
def test_the_installed_command_schedules_itself(installed: Path, tmp_path: Path) -> None:
    """`schedule.install` from the installed command: every job runs that command by its path
    in the directory it ran in (where its `.env` is), never `./run`."""
    crontab = tmp_path / "crontab"
    done = _run(installed, tmp_path, "schedule.install", "--crontab-file", str(crontab), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = [line for line in crontab.read_text().splitlines() if " && " in line]
    assert jobs and all(f" && {installed} " in job for job in jobs), jobs
    assert all(shlex.split(job.split(" && ")[0])[-2:] == ["cd", str(tmp_path)] for job in jobs)
    apps = json.loads(Path(json.loads(done.stdout)["ecosystem_file"]).read_text())["apps"]
    assert {(a["script"], a["cwd"]) for a in apps} == {(str(installed), str(tmp_path))}


@pytest.fixture
def seeded(stack: Stack) -> Iterator[str]:
    """A company of 200 keys, deleted afterwards."""
    company = f"pkg_{uuid.uuid4().hex[:8]}"
    data = generate(company, 200)
    with connect(stack.endpoints.admin_dsn) as conn:
        pgraw.insert_raw(conn, company, data.creds, data.rows())
    yield company
    with connect(stack.endpoints.admin_dsn) as conn:
        pgraw.delete_company(conn, company)


@pytest.mark.slow
@pytest.mark.stack
def test_the_installed_command_checks_and_exports_against_the_stack(
    installed: Path, stack: Stack, settings: DrillSettings, seeded: str, tmp_path: Path
) -> None:
    """The issue's done-when: from the wheel's venv, `check --json` against the stack with the
    settings as environment variables (warnings at most, both regions named), and
    `restore.export` with the settings in a `.env` of the working directory."""
    pm2 = Pm2(find_pm2(settings.tools_dir), home=Path(stack.endpoints.pm2_home))
    app = f"pkg-{uuid.uuid4().hex[:8]}"  # the service's PM2 app, online
    pm2.run("start", "/bin/sleep", "--name", app, "--interpreter", "none", "--", "3600")
    try:
        _check_and_export(installed, stack, settings, pm2, app, seeded, tmp_path)
    finally:
        with contextlib.suppress(Exception):
            pm2.delete(app)


def _check_and_export(
    installed: Path,
    stack: Stack,
    settings: DrillSettings,
    pm2: Pm2,
    app: str,
    seeded: str,
    tmp_path: Path,
) -> None:
    work = tmp_path / "deployment"
    work.mkdir()
    operator = operator_settings(stack, settings, pm2).model_copy(
        update={
            "runs_dir": work / "runs",
            "snapshot_dir": work / "snapshots",
            "export_dir": work / "exports",
            "backup_spool_dir": work / "spool",
            "backup_validation_log": work / "validation.jsonl",
            "pm2_bin": pm2.binary.absolute(),
            "pm2_app": app,
        }
    )
    env = settings_as_env(operator)

    checked = _run(installed, work, "check", "--json", **env)
    assert checked.returncode in (0, 1), checked.stdout[-3000:] + checked.stderr[-2000:]
    doc = json.loads(checked.stdout)
    assert [f for f in doc["findings"] if f["status"] == "fail"] == [], doc
    statuses = {f["name"]: f["status"] for f in doc["findings"]}
    assert statuses["s3-moscow"] == statuses["s3-eu"] == "ok", doc
    assert statuses["service-db"] == "ok", doc
    assert "Traceback" not in checked.stderr

    (work / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (work / ".env").chmod(0o600)
    out = tmp_path / "export"
    exported = _run(installed, work, "restore.export", "--company", seeded, "--dir", str(out))
    assert exported.returncode == 0, exported.stderr[-2000:]
    directory = out / f"company_{seeded}"
    assert (directory / "creds.json").is_file()
    manifest = read_manifest(directory)
    assert manifest is not None
    with connect(stack.endpoints.admin_dsn) as conn:
        store = PgAuthStore(conn)
        digest = view_of(seeded, store.load_creds(seeded), store.records(seeded)).digest()
    assert manifest.digest == digest.digest and manifest.key_count == digest.key_count >= 200
    files = [p.name for p in directory.iterdir() if p.name != "manifest.json"]
    assert len(files) == digest.key_count + 1  # the keys and creds.json
