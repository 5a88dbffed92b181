"""The host around the service: PM2 (the service, the monitor, the mirror), the service's code
(fallback tag, clean work tree), the newest snapshot and the schedule."""

from __future__ import annotations

from resilience.check.findings import Finding, age_text
from resilience.config import Settings
from resilience.errors import ResilienceError
from resilience.infra.commandline import operator_command as cmd


def probe_pm2(settings: Settings) -> list[Finding]:
    from resilience.infra.pm2 import pm2_for

    try:
        apps = {str(a.get("name")): a for a in pm2_for(settings).apps()}
    except ResilienceError as exc:
        return [
            Finding("pm2-app", "fail", str(exc), "install PM2 or set RESILIENCE_PM2_BIN/PM2_HOME")
        ]
    findings = []
    app = apps.get(settings.pm2_app)
    if app is None:
        known = ", ".join(sorted(apps)) or "none"
        findings.append(
            Finding(
                "pm2-app",
                "fail",
                f"PM2 has no app {settings.pm2_app!r} (apps: {known})",
                "set RESILIENCE_PM2_APP (and RESILIENCE_PM2_HOME) to the service's PM2 app",
            )
        )
    elif app.get("status") != "online":
        findings.append(
            Finding(
                "pm2-app",
                "fail",
                f"{settings.pm2_app} is {app.get('status')}",
                f"pm2 start {settings.pm2_app}",
            )
        )
    else:
        findings.append(
            Finding("pm2-app", "ok", f"{settings.pm2_app} online (pid {app.get('pid')})")
        )
    for name, pm2_name, task in (
        ("monitor", settings.monitor_app, "monitor.install"),
        ("mirror", settings.mirror_app, "mirror.install"),
    ):
        entry = apps.get(pm2_name)
        if entry is None:
            findings.append(Finding(name, "warn", f"{pm2_name} is not under PM2", f"`{cmd(task)}`"))
        elif entry.get("status") != "online":
            findings.append(
                Finding(
                    name, "fail", f"{pm2_name} is {entry.get('status')}", f"pm2 start {pm2_name}"
                )
            )
        else:
            findings.append(Finding(name, "ok", f"{pm2_name} online (pid {entry.get('pid')})"))
    return findings


def probe_git(settings: Settings) -> list[Finding]:
    from resilience.service import gitref

    if settings.fallback_tag is None:
        return [
            Finding("fallback-tag", "ok", "no fallback tag configured: the switch keeps the code")
        ]
    if settings.service_dir is None:
        return [
            Finding(
                "fallback-tag",
                "fail",
                "RESILIENCE_FALLBACK_TAG is set but RESILIENCE_SERVICE_DIR is not",
                "set RESILIENCE_SERVICE_DIR to the service's git work tree",
            )
        ]
    repo = settings.service_dir
    try:
        present = gitref.tag_exists(repo, settings.fallback_tag)
    except ResilienceError as exc:
        return [Finding("fallback-tag", "fail", str(exc), "check RESILIENCE_SERVICE_DIR")]
    findings = [
        Finding(
            "fallback-tag",
            "ok" if present else "fail",
            f"tag {settings.fallback_tag} {'present' if present else 'missing'} in {repo}",
            ""
            if present
            else f"git -C {repo} fetch --tags, or set RESILIENCE_FALLBACK_TAG to the right tag",
        )
    ]
    try:
        dirty = gitref.is_dirty(repo)
    except ResilienceError as exc:
        return [*findings, Finding("work-tree", "fail", str(exc), "check RESILIENCE_SERVICE_DIR")]
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        findings.append(
            Finding(
                "work-tree",
                "warn",
                f"uncommitted changes in {repo}: {shown} (the switch refuses without --force)",
                f"commit or stash them (git -C {repo} stash)",
            )
        )
    else:
        findings.append(Finding("work-tree", "ok", f"{repo} clean"))
    return findings


def probe_snapshot(settings: Settings) -> list[Finding]:
    from resilience.files.snapshot import newest_snapshot

    snap = newest_snapshot(settings.snapshot_dir, settings.company_id)
    fix = f"`{cmd('restore.snapshot')}`; `{cmd('schedule.install')}` runs it every 15 min"
    if snap is None:
        return [
            Finding(
                "snapshot",
                "warn",
                f"no snapshot of {settings.company_id} in {settings.snapshot_dir}",
                fix,
            )
        ]
    age = snap.age_s()
    found = f"newest {snap.path.name}, {age_text(age)} old"
    if age > settings.snapshot_max_age:
        return [
            Finding(
                "snapshot",
                "warn",
                found + ", older than RESILIENCE_SNAPSHOT_MAX_AGE "
                f"({age_text(settings.snapshot_max_age)})",
                fix,
            )
        ]
    return [Finding("snapshot", "ok", found)]


def probe_schedule() -> list[Finding]:
    from resilience.maintenance import schedule

    try:
        installed = schedule.BEGIN in schedule.read_crontab().splitlines()
    except ResilienceError:
        installed = False
    if installed:
        return [Finding("schedule", "ok", "the crontab block is installed")]
    return [
        Finding(
            "schedule",
            "warn",
            "no crontab block of baileys-resilience (a PM2 ecosystem may run the jobs instead)",
            f"`{cmd('schedule.install')}`",
        )
    ]
