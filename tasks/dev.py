"""Quality and numbers: `lint`, `test`, `bench`."""

from __future__ import annotations

import json as json_mod
import sys
import tempfile
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.tasks import task

from tasks._run import ROOT, operator_task, venv_bin


@task(auto_shortflags=False)
def lint(c: Context) -> None:
    """ruff (lint and format check) on everything, mypy --strict on resilience/ and tasks/."""
    with c.cd(str(ROOT)):
        c.run(f"{venv_bin('ruff')} check .", pty=False)
        c.run(f"{venv_bin('ruff')} format --check .", pty=False)
        c.run(f"{venv_bin('mypy')} resilience tasks", pty=False)


@task(
    auto_shortflags=False,
    help={
        "k": "only tests matching this expression",
        "slow": "also run drills marked slow (nightly)",
        "path": "test paths (default: tests and drills)",
    },
)
def test(c: Context, k: str = "", slow: bool = False, path: str = "") -> None:
    """Lint, type-check, then every test (slow drills only with --slow)."""
    lint(c)
    args = [venv_bin("pytest"), path or "tests drills"]
    if not slow:
        args += ["-m", "'not slow'"]
    if k:
        args += ["-k", repr(k)]
    args += ["--html=reports/tests.html", "--self-contained-html"]
    with c.cd(str(ROOT)):
        c.run(" ".join(args), pty=False)


BENCH_DEFAULT_SIZES = {
    "restore": "1313,10000,100000",
    "cleanup": "100000",
    "backup": "50",
    "monitoring": "20000,100000",
    "mirror": "10000",
    "pitr": "50",
}


@task(
    positional=["name"],
    auto_shortflags=False,
    help={
        "name": "the benchmark: restore, cleanup, backup, monitoring, mirror or pitr",
        "sizes": "comma-separated sizes (restore: key counts, 1313,10000,100000; cleanup: "
        "stale keys, 100000; backup: database MB, 50; monitoring: SELECT 1 iterations per "
        "run and keys for the monitor cycle, 20000,100000; mirror: changes in the burst, 10000; "
        "pitr: database MB, 50)",
        "repeat": "measurements per size (median and min are reported)",
        "tenants": "restore: the many-companies case as COMPANIESxKEYS (default 500x1313)",
    },
)
@operator_task
def bench(c: Context, name: str, sizes: str = "", repeat: int = 3, tenants: str = "") -> None:
    """Benchmark as JSON: `bench restore`, `cleanup`, `backup`, `monitoring`, `mirror` or `pitr`.

    restore: export/import beside the raw COPY + file-write limit (and, over the company's own
    rows, the import and the way back as restore.to-postgres runs it), 500 companies exported in
    parallel beside the raw limit of the same rows (peak RSS), and the switch's RTO in
    scenarios (a) and (b) against its floor (a PM2 restart into file mode). cleanup: the batched key
    cleanup beside one DELETE, each with the p99 of concurrent upserts. backup: backup and
    verified restore beside pg_dump + put_object and get_object + pg_restore. monitoring: the
    query instrumentation beside a bare connection, and one full monitor cycle over 100k keys.
    mirror: the service's upsert latency with the change-feed trigger beside without it, the
    mirror's apply throughput, and its lag under the stand-in's steady rate and a burst. pitr:
    the WAL push (segments per second to both regions) beside a put_object of the same bytes,
    and a point-in-time restore of a ~50 MB database with ten minutes of WAL beside
    get_object of its objects."""
    from resilience.config import load_drill_settings
    from resilience.drill.stack.local import LocalStack
    from resilience.errors import InputError
    from resilience.infra.output import Output

    if name not in BENCH_DEFAULT_SIZES:
        raise InputError(
            f"unknown benchmark {name[:30]!r}: use restore, cleanup, backup, monitoring, mirror "
            "or pitr"
        )
    sizes = sizes or BENCH_DEFAULT_SIZES[name]
    try:
        counts = tuple(int(n) for n in sizes.split(",") if n.strip())
    except ValueError:
        raise InputError(f"--sizes must be comma-separated integers, not {sizes!r}") from None
    many = _tenants(tenants) if name == "restore" else None
    if tenants and name != "restore":
        raise InputError("--tenants is for bench restore only")
    if name == "monitoring" and not 1 <= len(counts) <= 2:
        raise InputError("bench monitoring --sizes is ITERATIONS[,KEYS], e.g. 20000,100000")
    out = Output(True)
    settings = load_drill_settings(
        stack_dir=ROOT / ".stack" / "bench",
        backend="local",
        pg_archive=(name == "pitr") or None,  # WAL archived into the stack's spool
        pg_durable=(name == "pitr") or None,
    )
    with LocalStack(settings) as stack, tempfile.TemporaryDirectory() as work:
        if name == "backup":
            result = _bench_backup(stack, Path(work), counts, repeat, out.progress)
        elif name == "monitoring":
            result = _bench_monitoring(stack, counts, repeat, out.progress)
        elif name == "pitr":
            result = _bench_pitr(stack, Path(work), counts, repeat, out.progress)
        elif name == "mirror":
            from resilience.drill.bench.mirror import bench_mirror

            result = bench_mirror(
                stack.endpoints.admin_dsn,
                sizes=counts,
                repeat=repeat,
                work_dir=Path(work),
                progress=out.progress,
            )
        elif name == "cleanup":
            from resilience.drill.bench.cleanup import bench_cleanup

            result = bench_cleanup(
                stack.endpoints.admin_dsn, sizes=counts, repeat=repeat, progress=out.progress
            )
        else:
            result = _bench_restore(stack, settings, Path(work), counts, repeat, out.progress, many)
    sys.stdout.write(json_mod.dumps(result, indent=2) + "\n")


