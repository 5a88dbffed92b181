"""Point-in-time recovery without a stack: the archive_command really run by sh, the pusher
against fake barman-cloud commands (one region down, caught up, a secret in barman's error),
WAL gap arithmetic, the restore plan's refusals, settings and a missing barman-cloud.

The real thing (PostgreSQL archiving, barman-cloud against moto, a promoted copy) is the slow
drill `drills/test_pitr.py`."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from task_runner import run_task

from resilience.backup import pitr as pitr_module
from resilience.backup.barman import Archive, find_command
from resilience.backup.pitr import missing_segments, plan, segment_name, segment_number
from resilience.backup.wal import WalSpool, archive_command, push_once, wal_push
from resilience.config import Settings, load_settings
from resilience.errors import ConfigError, DataError, InputError, PartialFailure
from resilience.infra.s3 import RegionStore
from tasks import backup as backup_tasks

SECRET = "s3-secret-Zq81xkP0aa"
SEG = 16 * 1024 * 1024

FAKE_ARCHIVE = """#!/bin/sh
# fake barman-cloud-wal-archive: logs "<endpoint> <file>"; fails for endpoints in $FAKE_DOWN
endpoint=""; prev=""; last=""
for a in "$@"; do [ "$prev" = "--endpoint-url" ] && endpoint=$a; prev=$a; last=$a; done
if [ -n "$FAKE_DOWN" ] && [ "$endpoint" = "$FAKE_DOWN" ]; then
  echo "2026-12-01 14:43:20,241 [123] ERROR: denied for $AWS_SECRET_ACCESS_KEY" >&2
  exit 2
fi
if [ -n "$FAKE_FAIL" ] && [ "$endpoint $(basename "$last")" = "$FAKE_FAIL" ]; then
  echo "ERROR: upload of $(basename "$last") refused" >&2
  exit 2
fi
if [ -n "$FAKE_BARRIER" ]; then
  # wait until FAKE_BARRIER_N uploads to this endpoint run at once (FAKE_BARRIER_TRIES polls of
  # 50 ms, 400 unless set, then fail)
  dir="$FAKE_BARRIER/$(echo "$endpoint" | tr -c 'a-z0-9\n' _)"
  mkdir -p "$dir" && touch "$dir/$$"
  n=0
  while [ "$(ls "$dir" | wc -l)" -lt "$FAKE_BARRIER_N" ]; do
    n=$((n + 1))
    if [ $n -gt "${FAKE_BARRIER_TRIES:-400}" ]; then
      echo "ERROR: never $FAKE_BARRIER_N at once" >&2; exit 3
    fi
    sleep 0.05
  done
