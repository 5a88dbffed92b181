"""`bench mirror` run small against the stack: the JSON's shape, numbers that make sense, and
nothing left behind (no bench company, no feed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilience.authstate.pgconn import connect
from resilience.drill.bench.mirror import bench_mirror
from resilience.drill.stack import Stack
from resilience.mirror import feed

pytestmark = pytest.mark.stack


def test_bench_mirror_measures_overhead_throughput_and_lag_and_cleans_up(
    stack: Stack, tmp_path: Path
) -> None:
    result = bench_mirror(
        stack.endpoints.admin_dsn,
        sizes=(300,),
        repeat=1,
        work_dir=tmp_path,
        upserts=20,
        steady_seconds=1.0,
    )
    assert result["bench"] == "mirror" and result["burst"] == 300
    overhead = result["trigger_overhead_p50"]
    assert overhead["target_max"] == 0.10 and isinstance(overhead["met"], bool)
    targets = result["targets"]
    assert targets["upsert_p50_ratio_max"] == 1.1 and targets["met"] == overhead["met"]
    assert targets["upsert_p50_ratio_trigger_on_off"] > 0
    for name in ("upsert_p50_s_trigger_off", "upsert_p50_s_trigger_on", "steady_lag_p50_s"):
        assert result[name]["median"] > 0
    (run,) = result["runs"]
    assert run["apply"]["changes"] >= 300 and run["apply"]["changes_per_s"] > 0
    assert run["steady"]["writes"] >= 5
    assert run["burst"]["lag_after_last_commit_s"] > 0
    with connect(stack.endpoints.admin_dsn) as conn:
        left = conn.execute(
            "SELECT count(*) FROM whatsapp_auth WHERE company_id LIKE 'bench_mirror_%'"
        ).fetchone()
        assert left is not None and left[0] == 0
        assert not feed.feed_status(conn).installed
