"""`status` (mode, switch state, base, loss window, lock holder; a state file that is not JSON)
and `runs.list` / `runs.prune` (newest first; dry runs and refusals kept a shorter time)."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from task_runner import run_task

from resilience.config import Settings
from resilience.files.merge import record_base
from resilience.infra.oplock import company_lock
from resilience.restore.state import SwitchState
from resilience.restore.target import STATE_FILE
from resilience.runs.journal import Journal
from resilience.runs.listing import list_runs, prune_runs
from resilience.runs.record import JOURNAL_JSON
from tasks import runs as runs_tasks
from tasks import status as status_tasks


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "RESILIENCE_AUTH_DIR": str(tmp_path / "auth"),
        "RESILIENCE_RUNS_DIR": str(tmp_path / "runs"),
        "RESILIENCE_COMPANY_ID": "acme",
        "RESILIENCE_PM2_BIN": str(tmp_path / "no-pm2"),
    }


def _record(
    runs: Path,
    name: str,
    title: str,
    started: datetime,
    *,
    status: str = "completed",
    steps: list[dict[str, Any]] | None = None,
    events: list[dict[str, Any]] | None = None,
    measurements: dict[str, Any] | None = None,
) -> Path:
    journal = Journal(title).to_dict()
    journal.update(
        status=status,
        started_at=started.isoformat(),
        steps=steps or [],
        events=events or [],
        measurements=measurements or {},
        duration_s=1.0,
    )
    directory = runs / name
    directory.mkdir(parents=True)
    (directory / JOURNAL_JSON).write_text(json.dumps(journal))
    return directory


def test_status_without_a_switch_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code, out, err = run_task(
        status_tasks.status, _env(tmp_path), tmp_path, monkeypatch, capsys, json=True
    )
    doc = json.loads(out)
    assert code == 0, err
    assert doc["switch"] == {"state": "none"}
    assert doc["lock"] is None
    assert doc["mode"] is None and "no-pm2" in doc["mode_evidence"][0]["error"]


def test_status_reports_a_state_file_that_is_not_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / STATE_FILE).write_text("{ not json")
    code, out, err = run_task(status_tasks.status, _env(tmp_path), tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert "unreadable" in out and "Traceback" not in out + err
    code, out, _ = run_task(
        status_tasks.status, _env(tmp_path), tmp_path, monkeypatch, capsys, json=True
    )
    doc = json.loads(out)
    assert doc["switch"]["state"] == "unreadable"
    assert doc["warnings"]


def test_status_after_a_snapshot_fallback_names_source_loss_window_and_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    auth = tmp_path / "auth"
    SwitchState("acme", "main", None, {}, "2026-12-01T10:00:00+00:00").write(auth / STATE_FILE)
    record_base(auth, "acme", "install-snapshot", "d" * 64, None, {})
    run = _record(
        tmp_path / "runs",
        "20261201T100000Z-restore-to-files-acme-aaaaaa",
        "restore.to-files acme",
        datetime(2026, 12, 1, 10, tzinfo=UTC),
        steps=[{"name": "install-snapshot", "details": {"snapshot_age_s": 540.5}}],
        measurements={"rto_s": 7.25},
    )
    settings = Settings.model_validate({"auth_dir": auth, "runs_dir": tmp_path / "runs"})
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with company_lock(settings, "acme", "restore.to-postgres"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        code, out, err = run_task(
            status_tasks.status, _env(tmp_path), tmp_path, monkeypatch, capsys, json=True
        )
    finally:
        release.set()
        holder.join(30)
    doc = json.loads(out)
    assert code == 0, err
    switch = doc["switch"]
    assert switch["direction"] == "to-files"
    assert switch["since"] == "2026-12-01T10:00:00+00:00"
    assert switch["source"] == "snapshot"
    assert switch["loss_window_s"] == 540.5
    assert switch["rto_s"] == 7.25
    assert switch["run"] == str(run)
    assert doc["lock"]["command"] == "restore.to-postgres"
    assert doc["lock"]["pid"] == os.getpid()


def test_runs_are_listed_newest_first_with_outcome_and_rto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    runs = tmp_path / "runs"
    now = datetime.now(UTC)
    _record(runs, "20261201T100000Z-backup-run-aaaaaa", "backup.run", now - timedelta(hours=2))
    _record(
        runs,
        "20261201T110000Z-restore-to-files-acme-bbbbbb",
        "restore.to-files acme",
        now - timedelta(hours=1),
        steps=[{"name": "export"}],
        measurements={"rto_s": 4.5},
    )
    _record(
        runs,
        "20261201T120000Z-restore-to-files-acme-cccccc",
        "restore.to-files acme",
        now,
        status="failed",
        events=[{"kind": "failure", "message": "another command holds the lock"}],
    )
    (runs / "20261201T130000Z-broken-dddddd").mkdir()
    listed = list_runs(runs)
    assert [r.outcome for r in listed] == ["unreadable", "refused", "ok", "ok"]
    assert listed[2].rto_s == 4.5 and listed[2].company_id == "acme"
    code, out, _ = run_task(runs_tasks.list_, _env(tmp_path), tmp_path, monkeypatch, capsys)
    assert code == 0
    assert out.index("refused") < out.index("backup.run")
    assert "4.5 s" in out


def test_prune_keeps_dry_runs_and_refusals_a_shorter_time(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    now = datetime.now(UTC)
    old_ok = _record(runs, "a-ok", "backup.run", now - timedelta(days=30), steps=[{"name": "x"}])
    old_dry = _record(
        runs,
        "b-dry",
        "restore.to-files acme",
        now - timedelta(days=10),
        events=[{"kind": "dry-run", "message": "dry run"}],
    )
    ancient = _record(runs, "c-old", "backup.run", now - timedelta(days=100), steps=[{"name": "x"}])
    settings = Settings.model_validate({"runs_dir": runs})
    planned = prune_runs(settings, dry_run=True)
    assert sorted(Path(r["path"]).name for r in planned["would_delete"]) == ["b-dry", "c-old"]
    assert old_dry.exists() and ancient.exists()
    prune_runs(settings, dry_run=False)
    assert old_ok.exists() and not old_dry.exists() and not ancient.exists()