fi
echo "$endpoint $(basename "$last")" >> "$FAKE_LOG"
"""

MOSCOW = "http://127.0.0.1:9/moscow"
EU = "http://127.0.0.1:9/eu"


def wal(n: int) -> str:
    return segment_name(1, n, SEG)


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "barman-cloud-wal-archive"
    script.write_text(FAKE_ARCHIVE)
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "pushed.log"))
    for name in ("FAKE_DOWN", "FAKE_FAIL", "FAKE_BARRIER", "FAKE_BARRIER_N", "FAKE_BARRIER_TRIES"):
        monkeypatch.delenv(name, raising=False)
    return bindir


def settings_for(tmp_path: Path, bindir: Path, **extra: Any) -> Settings:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return Settings.model_validate(
        {
            "s3_endpoint_moscow": MOSCOW,
            "s3_endpoint_eu": EU,
            "s3_access_key_id": "key",
            "s3_secret_access_key": SECRET,
            "wal_spool_dir": spool,
            "runs_dir": tmp_path / "runs",
            "barman_bin_dir": bindir,
            **extra,
        }
    )


def pushed(tmp_path: Path) -> list[tuple[str, str]]:
    log = tmp_path / "pushed.log"
    if not log.exists():
        return []
    return [tuple(line.split()) for line in log.read_text().splitlines()]  # type: ignore[misc]


# --- archive_command ------------------------------------------------------------------------------
def _archive(command: str, source: Path, name: str) -> int:
    line = command.replace("%p", str(source)).replace("%f", name)
    return subprocess.run(["sh", "-c", line], check=False, capture_output=True).returncode


def test_archive_command_copies_atomically_and_fails_without_a_spool(tmp_path: Path) -> None:
    segment = tmp_path / "pg_wal" / wal(3)
    segment.parent.mkdir()
    segment.write_bytes(b"\x01" * 4096)
    spool = tmp_path / "spool dir"  # a space: the path is quoted
    spool.mkdir()
    assert _archive(archive_command(spool), segment, wal(3)) == 0
    assert (spool / wal(3)).read_bytes() == segment.read_bytes()
    assert [p.name for p in spool.iterdir()] == [wal(3)]  # no temp file left
    assert _archive(archive_command(tmp_path / "missing"), segment, wal(3)) != 0
    assert (
        WalSpool(tmp_path / "missing").problem() == f"WAL spool {tmp_path / 'missing'} is missing"
    )


def test_spool_lists_wal_files_only_oldest_first(tmp_path: Path) -> None:
    spool = WalSpool(tmp_path)
    for name in (wal(5), wal(4), "00000002.history", f".{wal(6)}.part", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert spool.files() == [wal(4), wal(5), "00000002.history"]
    assert spool.state().files == 3


# --- the pusher ---------------------------------------------------------------------------------
def test_pusher_sends_to_every_region_then_empties_the_spool(
    tmp_path: Path, fake_bin: Path
) -> None:
    settings = settings_for(tmp_path, fake_bin)
    for n in (1, 2):
        (settings.wal_spool_dir / wal(n)).write_bytes(b"w")
    result = push_once(settings)
    assert result.errors == {}
    assert sorted(pushed(tmp_path)) == sorted((u, wal(n)) for u in (MOSCOW, EU) for n in (1, 2))
    assert result.removed == [wal(1), wal(2)] and WalSpool(settings.wal_spool_dir).files() == []


def test_a_region_down_keeps_the_spool_alerts_and_is_caught_up(
    tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, fake_bin, wal_spool_alert_segments=2)
    for n in (1, 2, 3):
        (settings.wal_spool_dir / wal(n)).write_bytes(b"w")
    monkeypatch.setenv("FAKE_DOWN", MOSCOW)
    with pytest.raises(PartialFailure) as info:
        wal_push(settings)
    assert info.value.exit_code == 6
    message = str(info.value)
    assert "region moscow" in message and SECRET not in message and "***" in message
    details = info.value.details or {}
    assert details["spool"]["files"] == 3  # nothing deleted: Moscow has none of them
    assert any("3 WAL files wait" in a and "region moscow" in a for a in details["alerts"])
    assert not any("[" in a for a in details["alerts"])  # barman's log prefix dropped
    assert {u for u, _ in pushed(tmp_path)} == {EU}
    record = json.dumps([p.read_text() for p in (tmp_path / "runs").rglob("journal.json")])
    assert SECRET not in record

    monkeypatch.delenv("FAKE_DOWN")
    result = push_once(settings)
    assert result.pushed == {"moscow": [wal(1), wal(2), wal(3)], "eu": []}  # only what it lacked
    assert WalSpool(settings.wal_spool_dir).files() == [] and result.alerts == []


def test_the_pusher_runs_several_uploads_at_once_per_region(
    tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each fake upload waits until 3 run at once for its region: with fewer it fails
    settings = settings_for(tmp_path, fake_bin, wal_push_processes=3)
    for n in range(1, 7):
        (settings.wal_spool_dir / wal(n)).write_bytes(b"w")
    monkeypatch.setenv("FAKE_BARRIER", str(tmp_path / "barrier"))
    monkeypatch.setenv("FAKE_BARRIER_N", "3")
    result = push_once(settings)
    assert result.errors == {} and result.gaps == {}
    assert result.pushed == {r: [wal(n) for n in range(1, 7)] for r in ("moscow", "eu")}
    assert WalSpool(settings.wal_spool_dir).files() == []

    # one process per region: the first upload waits for two others that never come
    one = settings_for(tmp_path, fake_bin, wal_push_processes=1)
    (one.wal_spool_dir / wal(7)).write_bytes(b"w")
    monkeypatch.setenv("FAKE_BARRIER", str(tmp_path / "barrier-one"))
    monkeypatch.setenv("FAKE_BARRIER_TRIES", "10")
    failed = push_once(one)
    assert set(failed.errors) == {"moscow", "eu"} and "never 3 at once" in failed.errors["eu"]
    assert WalSpool(one.wal_spool_dir).files() == [wal(7)]


def test_a_failed_segment_leaves_a_named_gap_that_the_next_pass_fills(
    tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, fake_bin, wal_push_processes=4)
    for n in range(1, 6):
        (settings.wal_spool_dir / wal(n)).write_bytes(b"w")
    # 1, 3 and 4 wait for each other, so they go out beside the failure of 2
    monkeypatch.setenv("FAKE_FAIL", f"{MOSCOW} {wal(2)}")
    monkeypatch.setenv("FAKE_BARRIER", str(tmp_path / "barrier"))
    monkeypatch.setenv("FAKE_BARRIER_N", "3")
    with pytest.raises(PartialFailure) as info:
        wal_push(settings)
    details = info.value.details or {}
    assert details["gaps"] == {"moscow": [wal(2)]}
    assert "upload of " + wal(2) + " refused" in str(info.value)
    assert f"a gap: 1 file(s) from {wal(2)}" in str(info.value)
    moscow = {name for url, name in pushed(tmp_path) if url == MOSCOW}
    assert {wal(1), wal(3), wal(4)} <= moscow and wal(2) not in moscow
    newest = max(moscow)
    # the archive as the restore plan reads it: the gap is found there too
    assert missing_segments(moscow, wal(1), newest, SEG) == [(wal(2), wal(2))]
    left = WalSpool(settings.wal_spool_dir).files()
    assert wal(2) in left and not {wal(1), wal(3), wal(4)} & set(left)  # EU and Moscow had them

    monkeypatch.delenv("FAKE_FAIL")
    monkeypatch.delenv("FAKE_BARRIER")
    result = push_once(settings)
    assert result.errors == {} and result.gaps == {}
    assert wal(2) in result.pushed["moscow"] and result.pushed["eu"] == []
    assert WalSpool(settings.wal_spool_dir).files() == []


def test_a_missing_spool_is_an_alerted_configuration_error(tmp_path: Path, fake_bin: Path) -> None:
    settings = settings_for(tmp_path, fake_bin)
    settings.wal_spool_dir.rmdir()
    with pytest.raises(ConfigError, match="is missing: archive_command fails") as info:
        push_once(settings)
    assert info.value.exit_code == 2 and (info.value.details or {})["alerts"]


def test_barman_cloud_missing_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = settings_for(tmp_path, tmp_path / "nowhere")
    with pytest.raises(ConfigError) as info:
        find_command("barman-cloud-backup", settings)
    assert "barman-cloud is missing" in str(info.value) and "\n" not in str(info.value)


# --- WAL arithmetic and the plan ------------------------------------------------------------------
def test_segment_names_cross_log_boundaries() -> None:
    assert segment_name(1, segment_number("0000000100000000000000FF", SEG) + 1, SEG) == (
        "000000010000000100000000"
    )
    present = {wal(n) for n in (1, 2, 5, 9)}
    assert missing_segments(present, wal(1), wal(9), SEG) == [(wal(3), wal(4)), (wal(6), wal(8))]
    assert missing_segments(present, wal(1), wal(2), SEG) == []


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _backup(backup_id: str, end: datetime, begin_wal: str) -> dict[str, Any]:
    return {
        "backup_id": backup_id,
        "status": "DONE",
        "end_time_iso": end.isoformat(),
        "begin_wal": begin_wal,
        "xlog_segment_size": SEG,
    }


@pytest.fixture
def fake_archive(monkeypatch: pytest.MonkeyPatch) -> dict[str, datetime]:
    uploads = {wal(n): NOW + timedelta(seconds=10 * n) for n in range(1, 11)}
    backups = [
        _backup("20261201T115000", NOW - timedelta(minutes=5), wal(1)),
        _backup("20261201T120100", NOW + timedelta(seconds=15), wal(2)),
    ]
    monkeypatch.setattr(pitr_module, "list_backups", lambda _s, _a: backups)
    monkeypatch.setattr(pitr_module, "wal_objects", lambda _a: uploads)
    return uploads


def _plan(tmp_path: Path, at: datetime | None, target: Path | None = None) -> pitr_module.Plan:
    store = RegionStore("eu", "eu-central-1", EU, "b")
    return plan(Settings(), Archive(store, "pitr", "baileys"), at, target or tmp_path / "new")


def test_plan_picks_the_newest_backup_before_the_time(
    tmp_path: Path, fake_archive: dict[str, datetime]
) -> None:
    assert _plan(tmp_path, NOW + timedelta(seconds=30)).backup_id == "20261201T120100"
    assert _plan(tmp_path, NOW).backup_id == "20261201T115000"
    assert _plan(tmp_path, None).backup_id == "20261201T120100"  # latest


def test_plan_refuses_times_outside_the_archive_gaps_and_busy_targets(
    tmp_path: Path, fake_archive: dict[str, datetime]
) -> None:
    with pytest.raises(InputError, match="before the oldest base backup"):
        _plan(tmp_path, NOW - timedelta(hours=1))
    with pytest.raises(InputError, match="after the newest WAL"):
        _plan(tmp_path, NOW + timedelta(minutes=5))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        _plan(tmp_path, NOW + timedelta(seconds=30), busy)
    del fake_archive[wal(4)], fake_archive[wal(5)]
    with pytest.raises(DataError, match=f"{wal(4)}..{wal(5)}"):
        _plan(tmp_path, NOW + timedelta(seconds=30))


# --- settings and the task ------------------------------------------------------------------------
def test_archive_names_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENCE_PITR_SERVER", "../etc")
    with pytest.raises(ConfigError, match="RESILIENCE_PITR_SERVER"):
        load_settings(env_file=None)


def test_pitr_task_rejects_a_bad_time_in_one_json_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_task(
        backup_tasks.pitr, {}, tmp_path, monkeypatch, capsys, at="yesterday", json=True
    )
    assert code == 2 and json.loads(out)["ok"] is False
    assert err.strip().count("\n") == 0 and "--at must be" in err
