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

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.pgconn import connect
from resilience.drill.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
INVOKE = str(Path(sys.executable).parent / "invoke")
pytestmark = pytest.mark.stack


@pytest.fixture
def company(stack: Stack) -> Iterator[str]:
    cid = f"cli_{uuid.uuid4().hex[:10]}"
    data = generate(cid, 120)
    with connect(stack.endpoints.admin_dsn) as conn:
        pgraw.insert_raw(conn, cid, data.creds, data.rows())
    yield cid
    with connect(stack.endpoints.admin_dsn) as conn:
        pgraw.delete_company(conn, cid)


def _export(stack: Stack, runs: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The task configured as an operator would: the service's DSN and nothing about stacks
    (no PM2 either: an export needs none)."""
    variables = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENCE_")}
    variables |= {
        "RESILIENCE_SERVICE_DSN": stack.endpoints.service_dsn,
        "RESILIENCE_RUNS_DIR": str(runs),
        "RESILIENCE_PM2_BIN": "/nonexistent/pm2",
    }
    return subprocess.run(
        [INVOKE, "restore.export", *args],
        cwd=ROOT,
        env={**variables, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_export_one_company_as_json(stack: Stack, company: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = _export(stack, runs, "--company", company, "--dir", str(tmp_path / "auth"), "--json")
    assert result.returncode == 0, result.stderr
    (export,) = json.loads(result.stdout)["exports"]
    assert export["company_id"] == company
    assert export["key_count"] == 120 + 4 - len(export["collisions"])  # 4 legacy rows
    directory = tmp_path / "auth" / f"company_{company}"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in directory.iterdir()} == {0o600}
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["digest"] == export["digest"]
    record = Path(json.loads(result.stdout)["record"])
    assert record.parent == runs and company in record.name
    assert record.stat().st_mode & 0o777 == 0o700
    journal = json.loads((record / "journal.json").read_text())
    assert journal["status"] == "completed"
    assert journal["measurements"]["exports"][0]["digest"] == export["digest"]
    assert {p.name: p.stat().st_mode & 0o777 for p in record.iterdir()} == {
        "journal.json": 0o600,
        "journal.html": 0o600,
    }
    assert stack.endpoints.service_dsn not in (record / "journal.json").read_text()


def test_unknown_company_is_exit_2(stack: Stack, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = _export(stack, runs, "--company", "nobody_here", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "unknown company nobody_here" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "company_nobody_here").exists()
    (record,) = runs.iterdir()  # a failed run is recorded too, and the error names its record
    assert f"(run record: {record})" in result.stderr
    assert json.loads((record / "journal.json").read_text())["status"] == "failed"


def test_invalid_company_id_is_exit_2(stack: Stack, tmp_path: Path) -> None:
    result = _export(stack, tmp_path / "runs", "--company", "../etc", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "invalid company id" in result.stderr


def test_wrong_password_is_exit_2_without_the_password(
    stack: Stack, company: str, tmp_path: Path
) -> None:
    bad = stack.endpoints.service_dsn.replace("baileys_service:", "baileys_service:Wr0ngPw")
    result = _export(
        stack,
        tmp_path / "runs",
        "--company",
        company,
        "--dir",
        str(tmp_path),
        RESILIENCE_SERVICE_DSN=bad,
    )
    assert result.returncode == 2  # a wrong DSN is a configuration error, not an outage
    assert "the DSN is wrong (check its password)" in result.stderr
    assert "password authentication failed" in result.stderr
    assert "Wr0ngPw" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
