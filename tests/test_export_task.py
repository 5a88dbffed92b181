"""`invoke restore.export` end to end: JSON out, modes, and one-line errors with exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from resilience.authstate.dataset import generate
from resilience.authstate.pgstore import PgAuthStore, connect
from resilience.config import Settings
from resilience.drill.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
INVOKE = str(Path(sys.executable).parent / "invoke")
pytestmark = pytest.mark.stack


@pytest.fixture
def company(stack: Stack) -> Iterator[str]:
    cid = f"cli_{uuid.uuid4().hex[:10]}"
    data = generate(cid, 120)
    with connect(stack.endpoints.admin_dsn) as conn:
        PgAuthStore(conn).insert_raw(cid, data.creds, data.rows())
    yield cid
    with connect(stack.endpoints.admin_dsn) as conn:
        PgAuthStore(conn).delete_company(cid)


def _export(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INVOKE, "restore.export", *args],
        cwd=ROOT,
        env={**os.environ, "RESILIENCE_STACK_DIR": str(settings.stack_dir), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_export_one_company_as_json(settings: Settings, company: str, tmp_path: Path) -> None:
    result = _export(settings, "--company", company, "--dir", str(tmp_path / "auth"), "--json")
    assert result.returncode == 0, result.stderr
    (export,) = json.loads(result.stdout)["exports"]
    assert export["company_id"] == company
    assert export["key_count"] == 120 + 4 - len(export["collisions"])  # 4 legacy rows
    directory = tmp_path / "auth" / f"company_{company}"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in directory.iterdir()} == {0o600}
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["digest"] == export["digest"]


def test_unknown_company_is_exit_2(settings: Settings, stack: Stack, tmp_path: Path) -> None:
    result = _export(settings, "--company", "nobody_here", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "unknown company nobody_here" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "company_nobody_here").exists()


def test_invalid_company_id_is_exit_2(settings: Settings, tmp_path: Path) -> None:
    result = _export(settings, "--company", "../etc", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "invalid company id" in result.stderr


def test_wrong_password_is_exit_6_without_the_password(
    settings: Settings, stack: Stack, company: str, tmp_path: Path
) -> None:
    bad = stack.endpoints.service_dsn.replace("baileys_service:", "baileys_service:Wr0ngPw")
    result = _export(
        settings, "--company", company, "--dir", str(tmp_path), RESILIENCE_SERVICE_DSN=bad
    )
    assert result.returncode == 6
    assert "password authentication failed" in result.stderr
    assert "Wr0ngPw" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
