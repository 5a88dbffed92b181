"""`check`: is this host ready for an incident? Every part the emergency switch, the backups and
the alerts depend on, tried the way they will use it, each within its own time bound.

Each finding is OK, WARN or FAIL with what was found and, when not OK, the fix (the command or
setting to change). The checks run side by side, each in a thread of its own bounded by
:data:`CHECK_TIMEOUT` (and by its own connect, statement, S3 and HTTP timeouts below that), so a
host with everything broken is judged within about that bound. Exit code: 0 all OK, 1 warnings,
2 failures. Nothing here changes the service: the S3 probe object is deleted again, the alert
channels are only reached (a real test alert only with ``send_test``).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from resilience.check.alerts import probe_sentry, probe_telegram
from resilience.check.database import probe_restore_db, probe_service_db
from resilience.check.findings import CHECK_TIMEOUT, CheckReport, Finding, Status
from resilience.check.host import probe_git, probe_pm2, probe_schedule, probe_snapshot
from resilience.check.storage import bounded_regions, probe_region
from resilience.config import Settings
from resilience.errors import ResilienceError

__all__ = ["CHECK_TIMEOUT", "CheckReport", "Finding", "Status", "run_checks", "settings_failure"]


@dataclass
class _Job:
    names: list[str]  # the findings a timeout stands for
    run: Callable[[], list[Finding]]
    result: list[Finding] | None = None
    error: str | None = None


def _start(job: _Job) -> threading.Thread:
    def target() -> None:
        try:
            job.result = job.run()
        except Exception as exc:  # a bug or an odd answer: one line, never a traceback
            job.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"

    thread = threading.Thread(target=target, name=f"check-{job.names[0]}", daemon=True)
    thread.start()
    return thread


#: What the checks import, imported before they start side by side: in a fresh process two
#: threads importing modules that import each other (psycopg's, ours) can see one of them half
#: initialised ("cannot import name ... from partially initialized module").
_CHECK_MODULES = (
    "psycopg",
    "resilience.authstate.pgconn",
    "resilience.authstate.pgstore",
    "resilience.files.export",
    "resilience.backup.dump",
    "resilience.backup.catalog",
    "resilience.backup.listing",
    "resilience.infra.s3",
    "resilience.alerting.channels",
    "resilience.infra.redact",
    "resilience.infra.pm2",
    "resilience.service.gitref",
    "resilience.files.snapshot",
    "resilience.maintenance.schedule",
)


def run_checks(
    settings: Settings, *, send_test: bool = False, timeout: float = CHECK_TIMEOUT
) -> CheckReport:
    """Every check, side by side, each bounded by `timeout` seconds."""
    import importlib

    from resilience.errors import ConfigError

    for module in _CHECK_MODULES:
        importlib.import_module(module)
    began = time.monotonic()
    report = CheckReport([Finding("settings", "ok", "valid")])
    jobs = [
        _Job(["service-db"], lambda: probe_service_db(settings)),
        _Job(["restore-db"], lambda: probe_restore_db(settings)),
        _Job(["sentry"], lambda: probe_sentry(settings, send_test)),
        _Job(["telegram"], lambda: probe_telegram(settings, send_test)),
        _Job(["pm2-app", "monitor", "mirror"], lambda: probe_pm2(settings)),
        _Job(["fallback-tag"], lambda: probe_git(settings)),
        _Job(["snapshot"], lambda: probe_snapshot(settings)),
        _Job(["schedule"], probe_schedule),
    ]
    try:
        for store in bounded_regions(settings):
            jobs.append(
                _Job([f"s3-{store.name}"], functools.partial(probe_region, settings, store))
            )
    except ConfigError as exc:
        report.findings.append(
            Finding("s3", "fail", str(exc), "set the S3 endpoints, buckets and credentials")
        )
    threads = [_start(job) for job in jobs]
    deadline = time.monotonic() + timeout
    for job, thread in zip(jobs, threads, strict=True):
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            report.findings.append(
                Finding(
                    job.names[0],
                    "fail",
                    f"no answer within {timeout:g} s ({', '.join(job.names)} not checked)",
                    "see why with the matching command (diagnose, backup.list, pm2 list)",
                )
            )
        elif job.error is not None:
            report.findings.append(Finding(job.names[0], "fail", job.error, ""))
        else:
            report.findings.extend(job.result or [])
    report.duration_s = time.monotonic() - began
    return report


def settings_failure(exc: ResilienceError) -> CheckReport:
    """The report when the settings themselves do not load: nothing else can be checked."""
    return CheckReport(
        [Finding("settings", "fail", str(exc), "fix the named setting in .env or the environment")]
    )
