"""`drill.*`: chaos drills on a stack (local by default), each writing its report.

Every drill task takes `--backend local|docker|external`. Against `external` (staging), fault
injection needs the settings to mark the target (`RESILIENCE_DRILL_TARGET=true`, checked by the
drills) and the run to be confirmed with `--yes`. Each run also writes JUnit XML for CI
(`reports/junit-<drill>.xml`).
"""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from tasks._run import ROOT, operator_task, venv_bin

BACKENDS = ("local", "docker", "external")
BACKEND_HELP = "local (default), docker or external (staging: needs --yes)"
YES_HELP = "confirm a drill against the external backend (faults on a real deployment)"
HELP = {"backend": BACKEND_HELP, "k": "only scenarios matching", "yes": YES_HELP}


def _drill(
    c: Context,
    name: str,
    paths: list[str],
    backend: str | None,
    yes: bool,
    *,
    k: str = "",
    marks: str | None = None,
    env: dict[str, str] | None = None,
) -> None:
    from resilience.errors import InputError

    if backend is not None and backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "external" and not yes:
        raise InputError(
            "a drill against the external backend injects faults into a real deployment: "
            "confirm with --yes (and RESILIENCE_DRILL_TARGET=true in its settings)"
        )
    args = [*paths, "-p", "no:cacheprovider", f"--junitxml=reports/junit-{name}.xml"]
    args += ["-o", f"junit_suite_name=drill-{name}"]
    if marks:
        args += ["-m", repr(marks)]
    if k:
        args += ["-k", repr(k)]
    env = {**(env or {}), **({"RESILIENCE_BACKEND": backend} if backend else {})}
    with c.cd(str(ROOT)):
        c.run(" ".join([venv_bin("pytest"), *args]), env=env, pty=False)


@task(
    auto_shortflags=False,
    help={
        **HELP,
        "service": "standin (default) or baileys: the drill service on real Baileys code "
        "(scenarios a, b, d, e, g; reports/drill-rollback-baileys.*)",
    },
)
@operator_task
def rollback(
    c: Context,
    backend: str | None = None,
    k: str = "",
    yes: bool = False,
    service: str | None = None,
) -> None:
    """Emergency rollback drill: outages, round trips, a failed check, races (scenarios a-h).

    (a) proxy disabled and (b) PostgreSQL stopped, each a snapshot fallback and the way back;
    (c) 2 s latency, a live export; (d) a round trip keeping file-mode writes; (e) a failed
    verification carrying file-mode writes back; (f) two switches at once; (g) the way back
    after a snapshot fallback with PostgreSQL intact; (h) undecodable files refused before the
    stop. Writes reports/drill-rollback.{html,json}. `--service baileys` runs a, b, d, e and g
    against the drill service on real Baileys code (reports/drill-rollback-baileys.*)."""
    from resilience.errors import InputError

    if service not in (None, "standin", "baileys"):
        raise InputError(f"--service must be standin or baileys, not {service!r}")
    env = {"RESILIENCE_DRILL_SERVICE": service} if service else {}
    _drill(c, "rollback", ["drills/test_rollback.py"], backend, yes, k=k, env=env)


@task(
    auto_shortflags=False,
    help={**HELP, "slow": "also the true durations (TTL 300 s, outages of 3 and 6 minutes)"},
)
@operator_task
def cache(
    c: Context, backend: str | None = None, k: str = "", slow: bool = False, yes: bool = False
) -> None:
    """Creds-cache drill: outages with a PM2 restart in the middle, within and past the TTL.

    Writes reports/drill-cache.{html,json}. Without --slow, time is scaled to seconds."""
    marks = None if slow else "not slow"
    _drill(c, "cache", ["drills/test_cache_outage.py"], backend, yes, k=k, marks=marks)


@task(auto_shortflags=False, help=HELP)
@operator_task
def backup(c: Context, backend: str | None = None, k: str = "", yes: bool = False) -> None:
    """Backup drill: restores, a region cut, corrupt dumps, datacenter loss, point in time.

    Restore after TRUNCATE, a region cut and caught up, corrupt and truncated dumps, datacenter
    loss (RTO/RPO), one company restored while another writes; point-in-time recovery (a
    deleted tenant, the RPO after SIGKILL, a region cut during WAL archiving). Writes
    reports/drill-backup.{html,json}."""
    _drill(c, "backup", ["drills/test_backup.py", "drills/test_pitr.py"], backend, yes, k=k)


@task(auto_shortflags=False, help=HELP)
@operator_task
def cleanup(c: Context, backend: str | None = None, k: str = "", yes: bool = False) -> None:
    """Cleanup drill: stale keys deleted in batches while the service writes (10k; 100k slow).

    Writes reports/drill-cleanup.{html,json}."""
    _drill(c, "cleanup", ["drills/test_cleanup.py"], backend, yes, k=k)


@task(auto_shortflags=False, help=HELP)
@operator_task
def monitoring(c: Context, backend: str | None = None, k: str = "", yes: bool = False) -> None:
    """Monitoring drill: latency, a held pool, aged keys, a restart, the page in a browser.

    Writes reports/drill-monitoring.{html,json} and the status page's screenshot."""
    _drill(c, "monitoring", ["drills/test_monitoring.py"], backend, yes, k=k)


@task(auto_shortflags=False, help=HELP)
@operator_task
def diagnose(c: Context, backend: str | None = None, k: str = "", yes: bool = False) -> None:
    """Diagnose drill: each scenario broken as in life, named, repaired by the printed command.

    Writes reports/drill-diagnose.{html,json}."""
    _drill(c, "diagnose", ["drills/test_diagnose.py"], backend, yes, k=k)


@task(auto_shortflags=False, help=HELP)
@operator_task
def mirror(c: Context, backend: str | None = None, k: str = "", yes: bool = False) -> None:
    """Mirror drill: PostgreSQL lost under steady writes, the service switched onto the mirror.

    The proxy disabled, PostgreSQL stopped and killed, the mirror installed with its loss
    window beside the snapshot's; the mirror killed mid-traffic; a change the feed missed,
    repaired. Writes reports/drill-mirror.{html,json}."""
    _drill(c, "mirror", ["drills/test_mirror.py"], backend, yes, k=k)


@task(auto_shortflags=False, name="all", help={"backend": BACKEND_HELP, "yes": YES_HELP})
@operator_task
def all_drills(c: Context, backend: str | None = None, yes: bool = False) -> None:
    """Every drill, slow ones included, and the rollback drill on real Baileys code (nightly)."""
    _drill(c, "all", ["drills"], backend, yes)
    if backend != "external":  # staging runs its own service
        env = {"RESILIENCE_DRILL_SERVICE": "baileys"}
        _drill(c, "rollback-baileys", ["drills/test_rollback.py"], backend, yes, env=env)
