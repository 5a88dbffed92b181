"""`schedule.install` / `schedule.remove` against a scratch crontab file: idempotent, other
lines kept, every entry a real task, and a clear message where cron is missing."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from resilience.errors import ConfigError
from resilience.maintenance import schedule
from tasks import ns

ROOT = Path(__file__).resolve().parents[1]
INVOKE = str(Path(sys.executable).parent / "invoke")
OTHER = "# the operator's own lines\nMAILTO=ops@example.org\n0 1 * * * /usr/local/bin/rotate-logs\n"


def _task(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INVOKE, "--search-root", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_install_is_idempotent_keeps_other_lines_and_names_real_tasks(tmp_path: Path) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_text(OTHER)
    eco = tmp_path / "eco.json"
    flags = ["--crontab-file", str(crontab), "--ecosystem-file", str(eco)]
    flags += ["--log-dir", str(tmp_path / "logs")]
    for _ in range(2):
        done = _task("schedule.install", *flags, "--json")
        assert done.returncode == 0, done.stderr
    text = crontab.read_text()
    assert text.startswith(OTHER)
    assert text.count(schedule.BEGIN) == 1 and text.count(schedule.END) == 1
    entries = [line for line in text.splitlines() if re.match(r"^[\d*/,-]+ ", line)]
    managed = [e for e in entries if "./run " in e]
    assert managed, text
    for entry in managed:
        words = shlex.split(entry.split(" && ", 1)[1].split(" >> ")[0])
        assert words[0] == "./run" and words[1] in ns.task_names, entry
        task = ns[words[1]]
        accepted = {"--" + n for a in task.get_arguments() for n in a.names if len(n) > 1}
        assert {w for w in words[2:] if w.startswith("--")} <= accepted, entry
    snapshot = next(e for e in managed if "restore.snapshot" in e)
    assert snapshot.startswith("*/15 * * * * ")
    apps = json.loads(eco.read_text())["apps"]
    assert [a["args"][0] for a in apps] == [shlex.split(e.split(" && ")[1])[1] for e in managed]
    assert all(a["autorestart"] is False and a["cron_restart"] for a in apps)

    removed = _task("schedule.remove", "--crontab-file", str(crontab))
    assert removed.returncode == 0, removed.stderr
    assert crontab.read_text() == OTHER


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_text(OTHER)
    eco = tmp_path / "eco.json"
    done = _task(
        "schedule.install", "--dry-run", "--crontab-file", str(crontab),
        "--ecosystem-file", str(eco),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "restore.snapshot" in done.stdout and "cron_restart" in done.stdout
    assert crontab.read_text() == OTHER and not eco.exists()


def test_a_half_block_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="without"):
        schedule.merge_block(f"{OTHER}{schedule.BEGIN}\n* * * * * x\n", "block\n")


def test_missing_crontab_says_how_to_install_cron(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule.shutil, "which", lambda _name: None)
    with pytest.raises(ConfigError, match="apt-get install cron"):
        schedule.read_crontab()


def test_without_crontab_install_writes_the_pm2_ecosystem_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host without `crontab` (and `--ecosystem-file`, as docs/operations.md shows): the PM2
    file is written, the crontab is left alone, and nothing fails."""
    monkeypatch.setattr(schedule.shutil, "which", lambda _name: None)
    ecosystem = tmp_path / "etc" / "schedule.json"
    plan = schedule.plan_install(ns.task_names, ROOT, tmp_path / "logs", ecosystem)
    assert plan.crontab is None and plan.to_dict()["crontab_installed"] is False
    schedule.install(plan, tmp_path / "logs")
    apps = json.loads(ecosystem.read_text())["apps"]
    names = {app["name"] for app in apps}
    assert {"baileys-resilience-check", "baileys-resilience-runs-prune"} <= names


def test_from_the_installed_command_jobs_run_it_in_the_settings_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Started as `baileys-resilience` (its console script sets where it lives), the crontab
    lines, the schedule's PM2 apps and the monitor's and mirror's PM2 apps run that command by
    its path in the directory it was run from (its `.env`), not `./run` in a clone."""
    from task_runner import run_task

    from resilience.infra.commandline import EXECUTABLE_VARIABLE, PROGRAM_VARIABLE
    from tasks import mirror as mirror_tasks
    from tasks import monitor as monitor_tasks
    from tasks import schedule as schedule_tasks

    program = tmp_path / "venv bin" / "baileys-resilience"  # a path a shell must quote
    deployment = tmp_path / "deployment"
    deployment.mkdir()
    monkeypatch.setenv(EXECUTABLE_VARIABLE, str(program))
    monkeypatch.setenv(PROGRAM_VARIABLE, "baileys-resilience")
    crontab = tmp_path / "crontab"
    code, out, err = run_task(
        schedule_tasks.install, {}, deployment, monkeypatch, capsys,
        crontab_file=str(crontab), json=True,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ecosystem_file"] == str(deployment / "schedule.ecosystem.json")
    entries = [line for line in crontab.read_text().splitlines() if re.match(r"^[\d*/,-]+ ", line)]
    assert entries and not any("./run" in e for e in entries)
    for entry in entries:
        cd, command = entry.split(" && ", 1)
        assert shlex.split(cd)[5:] == ["cd", str(deployment)]
        words = shlex.split(command.split(" >> ")[0])
        assert words[0] == str(program) and words[1] in ns.task_names, entry
        assert command.split(" >> ")[1].startswith(str(deployment / "logs") + "/")
    apps = json.loads((deployment / "schedule.ecosystem.json").read_text())["apps"]
    assert {(a["script"], a["cwd"]) for a in apps} == {(str(program), str(deployment))}

    pm2 = tmp_path / "pm2"  # never run: a dry run
    pm2.write_text("#!/bin/sh\nexit 1\n")
    for tasks_module, task in ((monitor_tasks, "monitor.run"), (mirror_tasks, "mirror.run")):
        code, out, err = run_task(
            tasks_module.install, {"RESILIENCE_PM2_BIN": str(pm2)}, deployment, monkeypatch,
            capsys, dry_run=True, json=True,
        )  # fmt: skip
        assert code == 0, err
        assert shlex.split(json.loads(out)["command"]) == [
            "cd", str(deployment), "&&", str(program), task
        ]  # fmt: skip


def test_from_a_clone_jobs_run_dot_run_in_the_clone(tmp_path: Path) -> None:
    from resilience.infra.commandline import Launcher

    clone = Launcher.clone(ROOT)
    job = schedule.Job("x", "* * * * *", "backup.run", ("--json",))
    assert job.command(ROOT, tmp_path) == job.command(clone, tmp_path)
    assert job.command(ROOT, tmp_path) == (
        f"cd {ROOT} && ./run backup.run --json >> {tmp_path}/x.log 2>&1"
    )
    [app] = schedule.pm2_ecosystem([job], ROOT, tmp_path)["apps"]  # type: ignore[index]
    assert app["script"] == str(ROOT / "run") and app["cwd"] == str(ROOT)
