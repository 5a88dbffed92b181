"""`bench monitoring` run small against the stack: the JSON's shape, positive numbers, the bench
company gone afterwards. Targets are reported by the bench, never asserted here."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from resilience.authstate.pgconn import Conn
from resilience.drill.bench.monitoring import bench_monitoring
from resilience.drill.stack import Stack
from resilience.errors import InputError

ITERATIONS, KEYS, REPEAT = 500, 1000, 2


def _positive(x: Any) -> bool:
    return isinstance(x, float | int) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _stats_ok(stats: dict[str, Any], runs: int) -> None:
    assert len(stats["runs"]) == runs and all(_positive(r) for r in stats["runs"])
    assert _positive(stats["median"]) and 0 < stats["min"] <= stats["median"]


@pytest.mark.stack
def test_bench_monitoring_measures_overhead_and_a_cycle_and_cleans_up(
    stack: Stack, admin: Conn
) -> None:
    ep = stack.endpoints
    phases: list[str] = []
    result = bench_monitoring(
        ep.admin_dsn,
        ep.service_dsn,
        iterations=ITERATIONS,
        keys=KEYS,
        repeat=REPEAT,
        progress=phases.append,
    )
    json.dumps(result, allow_nan=False)  # JSON-ready, as `invoke bench` prints it
    assert result["benchmark"] == "monitoring" and result["repeat"] == REPEAT
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["python"] and machine["postgres"]

    overhead = result["instrumentation"]
    assert overhead["query"] == "SELECT 1" and overhead["iterations"] == ITERATIONS
    for side in ("bare_us", "instrumented_us"):
        _stats_ok(overhead[side], REPEAT)
    assert _positive(overhead["ratio"]) and _positive(overhead["ratio_of_minimums"])
    # the difference of two noisy timings: finite, of either sign on a busy machine
    assert math.isfinite(overhead["overhead_us"])
    assert math.isfinite(overhead["overhead_us_of_minimums"])
    for side in ("bare_us", "instrumented_us"):
        _stats_ok(overhead["client_cpu"][side], REPEAT)
    assert math.isfinite(overhead["client_cpu"]["overhead_us"])
    assert overhead["histogram_count"] == overhead["warm_up"] + ITERATIONS * REPEAT
    assert overhead["targets"]["ratio_max"] == 1.05
    assert overhead["targets"]["overhead_us_max"] == 20.0
    assert isinstance(overhead["target_met"], bool)

    cycle = result["cycle"]
    assert cycle["keys_seeded"] == KEYS + 4  # generate() adds 4 legacy rows
    assert cycle["keys_total"] >= cycle["keys_seeded"]  # every company the cycle saw
    _stats_ok(cycle["cycle_s"], REPEAT)
    _stats_ok(cycle["warm_cycle_s"], REPEAT)
    assert cycle["target_s_max"] == 1.0 and isinstance(cycle["target_met"], bool)
    assert isinstance(result["target_met"], bool)

    assert any("instrumented" in p for p in phases) and any("monitor cycle" in p for p in phases)
    left = admin.execute(
        "SELECT (SELECT count(*) FROM whatsapp_keys WHERE company_id LIKE 'bench_monitoring_%'),"
        " (SELECT count(*) FROM whatsapp_auth WHERE company_id LIKE 'bench_monitoring_%')"
    ).fetchone()
    assert left == (0, 0)


@pytest.mark.parametrize(
    ("iterations", "keys", "repeat"), [(0, 10, 1), (10, 0, 1), (10, 10, 0), (True, 10, 1)]
)
def test_bad_arguments_are_refused(iterations: int, keys: int, repeat: int) -> None:
    with pytest.raises(InputError):
        bench_monitoring(
            "postgresql://nowhere.invalid/x",
            "postgresql://nowhere.invalid/x",
            iterations=iterations,
            keys=keys,
            repeat=repeat,
        )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["bench", "monitoring"], {"name": "monitoring", "sizes": "", "repeat": 3, "tenants": ""}),
        (
            ["bench", "monitoring", "--sizes", "500,1000", "--repeat", "2"],
            {"name": "monitoring", "sizes": "500,1000", "repeat": 2, "tenants": ""},
        ),
    ],
)
def test_bench_knows_monitoring(argv: list[str], expected: dict[str, Any]) -> None:
    from invoke.parser import Parser, ParserContext

    from tasks import dev

    assert dev.BENCH_DEFAULT_SIZES["monitoring"] == "20000,100000"
    parser = Parser(contexts=[ParserContext(name="bench", args=dev.bench.get_arguments())])
    (context,) = parser.parse_argv(argv)
    assert context.as_kwargs == expected
