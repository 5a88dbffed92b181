"""`bench backup` on a small database: it measures both sides, proves nothing was left behind."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from resilience.authstate.pgstore import PgAuthStore, connect
from resilience.config import Settings
from resilience.drill.bench.backup import bench_backup
from resilience.drill.stack import Stack

pytestmark = pytest.mark.stack


def test_bench_backup_measures_ours_beside_raw(stack: Stack, tmp_path: Path) -> None:
    ep = stack.endpoints
    suffix = secrets.token_hex(4)
    settings = Settings.model_validate(
        {
            "service_dsn": ep.service_dsn,
            "restore_dsn": ep.admin_dsn,
            "s3_endpoint_moscow": ep.s3["moscow"].endpoint_url,
            "s3_endpoint_eu": ep.s3["eu"].endpoint_url,
            "s3_bucket_moscow": f"bench-moscow-{suffix}",
            "s3_bucket_eu": f"bench-eu-{suffix}",
            "s3_access_key_id": ep.s3_access_key_id,
            "s3_secret_access_key": ep.s3_secret_access_key,
            "backup_spool_dir": tmp_path / "spool",
            "runs_dir": tmp_path / "runs",
        }
    )
    with connect(ep.admin_dsn) as conn:
        before = set(PgAuthStore(conn).companies())
    result = bench_backup(settings, ep.admin_dsn, size_mb=1, repeat=1)
    assert result["companies"] >= 1 and result["database_bytes"] >= 1024 * 1024
    for side in ("backup", "raw_backup", "restore_verified", "raw_restore"):
        assert len(result[side]["runs"]) == 1 and result[side]["median"] > 0
    assert result["backup_ratio"] > 0 and result["restore_ratio"] > 0
    with connect(ep.admin_dsn) as conn:
        assert set(PgAuthStore(conn).companies()) == before  # the bench's companies are gone
