"""`bench backup` on a small database: it measures both sides, proves nothing was left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.drill.bench.backup import bench_backup
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import backup_settings

pytestmark = pytest.mark.stack


def test_bench_backup_measures_ours_beside_raw(stack: Stack, tmp_path: Path) -> None:
    ep = stack.endpoints
    settings = backup_settings(stack, None, tmp_path)
    with connect(ep.admin_dsn) as conn:
        before = set(PgAuthStore(conn).companies())
    result = bench_backup(settings, ep.admin_dsn, size_mb=1, repeat=1)
    assert result["companies"] >= 1 and result["database_bytes"] >= 1024 * 1024
    for side in ("backup", "raw_backup", "restore_verified", "raw_restore"):
        assert len(result[side]["runs"]) == 1 and result[side]["median"] > 0
    assert result["backup_ratio"] > 0 and result["restore_ratio"] > 0
    assert result["restore_compared"] == "stored rows"
    with connect(ep.admin_dsn) as conn:
        assert set(PgAuthStore(conn).companies()) == before  # the bench's companies are gone