def _tenants(text: str) -> tuple[int, int] | None:
    """``COMPANIESxKEYS`` (e.g. 500x1313), or None for the default."""
    from resilience.errors import InputError

    if not text:
        return None
    parts = text.lower().split("x")
    try:
        companies, keys = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"--tenants must be COMPANIESxKEYS, e.g. 500x1313, not {text!r}") from None
    if companies < 1 or keys < 1:
        raise InputError(f"--tenants needs at least one company and one key, not {text!r}")
    return companies, keys


def _bench_restore(
    stack: Any,
    settings: Any,
    work: Path,
    sizes: tuple[int, ...],
    repeat: int,
    progress: Any,
    tenants: tuple[int, int] | None,
) -> dict[str, Any]:
    from resilience.drill.bench.restore import DEFAULT_TENANTS, bench_restore
    from resilience.drill.bench.rto import bench_rto

    result = bench_restore(
        stack.endpoints.admin_dsn,
        sizes=sizes,
        work_dir=work,
        repeat=repeat,
        progress=progress,
        workers=settings.restore_workers,
        tenants=tenants or DEFAULT_TENANTS,
    )
    result["rto"] = bench_rto(stack, settings, work, repeat=repeat, progress=progress)
    return result


def _bench_monitoring(
    stack: Any, sizes: tuple[int, ...], repeat: int, progress: Any
) -> dict[str, Any]:
    from resilience.drill.bench.monitoring import DEFAULT_KEYS, bench_monitoring

    iterations, keys = sizes if len(sizes) == 2 else (sizes[0], DEFAULT_KEYS)
    ep = stack.endpoints
    return bench_monitoring(
        ep.admin_dsn,
        ep.service_dsn,
        iterations=iterations,
        keys=keys,
        repeat=repeat,
        progress=progress,
    )


def _bench_backup(
    stack: Any, work: Path, sizes: tuple[int, ...], repeat: int, progress: Any
) -> dict[str, Any]:
    from resilience.drill.bench.backup import bench_backup
    from resilience.drill.standin.deploy import backup_settings

    ep = stack.endpoints
    settings = backup_settings(stack, None, work, fresh_buckets=False)
    return {
        "bench": "backup",
        "sizes": [
            bench_backup(settings, ep.admin_dsn, size_mb=size, repeat=repeat, progress=progress)
            for size in sizes
        ],
    }


def _bench_pitr(
    stack: Any, work: Path, sizes: tuple[int, ...], repeat: int, progress: Any
) -> dict[str, Any]:
    from pydantic import SecretStr

    from resilience.drill.bench.pitr import bench_pitr
    from resilience.drill.standin.deploy import backup_settings

    ep = stack.endpoints
    settings = backup_settings(stack, None, work).model_copy(
        update={
            "wal_spool_dir": Path(ep.wal_spool),
            "pitr_dsn": SecretStr(ep.admin_dsn),
            "barman_server_bin_dir": ROOT / ".tools" / "barman" / "bin",
        }
    )
    return {
        "bench": "pitr",
        "sizes": [
            bench_pitr(settings, ep.admin_dsn, size_mb=size, repeat=repeat, progress=progress)
            for size in sizes
        ],
    }
