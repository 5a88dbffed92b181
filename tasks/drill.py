"""`drill.*`: chaos drills on a stack (local by default), each writing its report."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from tasks._run import ROOT, venv_bin

BACKEND_HELP = "local (default), docker or external"


def _pytest(c: Context, args: list[str], backend: str | None) -> None:
    env = {"RESILIENCE_BACKEND": backend} if backend else {}
    with c.cd(str(ROOT)):
        c.run(" ".join([venv_bin("pytest"), *args]), env=env, pty=False)


@task(auto_shortflags=False, help={"backend": BACKEND_HELP, "k": "only scenarios matching"})
def rollback(c: Context, backend: str | None = None, k: str = "") -> None:
    """Emergency rollback drill, all four scenarios: reports/drill-rollback.{html,json}."""
    args = ["drills/test_rollback.py", "-p", "no:cacheprovider"]
    if k:
        args += ["-k", repr(k)]
    _pytest(c, args, backend)


@task(
    auto_shortflags=False,
    help={
        "backend": BACKEND_HELP,
        "k": "only scenarios matching",
        "slow": "also the true durations (TTL 300 s, outages of 3 and 6 minutes)",
    },
)
def cache(c: Context, backend: str | None = None, k: str = "", slow: bool = False) -> None:
    """Creds-cache drill: outages with a PM2 restart in the middle, on cached creds and past
    the TTL: reports/drill-cache.{html,json}. Without --slow, time is scaled to seconds."""
    args = ["drills/test_cache_outage.py", "-p", "no:cacheprovider"]
    if not slow:
        args += ["-m", repr("not slow")]
    if k:
        args += ["-k", repr(k)]
    _pytest(c, args, backend)


@task(auto_shortflags=False, help={"backend": BACKEND_HELP, "k": "only scenarios matching"})
def backup(c: Context, backend: str | None = None, k: str = "") -> None:
    """Backup drill: restore after TRUNCATE, a region cut, corrupt dumps, datacenter loss, one
    company restored: reports/drill-backup.{html,json}."""
    args = ["drills/test_backup.py", "-p", "no:cacheprovider"]
    if k:
        args += ["-k", repr(k)]
    _pytest(c, args, backend)


@task(auto_shortflags=False, help={"backend": BACKEND_HELP, "k": "only scenarios matching"})
def monitoring(c: Context, backend: str | None = None, k: str = "") -> None:
    """Monitoring drill: latency, a held pool, aged keys, a restart, a real browser:
    reports/drill-monitoring.{html,json} and the status page's screenshot."""
    args = ["drills/test_monitoring.py", "-p", "no:cacheprovider"]
    if k:
        args += ["-k", repr(k)]
    _pytest(c, args, backend)


@task(auto_shortflags=False, name="all", help={"backend": BACKEND_HELP})
def all_drills(c: Context, backend: str | None = None) -> None:
    """Every drill, slow ones included (the nightly chaos run)."""
    _pytest(c, ["drills", "-p", "no:cacheprovider"], backend)
