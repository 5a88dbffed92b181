"""The schedules: the crontab block and the equivalent PM2 ecosystem file.

Jobs (UTC): a snapshot every 15 minutes, the key cleanup daily at 03:00, and the backup,
validation, restore test and monitor entries once those tasks exist. The caller passes the task
names it has, so a job is only ever written for a command that exists.

The crontab block sits between two marker lines: a re-run replaces the block and keeps every
other line; `remove_block` takes it out. Writing goes through `crontab -` (or a file, for a
scratch crontab); on a machine without `crontab`, `install` writes the PM2 ecosystem file alone
(start it with `pm2 start FILE`) and `remove` says how to install cron.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from resilience.errors import ConfigError, InputError
from resilience.infra.commandline import Launcher, as_launcher
from resilience.infra.fsutil import atomic_write

BEGIN = "# BEGIN baileys-resilience (managed by `invoke schedule.install`; edits are replaced)"
END = "# END baileys-resilience"


@dataclass(frozen=True)
class Job:
    name: str  # the PM2 app name and the log file name
    cron: str  # five crontab fields, UTC
    task: str  # the invoke task
    args: tuple[str, ...] = ()

    def command(self, project: Path | Launcher, log_dir: Path) -> str:
        """The crontab command: `cd <clone> && ./run TASK ...`, or from the installed command
        `cd <settings dir> && /path/baileys-resilience TASK ...`; its output appended to its log."""
        line = as_launcher(project).shell([self.task, *self.args])
        return f"{line} >> {log_dir / self.name}.log 2>&1"


#: Every job the project knows, with the task it needs; only those whose task exists are used.
JOBS = (
    Job("snapshot", "*/15 * * * *", "restore.snapshot", ("--keep", "96", "--json")),
    Job("cleanup", "0 3 * * *", "cleanup.keys", ("--yes", "--json")),
    Job("backup-hourly", "5 * * * *", "backup.run", ("--kind", "auto", "--json")),
    Job("backup-validate", "30 4 * * *", "backup.validate", ("--json",)),
    # after the validation: retention never deletes the newest backup, nor an unvalidated day
    Job("backup-prune", "45 4 * * *", "backup.prune", ("--yes", "--json")),
    Job("restore-test", "0 5 1 * *", "backup.test-restore", ("--json",)),
    # point-in-time recovery (only where it is configured: RESILIENCE_PITR_DSN): a daily base
    # backup, its retention after it; the WAL pusher is a PM2 app of its own (docs/operations.md)
    Job("pitr-base", "15 2 * * *", "backup.base", ("--json",)),
    Job("health", "*/5 * * * *", "health", ("--once", "--json")),  # a record of the status
    # is the host still ready for an incident (credentials, tag, PM2, backups' age)?
    Job("check", "50 5 * * *", "check", ("--json",)),
    # run records past RESILIENCE_RUNS_KEEP_DAYS (dry runs and refusals sooner)
    Job("runs-prune", "55 5 * * *", "runs.prune", ("--yes", "--json")),
)


def jobs_for(available_tasks: Iterable[str]) -> list[Job]:
    """The jobs whose task exists."""
    names = set(available_tasks)
    return [job for job in JOBS if job.task in names]


def crontab_block(jobs: list[Job], project: Path | Launcher, log_dir: Path) -> str:
    lines = [BEGIN, "CRON_TZ=UTC"]
    lines += [f"{job.cron} {job.command(project, log_dir)}" for job in jobs]
    lines.append(END)
    return "\n".join(lines) + "\n"


def _split(existing: str) -> tuple[list[str], list[str]]:
    """(lines before the block, lines after it); the block itself is dropped."""
    lines = existing.splitlines()
    if BEGIN not in lines:
        return lines, []
    start = lines.index(BEGIN)
    if END not in lines[start:]:
        raise InputError(f"the crontab has '{BEGIN}' without '{END}': fix it by hand first")
    end = start + lines[start:].index(END)
    return lines[:start], lines[end + 1 :]


def merge_block(existing: str, block: str) -> str:
    """`existing` with the managed block replaced (or appended); other lines kept as they are."""
    before, after = _split(existing)
    while before and not before[-1].strip():
        before.pop()
    head = "\n".join(before) + "\n\n" if before else ""
    tail = "\n" + "\n".join(after) + "\n" if after else ""
    return head + block + tail


def remove_block(existing: str) -> str:
    before, after = _split(existing)
    if BEGIN in existing.splitlines():
        while before and not before[-1].strip():  # the blank line merge_block put before it
            before.pop()
    kept = before + after
    return "\n".join(kept) + "\n" if kept else ""


def pm2_ecosystem(jobs: list[Job], project: Path | Launcher, log_dir: Path) -> dict[str, object]:
    """The same jobs as PM2 apps that run once per `cron_restart` (no restart on exit)."""
    launch = as_launcher(project)
    return {
        "apps": [
            {
                "name": f"baileys-resilience-{job.name}",
                "script": launch.script,
                "args": [job.task, *job.args],
                "cwd": str(launch.cwd),
                "interpreter": "none",
                "cron_restart": job.cron,
                "autorestart": False,
                "time": True,
                "out_file": str(log_dir / f"{job.name}.log"),
                "error_file": str(log_dir / f"{job.name}.log"),
                "env": {"TZ": "UTC"},
            }
            for job in jobs
        ]
    }


def _crontab_binary() -> str:
    found = shutil.which("crontab")
    if found is None:
        raise ConfigError(
            "crontab not found: install cron (apt-get install cron) or use the PM2 ecosystem "
            "file that schedule.install writes"
        )
    return found


def read_crontab(file: Path | None = None) -> str:
    """The current crontab: of `file` when given (a scratch crontab), else the user's."""
    if file is not None:
        return file.read_text() if file.exists() else ""
    done = subprocess.run(
        [_crontab_binary(), "-l"], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        if "no crontab" in done.stderr.lower():
            return ""
        raise ConfigError(f"crontab -l failed: {done.stderr.strip()[:200]}")
    return done.stdout


def write_crontab(text: str, file: Path | None = None) -> None:
    if file is not None:
        atomic_write(file, text.encode(), mode=0o600)
        return
    done = subprocess.run(
        [_crontab_binary(), "-"], input=text, capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        raise ConfigError(f"crontab - failed: {done.stderr.strip()[:200]}")


@dataclass
class SchedulePlan:
    jobs: list[Job]
    crontab: str | None  # the whole crontab after the change; None: no crontab on this host
    block: str
    ecosystem: dict[str, object]
    ecosystem_file: Path

    def to_dict(self) -> dict[str, object]:
        return {
            "jobs": [
                {"name": j.name, "cron": j.cron, "task": j.task, "args": list(j.args)}
                for j in self.jobs
            ],
            "crontab_block": self.block,
            "crontab_installed": self.crontab is not None,
            "ecosystem_file": str(self.ecosystem_file),
            "ecosystem": self.ecosystem,
        }


def plan_install(
    available_tasks: Iterable[str],
    project: Path | Launcher,
    log_dir: Path,
    ecosystem_file: Path,
    crontab_file: Path | None = None,
) -> SchedulePlan:
    jobs = jobs_for(available_tasks)
    block = crontab_block(jobs, project, log_dir)
    # a host without crontab (containers, PM2-only hosts): the PM2 ecosystem file alone
    has_cron = crontab_file is not None or shutil.which("crontab") is not None
    return SchedulePlan(
        jobs,
        merge_block(read_crontab(crontab_file), block) if has_cron else None,
        block,
        pm2_ecosystem(jobs, project, log_dir),
        ecosystem_file,
    )


def install(plan: SchedulePlan, log_dir: Path, crontab_file: Path | None = None) -> None:
    """Write the crontab and the ecosystem file (both re-runnable)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(
        plan.ecosystem_file, (json.dumps(plan.ecosystem, indent=2) + "\n").encode(), mode=0o644
    )
    if plan.crontab is not None:
        write_crontab(plan.crontab, crontab_file)


def uninstall(crontab_file: Path | None = None) -> str:
    """Take the managed block out of the crontab; returns the crontab as written."""
    text = remove_block(read_crontab(crontab_file))
    write_crontab(text, crontab_file)
    return text
