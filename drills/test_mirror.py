"""Drill: the live file mirror closes the loss window of a fallback to seconds.

The stand-in writes keys throughout (every 100 ms) while the mirror, under PM2 as the operator
installs it, follows the change feed. Scenarios:

- (a) proxy disabled, (b) PostgreSQL stopped, (e) PostgreSQL killed with ``kill -9``: the
  operator's `restore.to-files` finds the database unreachable and the mirror fresher than the
  newest snapshot (taken at the start, as the cron would), stops the mirror, checks its digest
  against its manifest and installs it. Every write the stand-in acknowledged more than one
  second before the loss must be in the installed directory, by fingerprint; the keys that
  differ from the database as it was lost are the measured loss, beside the snapshot's.
- (f) the mirror killed (``SIGKILL``) mid-traffic and restarted by PM2: it resumes from its
  directory (no new export) and catches up from the feed; once the stand-in stops, the mirror's
  digest equals the database's.
- (g) a row written with the triggers off (``session_replication_role = replica``): the feed
  never sees it, the mirror's position passes it without it, and the next reconciliation
  repairs it and reports it.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate.naming import company_dir_name
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.drill.evidence import differences
from resilience.drill.mirror import fresh_position, mirror_log, mirror_under_pm2
from resilience.drill.report import DrillReport
from resilience.drill.service import ServiceUnderTest
from resilience.drill.standin.writelog import WriteEntry
from resilience.files import snapshot
from resilience.files.importer import read_directory
from resilience.infra.pm2 import Pm2App
from resilience.infra.waiting import wait_until
from resilience.mirror.position import Position, read_position

from .conftest import SEEDED_KEYS
from .test_rollback import (
    RTO_LIMIT_S,
    _unreplay,
    assert_same_creds,
    creds_of,
    db_state,
    dir_state,
    scenario,
    steady_state,
    step,
    switch,
    wait_for_writes,
)

LOSS_WINDOW_MAX_S = 1.0  # the target: at most one second of writes lost

pytestmark = pytest.mark.stack


def _standin_only(service: ServiceUnderTest) -> None:
    if not service.standin:
        pytest.skip("the mirror drill needs the stand-in's log of acknowledged writes")


def _at(entry: WriteEntry) -> datetime:
    moment = datetime.fromisoformat(entry.time)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _missing_old_writes(
    installed: dict[tuple[str, str], str], entries: list[WriteEntry], cutoff: datetime
) -> list[str]:
    """Writes acknowledged before ``cutoff`` whose key is not in ``installed`` as that write
    or a later one left it (a later write may or may not have reached the mirror)."""
    by_key: dict[tuple[str, str], list[WriteEntry]] = {}
    for entry in entries:
        by_key.setdefault((entry.type, entry.id), []).append(entry)
    missing = []
    for key, writes in by_key.items():
        old = [w for w in writes if _at(w) <= cutoff]
        if not old:
            continue
        allowed = {w.fingerprint for w in writes[writes.index(old[-1]) :]}
        if installed.get(key) not in allowed:
            missing.append(f"{key[0]}/{key[1]} (acknowledged {old[-1].time})")
    return missing


def _fault(service: ServiceUnderTest, fault: str) -> AbstractContextManager[Any]:
    ep, stack = service.stack.endpoints, service.stack
    if fault == "proxy-disabled":
        client = ToxiproxyClient(ep.toxiproxy_url)
        return faults.proxy_disabled(client, ep.toxiproxy_proxy, allowed=ep.drill_target)
    stop = stack.kill_postgres if fault == "postgres-killed" else stack.stop_postgres
    return faults.server_stopped(stop, stack.start_postgres, "PostgreSQL", allowed=ep.drill_target)


def _fallback_from_mirror(
    service: ServiceUnderTest, report: DrillReport, title: str, fault: str, base: Path
) -> None:
    _standin_only(service)
    with mirror_under_pm2(service.settings, base, service.company) as mirror_settings:
        service = replace(service, settings=mirror_settings)
        with scenario(report, title, service) as journal:
            journal.steady_state("before", steady_state(service))
            with connect(service.stack.endpoints.service_dsn) as conn:
                snap = snapshot.take_snapshot(
                    PgAuthStore(conn), mirror_settings.snapshot_dir, [service.company],
                    keep=3, source="drill",
                )  # fmt: skip
            journal.event("snapshot", "snapshot taken (the cron's)", taken_at=snap.taken_at)
            wait_for_writes(service, 20)  # traffic after the snapshot: its loss window
            before = fresh_position(mirror_settings, service.company, datetime.now(UTC))
            journal.event("evidence", "mirror following", confirmed_at=before.confirmed_at)
            loss_at = datetime.now(UTC)
            with _fault(service, fault):
                journal.event("fault", f"injected {fault}")
                data = switch(service, journal, "to-files")
                service.wait_mode("file")
                journal.steady_state("after", steady_state(service))
                service.pm2.stop(service.deployed.app)
            journal.event("fault", f"removed {fault}")
            installed_step = step(data, "install-mirror")
            app = service.pm2.describe(mirror_settings.mirror_app)
            assert installed_step["mirror_process"] == "stopped"
            assert app is not None and app.status != "online"

            _, db_prints, _ = db_state(service)  # the database as it was lost
            entries = service.acknowledged_writes() or []
            pg_writes = [e for e in entries if e.mode == "postgres"]
            file_writes = [e for e in entries if e.mode == "file"]
            _, files_now = dir_state(service)
            installed = _unreplay(files_now, file_writes, db_prints)
            # but for the pre-key counters, which both modes move on as pre-keys are uploaded
            assert_same_creds(*creds_of(service), forward=False)
            cutoff = loss_at - timedelta(seconds=LOSS_WINDOW_MAX_S)
            missing = _missing_old_writes(installed, pg_writes, cutoff)
            lost = differences(db_prints, installed)
            late = {(e.type, e.id): _at(e) for e in pg_writes}
            oldest_lost = min((late[k] for k in lost if k in late), default=None)
            snap_dir = snap.company_dir(service.company)
            snap_state = read_directory(snap_dir, service.company)
            snap_prints = {(t, i): fp for (t, i), fp in _prints(snap_state.keys()).items()}
            snapshot_lost = differences(db_prints, snap_prints)
            measured_window = (
                round((loss_at - oldest_lost).total_seconds(), 3) if oldest_lost else 0.0
            )
            journal.finish(
                "completed" if not missing else "failed",
                deviated=bool(missing),
                measurements={
                    "rto_s": data["rto_s"],
                    "rto_limit_s": RTO_LIMIT_S,
                    "mirror_loss_window_s": installed_step["mirror_loss_window_s"],
                    "mirror_loss_window_s_max": LOSS_WINDOW_MAX_S,
                    "mirror_lost_keys": len(lost),
                    "mirror_lost_writes_oldest_age_s": measured_window,
                    "mirror_lost_writes_oldest_age_s_max": LOSS_WINDOW_MAX_S,
                    "writes_acknowledged_over_1s_before_loss_missing": len(missing),
                    "writes_acknowledged_over_1s_before_loss_missing_max": 0,
                    "snapshot_age_s": installed_step["snapshot_age_s"],
                    "snapshot_lost_keys": len(snapshot_lost),
                    "keys_seeded": SEEDED_KEYS,
                    "writes_acknowledged_in_postgres_mode": len(pg_writes),
                    "mirror_confirmed_at": installed_step["mirror_confirmed_at"],
                    "mirror_failing_since": installed_step["mirror_failing_since"],
                    "loss_at": loss_at.isoformat(),
                    "mirror_digest": installed_step["digest"],
                    "mirror_lost": [f"{t}/{i}" for t, i in lost],
                },
            )
            assert missing == [], f"writes acknowledged > 1 s before the loss missing: {missing}"
            assert installed_step["mirror_loss_window_s"] <= LOSS_WINDOW_MAX_S
            assert measured_window <= LOSS_WINDOW_MAX_S
            assert len(lost) <= len(snapshot_lost)


def _prints(keys: dict[tuple[str, str], Any]) -> dict[tuple[str, str], str]:
    from resilience.authstate.fingerprint import KeyFingerprint

    return {(t, i): KeyFingerprint.of(t, i, v) for (t, i), v in keys.items()}


def test_a_proxy_disabled_falls_back_to_the_mirror(
    drill_service: ServiceUnderTest, mirror_report: DrillReport, tmp_path: Path
) -> None:
    _fallback_from_mirror(
        drill_service, mirror_report, "a) proxy disabled: fallback from the mirror",
        "proxy-disabled", tmp_path,
    )  # fmt: skip


@pytest.mark.slow  # about 20 s each; (a) covers an unreachable database in ./run test
def test_b_postgres_stopped_falls_back_to_the_mirror(
    drill_service: ServiceUnderTest, mirror_report: DrillReport, tmp_path: Path
) -> None:
    if not drill_service.stack.controls_postgres:
        pytest.skip(f"the {drill_service.stack.name} backend cannot stop PostgreSQL")
    _fallback_from_mirror(
        drill_service, mirror_report, "b) PostgreSQL stopped: fallback from the mirror",
        "postgres-stopped", tmp_path,
    )  # fmt: skip


@pytest.mark.slow  # about 20 s each; (a) covers an unreachable database in ./run test
def test_e_postgres_killed_falls_back_to_the_mirror(
    drill_service: ServiceUnderTest, mirror_report: DrillReport, tmp_path: Path
) -> None:
    if not drill_service.stack.controls_postgres:
        pytest.skip(f"the {drill_service.stack.name} backend cannot kill PostgreSQL")
    _fallback_from_mirror(
        drill_service, mirror_report, "e) PostgreSQL killed (kill -9): fallback from the mirror",
        "postgres-killed", tmp_path,
    )  # fmt: skip


def _mirror_digest_equals_db(service: ServiceUnderTest, mirror_dir: Path) -> tuple[str, str]:
    """(mirror digest, database digest) once the stand-in stopped and the mirror caught up."""
    _, _, db_digest = db_state(service)
    state = read_directory(mirror_dir / company_dir_name(service.company), service.company)
    return state.digest().digest, db_digest


def test_f_mirror_killed_mid_traffic_catches_up_without_a_gap(
    drill_service: ServiceUnderTest, mirror_report: DrillReport, tmp_path: Path
) -> None:
    service = drill_service
    _standin_only(service)
    with (
        mirror_under_pm2(service.settings, tmp_path, service.company) as ms,
        scenario(
            mirror_report, "f) mirror killed mid-traffic: resumes and catches up", service
        ) as journal,  # fmt: skip
    ):
        journal.steady_state("before", steady_state(service))
        app = service.pm2.require(ms.mirror_app)
        assert app.pid
        os.kill(app.pid, signal.SIGKILL)  # the python under ./run: PM2 restarts the app
        killed_at = datetime.now(UTC)
        journal.event("fault", "mirror killed (SIGKILL)", pid=app.pid)
        wait_for_writes(service, 20)  # traffic while it is down or restarting

        def restarted_app() -> Pm2App | None:
            now = service.pm2.describe(ms.mirror_app)
            ok = now is not None and now.status == "online" and now.pid not in (None, app.pid)
            return now if ok else None

        restarted = wait_until(restarted_app, 60, "the mirror restarted by PM2")
        journal.event("evidence", "mirror restarted by PM2", pid=restarted.pid)
        fresh_position(ms, service.company, datetime.now(UTC))
        wait_for_writes(service, 10)
        service.pm2.stop(service.deployed.app)  # the traffic ends: everything must arrive
        stopped_at = datetime.now(UTC)
        position = fresh_position(ms, service.company, stopped_at + timedelta(seconds=0.2))
        mirror_digest, db_digest = _mirror_digest_equals_db(service, ms.mirror_dir)
        log_text = mirror_log(tmp_path)
        resumed = f"company {service.company}: resumed from its directory" in log_text
        exports = log_text.count(f"company {service.company}: full export")
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "mirror_digest": mirror_digest,
                "db_digest": db_digest,
                "digests_equal": mirror_digest == db_digest,
                "resumed_from_directory": resumed,
                "full_exports": exports,
                "reconcile_repairs": position.reconcile_repairs_total,
                "reconcile_repairs_max": 0,
                "changes_applied_since_restart": position.applied_total,
                "killed_at": killed_at.isoformat(),
                "writes_acknowledged": len(service.acknowledged_writes() or []),
            },
        )
        assert mirror_digest == db_digest
        assert position.companies[service.company]["digest"] == db_digest
        # resumed from its directory; or, killed between its files and its position, it
        # found them differ and exported again: never a gap either way
        differs = f"company {service.company}: directory differs from its position" in log_text
        assert (resumed and exports == 1) or (differs and exports == 2)
        assert position.reconcile_repairs_total == 0  # the feed carried it, not a repair


def test_g_a_row_written_with_the_triggers_off_is_repaired_and_reported(
    drill_service: ServiceUnderTest, mirror_report: DrillReport, tmp_path: Path
) -> None:
    service = drill_service
    with (
        mirror_under_pm2(
            service.settings, tmp_path, service.company, mirror_reconcile_interval=3.0
        ) as ms,  # fmt: skip
        scenario(
            mirror_report, "g) a change the feed missed: reconciliation repairs it", service
        ) as journal,  # fmt: skip
    ):
        journal.steady_state("before", steady_state(service))
        key_id = f"{int(time.time())}.7"
        name = f"session-{key_id}.json"
        with connect(service.stack.endpoints.admin_dsn) as conn:
            conn.execute("SET session_replication_role = replica")  # no trigger fires
            PgAuthStore(conn).set_keys(service.company, {"session": {key_id: {"m": b"\x01"}}})
            conn.commit()
        written_at = datetime.now(UTC)
        journal.event("fault", "a key written with the triggers off", key=f"session/{key_id}")
        directory = ms.mirror_dir / company_dir_name(service.company)
        passed = fresh_position(ms, service.company, written_at)
        missed = not (directory / name).exists()
        journal.event("evidence", "position past the write, file absent", missed=missed,
                      confirmed_at=passed.confirmed_at)  # fmt: skip

        def repair_reported() -> Position | None:
            p = read_position(ms.mirror_dir)
            return p if p is not None and f"{service.company}: {name}" in p.reconcile_last else None

        repaired = wait_until(repair_reported, 30, "the reconciliation repairing the missed key")
        present = (directory / name).exists()
        # the position is written before PM2 has the log line on disk: wait for it too
        logged = wait_until(
            lambda: f"{service.company}: {name}" in mirror_log(tmp_path),
            15,
            "the repair in the mirror's log",
        )
        service.pm2.stop(service.deployed.app)
        fresh_position(ms, service.company, datetime.now(UTC) + timedelta(seconds=0.2))
        mirror_digest, db_digest = _mirror_digest_equals_db(service, ms.mirror_dir)
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "missed_by_the_feed": missed,
                "repaired_file_present": present,
                "repair_reported_in_position": True,
                "repair_logged": logged,
                "reconcile_repairs_total": repaired.reconcile_repairs_total,
                "repaired_after_s": round(
                    ((repaired.reconcile_at or written_at) - written_at).total_seconds(), 3
                ),
                "digests_equal_after": mirror_digest == db_digest,
            },
        )
        assert missed and present and logged
        assert mirror_digest == db_digest
