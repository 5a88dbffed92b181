"""``bench monitoring``: what the monitoring costs, in one run.

1. **Instrumentation overhead per query.** ``SELECT 1`` (fetched) over loopback, straight to
   PostgreSQL (the admin DSN, not through Toxiproxy), ``iterations`` times per run, on one
   connection whose ``cursor_factory`` is switched between psycopg's plain cursor (*bare*) and
   :func:`~resilience.monitoring.instrument.timed_cursor_class` over a
   :class:`~resilience.monitoring.instrument.QueryRecorder` with a prometheus
   ``CollectorRegistry`` (*instrumented*: ring and histogram both exercised). The same
   connection keeps the backend, its CPU and psycopg's prepared statements the same on both
   sides. After one untimed warm-up of each, ``repeat`` runs measure both sides, each run
   alternating blocks of :data:`BLOCK` bare and instrumented queries (ABBA..., the first side
   alternating from run to run) so that a busy moment of the machine falls on both alike.
   Reported per query in µs: median and minimum over the runs of each side, their ratio
   (instrumented / bare) and the absolute overhead (instrumented - bare), all wall-clock (what
   the targets judge); and, under ``client_cpu``, the same from this process's CPU time, which
   a busy machine disturbs less.
   Targets (issue): at most :data:`RATIO_TARGET` and at most :data:`OVERHEAD_TARGET_US` µs.
   The histogram must have counted every instrumented query, or :class:`VerificationError`.

2. **One full monitor cycle with ``keys`` keys.** A fresh company is seeded with realistic
   keys (:func:`~resilience.authstate.dataset.generate`, ``COPY`` through the admin DSN, then
   ``VACUUM ANALYZE``: none of it timed). Then ``repeat`` times a read-only
   ``Monitor(settings, alerting=False, keep_state=False)`` is built on the service DSN (the
   service's network path) with no ``metrics_url``, so the synthetic probe runs, and timed:

   - ``cycle_s``: its first cycle, connections opened (what ``invoke health`` does alone);
   - ``warm_cycle_s``: a second cycle on the same monitor, connections kept and the probe run
     again (what ``invoke monitor`` does every interval).

   The target, under :data:`CYCLE_TARGET_S`, is judged on the median of ``cycle_s`` (the
   stricter of the two). Every cycle must see the database and the probe up and the seeded
   keys in ``keys.by_company``, or :class:`VerificationError`; ``keys.total`` (every company
   of the database) is reported to prove the size.

The bench company is removed at the end, whatever happens. Targets are reported, never
asserted.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.pgconn import Conn, connect, database_errors
from resilience.config import Settings
from resilience.drill.bench import measure
from resilience.errors import InputError, ResilienceError, VerificationError
from resilience.monitoring import contract
from resilience.monitoring.instrument import QueryRecorder, timed_cursor_class
from resilience.monitoring.monitor import Monitor

DEFAULT_ITERATIONS = 20_000
DEFAULT_KEYS = 100_000
DEFAULT_REPEAT = 5
#: Targets of the issue: instrumentation at most 5 % and at most 20 µs per query; one full
#: monitor cycle over 100k keys under 1 s.
RATIO_TARGET = 1.05
OVERHEAD_TARGET_US = 20.0
CYCLE_TARGET_S = 1.0
QUERY = "SELECT 1"
WARM_UP_MAX = 1000
#: queries per block; a run alternates blocks of bare and instrumented queries
BLOCK = 500
#: back-to-back cycles: the probe runs again on the warm cycle as it would every interval
PROBE_EVERY_CYCLE_S = 1e-6

Progress = Callable[[str], None]


def _no_progress(_message: str) -> None:
    return None


def _checked(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"bench {name} must be a positive integer (got {value!r})")
    return value


# --- 1. instrumentation overhead ------------------------------------------------------------------


def _elapsed(conn: Conn, queries: int) -> tuple[float, float]:
    """Wall-clock and this process's CPU seconds for `queries` back-to-back ``SELECT 1`` +
    fetch."""
    execute = conn.execute
    with database_errors("the SELECT 1 loop"):
        cpu = time.process_time()
        began = time.perf_counter()
        for _ in range(queries):
            execute(QUERY).fetchone()
        return time.perf_counter() - began, time.process_time() - cpu


def _paired_run(
    conn: Conn, sides: dict[str, type[psycopg.Cursor[Any]]], iterations: int, first: int
) -> dict[str, tuple[float, float]]:
    """Wall-clock and client CPU µs per query of each side over `iterations` queries each,
    run as alternating blocks (ABBA...) so that a busy moment of the machine falls on both
    sides alike."""
    names = list(sides)
    if first:
        names.reverse()
    wall = dict.fromkeys(sides, 0.0)
    cpu = dict.fromkeys(sides, 0.0)
    done = 0
    block = 0
    while done < iterations:
        n = min(BLOCK, iterations - done)
        for side in names if block % 2 == 0 else reversed(names):
            conn.cursor_factory = sides[side]
            spent, used = _elapsed(conn, n)
            wall[side] += spent
            cpu[side] += used
        done += n
        block += 1
    return {side: (wall[side] / iterations * 1e6, cpu[side] / iterations * 1e6) for side in sides}


def _recorded(registry: CollectorRegistry) -> int:
    value = registry.get_sample_value(contract.QUERY_DURATION + "_count", {"outcome": "ok"})
    return int(value or 0)


def instrumentation_overhead(
    dsn: str, *, iterations: int, repeat: int, report: Progress = _no_progress
) -> dict[str, Any]:
    """Bare beside instrumented ``SELECT 1`` on one connection (module text, part 1)."""
    registry = CollectorRegistry()
    recorder = QueryRecorder(registry)
    sides: dict[str, type[psycopg.Cursor[Any]]] = {
        "bare": psycopg.Cursor,
        "instrumented": timed_cursor_class(recorder),
    }
    runs: dict[str, list[float]] = {"bare": [], "instrumented": []}
    cpu: dict[str, list[float]] = {"bare": [], "instrumented": []}
    warm_up = min(WARM_UP_MAX, iterations)
    with connect(dsn, autocommit=True) as conn:
        for cursor in sides.values():
            conn.cursor_factory = cursor
            _elapsed(conn, warm_up)
        for rep in range(repeat):
            found = _paired_run(conn, sides, iterations, rep % 2)
            for side, (us, cpu_us) in found.items():
                runs[side].append(us)
                cpu[side].append(cpu_us)
            report(
                f"{QUERY} run {rep + 1}/{repeat}: bare {found['bare'][0]:.2f} µs, "
                f"instrumented {found['instrumented'][0]:.2f} µs per query"
            )
    expected = warm_up + iterations * repeat
    recorded = _recorded(registry)
    if recorded != expected:
        raise VerificationError(
            f"bench: the histogram counted {recorded} instrumented queries, not {expected}"
        )
    bare, timed = runs["bare"], runs["instrumented"]
    ratio = measure.ratio(timed, bare)
    ratio_min = measure.ratio(timed, bare, pick=min)
    overhead = round(measure.stats(timed)["median"] - measure.stats(bare)["median"], 3)
    overhead_min = round(min(timed) - min(bare), 3)
    cpu_overhead = round(
        measure.stats(cpu["instrumented"])["median"] - measure.stats(cpu["bare"])["median"], 3
    )
    ratio_met = ratio is not None and ratio <= RATIO_TARGET
    overhead_met = overhead <= OVERHEAD_TARGET_US
    return {
        "query": QUERY,
        "path": "loopback, straight to PostgreSQL (not through Toxiproxy), one connection",
        "iterations": iterations,
        "warm_up": warm_up,
        "bare_us": measure.stats(bare),
        "instrumented_us": measure.stats(timed),
        "ratio": ratio,
        "ratio_of_minimums": ratio_min,
        "overhead_us": overhead,
        "overhead_us_of_minimums": overhead_min,
        "client_cpu": {
            "what": "this process's CPU time per query (no waiting on the server or the machine)",
            "bare_us": measure.stats(cpu["bare"]),
            "instrumented_us": measure.stats(cpu["instrumented"]),
            "overhead_us": cpu_overhead,
        },
        "histogram_count": recorded,
        "targets": {
            "ratio_max": RATIO_TARGET,
            "overhead_us_max": OVERHEAD_TARGET_US,
            "ratio_met": ratio_met,
            "overhead_met": overhead_met,
        },
        "target_met": ratio_met and overhead_met,
    }


# --- 2. one full monitor cycle --------------------------------------------------------------------


def monitor_settings(service_dsn: str, company_id: str) -> Settings:
    """Read-only monitor settings on `service_dsn`: no metrics URL (the probe runs on the
    bench company), everything else the defaults (no operator environment is read)."""
    return Settings.model_validate(
        {
            "service_dsn": SecretStr(service_dsn),
            "company_id": company_id,
            "metrics_url": None,
            "probe_interval": PROBE_EVERY_CYCLE_S,
        }
    )


def _checked_document(doc: dict[str, Any], company_id: str, seeded: int) -> dict[str, Any]:
    sources = doc["sources"]
    for source in ("database", "probe"):
        state = sources.get(source, {})
        if state.get("state") != "ok":
            raise VerificationError(
                f"bench: the monitor cycle saw its {source} {state.get('state', 'missing')}: "
                f"{state.get('error', '')}"
            )
    keys: dict[str, Any] = doc["keys"]
    seen = keys["by_company"].get(company_id, 0)
    if seen != seeded:
        raise VerificationError(f"bench: the monitor cycle saw {seen} bench keys, not {seeded}")
    return keys


def _seed(admin_dsn: str, company_id: str, n: int, report: Progress) -> int:
    report(f"{n} keys: generating the data")
    data = generate(company_id, n, seed=17)
    report(f"{n} keys: seeding company {company_id}")
    with connect(admin_dsn, autocommit=True) as conn:
        seeded = pgraw.insert_raw(conn, company_id, data.creds, data.rows())
        with database_errors("vacuuming after seeding"):
            conn.execute("VACUUM ANALYZE whatsapp_keys")
            conn.execute("VACUUM ANALYZE whatsapp_auth")
    return seeded


def monitor_cycle(
    admin_dsn: str,
    service_dsn: str,
    *,
    keys: int,
    repeat: int,
    report: Progress = _no_progress,
) -> dict[str, Any]:
    """Seed `keys` keys, time read-only monitor cycles (module text, part 2), remove them."""
    company_id = f"bench_monitoring_{secrets.token_hex(4)}"
    cold: list[float] = []
    warm: list[float] = []
    seen: dict[str, Any] = {}
    status: list[str] = []
    rules: set[str] = set()
    seeded = 0
    try:
        seeded = _seed(admin_dsn, company_id, keys, report)
        settings = monitor_settings(service_dsn, company_id)
        for rep in range(repeat):
            monitor = Monitor(settings, alerting=False, keep_state=False)
            try:
                docs: list[dict[str, Any]] = []
                for times in (cold, warm):
                    began = time.perf_counter()
                    docs.append(monitor.cycle())
                    times.append(time.perf_counter() - began)
            finally:
                monitor.close()
            for doc in docs:
                seen = _checked_document(doc, company_id, seeded)
                status.append(doc["status"])
                rules.update(f["rule"] for f in doc["findings"])
            report(
                f"monitor cycle {rep + 1}/{repeat}: {cold[-1]:.3f} s, "
                f"then {warm[-1]:.3f} s with connections kept"
            )
    finally:
        report(f"removing bench company {company_id}")
        with (
            contextlib.suppress(ResilienceError, psycopg.Error),
            connect(admin_dsn, autocommit=True) as conn,
        ):
            pgraw.delete_company(conn, company_id)
    cycle = measure.stats(cold)
    return {
        "keys_seeded": seeded,
        "keys_total": seen["total"],
        "keys_companies": seen["companies"],
        "key_types": len(seen["by_type"]),
        "metrics_url": None,
        "probe": "on (no metrics_url), through the service DSN",
        "cycle_s": cycle,
        "warm_cycle_s": measure.stats(warm),
        "statuses": sorted(set(status)),
        "findings": sorted(rules),
        "target_s_max": CYCLE_TARGET_S,
        "target_met": cycle["median"] < CYCLE_TARGET_S,
    }


# --- both -----------------------------------------------------------------------------------------


def bench_monitoring(
    admin_dsn: str,
    service_dsn: str,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    keys: int = DEFAULT_KEYS,
    repeat: int = DEFAULT_REPEAT,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure the instrumentation's overhead and a full monitor cycle (module text); a
    JSON-ready dict.

    ``admin_dsn`` reaches PostgreSQL directly with rights to write and vacuum ``whatsapp_*``;
    ``service_dsn`` is the service's (the monitor's) way in. Raises :class:`InputError` for bad
    arguments, :class:`VerificationError` when a measurement did not measure what it should,
    and :class:`DatabaseError`; the bench company is removed in every case.
    """
    iterations = _checked("iterations", iterations)
    keys = _checked("key count", keys)
    repeat = _checked("repeat", repeat)
    report = progress or _no_progress
    with connect(admin_dsn, autocommit=True) as conn:
        machine = measure.machine(conn)
    overhead = instrumentation_overhead(
        admin_dsn, iterations=iterations, repeat=repeat, report=report
    )
    cycle = monitor_cycle(admin_dsn, service_dsn, keys=keys, repeat=repeat, report=report)
    return {
        "benchmark": "monitoring",
        "machine": machine,
        "repeat": repeat,
        "instrumentation": overhead,
        "cycle": cycle,
        "target_met": overhead["target_met"] and cycle["target_met"],
    }
