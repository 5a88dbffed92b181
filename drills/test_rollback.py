"""Drill: lose PostgreSQL, switch the service to Baileys files and back; prove it with numbers.

Each scenario is steady state -> fault -> method (the real `run_switch`) -> assertions ->
rollbacks, with the stand-in writing keys throughout. Keys are compared by fingerprint
(SHA-256 over type, id and decoded value): the seeded 1,313 plus every write the stand-in
journaled as acknowledged. For a fallback from a snapshot, the keys written to PostgreSQL
after the snapshot are the loss window: writes the service could not see while on files. When
the database survived, the way back merges three ways and none of them is lost.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate.codec import canonical
from resilience.authstate.filestore import FileAuthStore
from resilience.authstate.fingerprint import KeyFingerprint
from resilience.authstate.naming import company_dir_name
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import settings_as_env
from resilience.drill.baileys import selfcheck
from resilience.drill.evidence import (
    Fingerprints,
    database_state,
    differences,
    replay,
    seeded,
)
from resilience.drill.report import DrillReport
from resilience.drill.service import ServiceUnderTest
from resilience.drill.standin.writelog import WriteEntry
from resilience.drill.switches import read_run, record_switch
from resilience.errors import DataError, LockHeld
from resilience.files import importer
from resilience.infra.fsutil import atomic_write
from resilience.infra.waiting import wait_until
from resilience.restore import commands
from resilience.restore.runner import StepFailed
from resilience.restore.state import SwitchState
from resilience.restore.target import make_target
from resilience.runs.journal import Journal
from resilience.service import gitref

from .conftest import ROOT, SEEDED_KEYS

INVOKE = str(Path(sys.executable).parent / "invoke")

RTO_LIMIT_S = 600.0
#: Scenario (c): the injected latency, and the round trips the switch may make to PostgreSQL.
LATENCY_S = 2.0
ROUND_TRIPS_MAX = 5

pytestmark = pytest.mark.stack


# --- measuring --------------------------------------------------------------------------------
def db_state(service: ServiceUnderTest) -> tuple[str, Fingerprints, str]:
    """(creds fingerprint, key fingerprints, digest) of the database, read directly."""
    return database_state(service.stack.endpoints.admin_dsn, service.company)


def dir_state(service: ServiceUnderTest) -> tuple[str, Fingerprints]:
    root = service.settings.auth_root
    assert root is not None
    store = FileAuthStore(root)
    mapping, unmappable = importer.map_directory(root / company_dir_name(service.company))
    assert unmappable == []
    files = store.read_files(service.company)
    prints = {
        mapping[name]: KeyFingerprint.of(*mapping[name], value) for name, value in files.items()
    }
    return KeyFingerprint.of("creds", "", store.read_creds(service.company)), prints


def seeded_prints(service: ServiceUnderTest) -> Fingerprints:
    assert service.dataset is not None
    return seeded(service.dataset, service.company)


def wait_for_writes(service: ServiceUnderTest, more: int, timeout: float = 30) -> int | None:
    """Let the service write `more` keys: counted by the stand-in's (or the Baileys drill
    service's) health, or, for a real service, from its own traces (rows' updated_at, files'
    mtimes)."""
    if not service.standin:
        marker = service.write_marker()

        def traced() -> int | None:
            found = service.writes_since(marker)
            return found if found >= more else None

        return wait_until(traced, timeout * 4, f"{more} writes of the service")
    start = int(service.health()["writes_ok"])

    def written() -> int | None:
        now = int(service.health()["writes_ok"])
        return now if now >= start + more else None

    return wait_until(written, timeout, f"{more} writes of the stand-in")


def scenario(
    report: DrillReport, title: str, service: ServiceUnderTest
) -> AbstractContextManager[Journal]:
    ep = service.stack.endpoints
    return report.scenario(title, ep.service_dsn, ep.admin_dsn)


def state_file(service: ServiceUnderTest) -> Path:
    return make_target(service.settings, service.company).state_file


def steady_state(service: ServiceUnderTest) -> dict[str, Any]:
    health = service.health()
    return {k: health.get(k) for k in ("mode", "company", "key_count", "digest", "writes_ok")}


def switch(service: ServiceUnderTest, journal: Journal, direction: str) -> dict[str, Any]:
    """The operator's command, on the service's settings; its run record is linked here."""
    run = service.switch(direction)  # type: ignore[arg-type]
    data = run.to_dict()
    assert run.outcome.result is not None and run.outcome.result.ok
    assert run.record is not None and (run.record / "journal.json").is_file()
    record_switch(journal, run.journal, record=run.record, rto_s=data["rto_s"])
    assert data["rto_s"] < RTO_LIMIT_S
    return data


def step(data: dict[str, Any], *names: str) -> dict[str, Any]:
    """The details of the first step of a switch whose name is one of `names`."""
    found = next((st for st in data["run"]["steps"] if st["name"] in names), None)
    assert found is not None, f"no step {names} in {[st['name'] for st in data['run']['steps']]}"
    details: dict[str, Any] = found["details"]
    return details


def check_loaded_digest(
    service: ServiceUnderTest, health: dict[str, Any], expected: str
) -> str | None:
    """The service must report loading `expected`; without a health endpoint there is no digest
    to read from the service, and that is said, not skipped silently."""
    if service.settings.health_url and "loaded_digest" in health:
        assert health.get("loaded_digest") == expected
        return str(health["loaded_digest"])
    if service.settings.health_url:
        return "not available (the service's health has no loaded_digest)"
    return "not available (no RESILIENCE_HEALTH_URL)"


def baileys_reads_everything(service: ServiceUnderTest, journal: Journal, mode: str) -> None:
    """On real Baileys code: every key read back through the auth state in use (files by
    useMultiFileAuthState's reader, rows by BufferJSON.reviver), not one Buffer left unrevived."""
    if service.kind != "baileys":
        return
    checked = selfcheck(service.settings.health_url or "")
    journal.event(
        "baileys-read-back", f"real Baileys read back every key in {mode} mode", **checked
    )
    assert checked["keys"] > SEEDED_KEYS // 2 and checked["unrevived"] == 0, checked
    assert checked["creds_unrevived"] == 0, checked


#: what Baileys changes in creds as it runs (pre-key uploads): moved on after the way back
MOVING_CREDS = ("nextPreKeyId", "firstUnuploadedPreKeyId")


def creds_of(service: ServiceUnderTest) -> tuple[Any, Any]:
    """(PostgreSQL's creds, the files' creds) of the company, read directly."""
    files = FileAuthStore(service.auth_root).read_creds(service.company)
    with connect(service.stack.endpoints.admin_dsn) as conn:
        db = PgAuthStore(conn).load_creds(service.company)
    return db, files


def assert_same_creds(earlier: Any, later: Any, *, forward: bool = True) -> None:
    """``later`` holds ``earlier``'s creds field by field but for the pre-key counters, which a
    service moves on as it uploads pre-keys (Baileys and the stand-in): never back when
    ``forward``, either way when not (files that went on from a snapshot's counters)."""
    assert isinstance(earlier, dict) and isinstance(later, dict)
    same = [k for k in earlier.keys() | later.keys() if k not in MOVING_CREDS]
    assert all(canonical(earlier.get(k)) == canonical(later.get(k)) for k in same)
    for counter in MOVING_CREDS if forward else ():
        assert later.get(counter, 0) >= earlier.get(counter, 0), counter


def assert_creds_carried_back(service: ServiceUnderTest) -> None:
    """PostgreSQL holds the creds the service held in file mode: the same, with its pre-key
    counters moved on from the files' ones (uploads since), never back."""
    db, files = creds_of(service)
    assert_same_creds(files, db)


def standin_only(service: ServiceUnderTest, why: str) -> None:
    if service.kind == "baileys":
        pytest.skip(f"the drill service on real Baileys code: {why}")


# --- scenarios --------------------------------------------------------------------------------
def _fallback_from_snapshot(
    service: ServiceUnderTest, report: DrillReport, title: str, fault: str
) -> None:
    ep = service.stack.endpoints
    with scenario(report, title, service) as journal:
        journal.steady_state("before", steady_state(service))
        taken = service.snapshot()  # the operator's cron: snapshot and standby copy
        snap = taken.snapshot
        journal.event(
            "snapshot",
            "snapshot taken",
            path=str(snap.path),
            taken_at=snap.taken_at.isoformat(),
            standby=taken.standby,
        )
        wait_for_writes(service, 10)  # live traffic after the snapshot: the loss window
        outage_at = time.monotonic()
        outage_iso = datetime.now(UTC).isoformat()
        with ToxiproxyClient(ep.toxiproxy_url) as toxiproxy:
            injected: AbstractContextManager[Any]
            if fault == "proxy-disabled":
                injected = faults.proxy_disabled(
                    toxiproxy, ep.toxiproxy_proxy, allowed=ep.drill_target
                )
            else:
                injected = faults.server_stopped(
                    service.stack.stop_postgres,
                    service.stack.start_postgres,
                    "PostgreSQL",
                    allowed=ep.drill_target,
                )
            with injected:
                journal.event("fault", f"injected {fault}")
                data = switch(service, journal, "to-files")
                recovered_s = time.monotonic() - outage_at
                health = service.wait_mode("file")
                journal.steady_state("after", steady_state(service))
                baileys_reads_everything(service, journal, "file")
                # the database as it was lost is read once it is back, against the files
                service.pm2.stop(service.deployed.app)
            journal.event("fault-removed", f"{fault} removed: PostgreSQL is back")
        _, db_prints, _ = db_state(service)
        entries = service.acknowledged_writes()
        file_writes = [e for e in entries or [] if e.mode == "file"]
        _, files_now = dir_state(service)
        # undo the file-mode writes to get the files as installed from the snapshot
        installed = step(data, "install-snapshot")
        assert installed["digest"] == snap.companies[service.company]["digest"]
        if taken.standby is not None and "directory" in taken.standby:
            assert installed["installed_from"] == "standby"  # renamed in, no file created
        unseen = differences(db_prints, _unreplay(files_now, file_writes, db_prints))
        if service.kind == "standin":  # Baileys saves creds in file mode (next pre-key id)
            assert_same_creds(*creds_of(service), forward=False)  # the stand-in too, as Baileys
        if entries is not None:  # every difference must be a write acknowledged after it
            after_snapshot = {
                (e.type, e.id)
                for e in entries
                if e.mode == "postgres" and e.time >= snap.taken_at.isoformat()
            }
            unexplained = [k for k in unseen if k not in after_snapshot]
            assert unexplained == [], (
                f"keys differ without a write after the snapshot: {unexplained[:5]}"
            )
        loaded = check_loaded_digest(service, health, installed["digest"])  # runs on it
        # the way back, with the service writing in file mode again: a three-way merge
        service.pm2.restart(service.deployed.app)
        service.wait_mode("file")
        wait_for_writes(service, 10)
        back = switch(service, journal, "to-postgres")
        service.wait_mode("postgres")
        baileys_reads_everything(service, journal, "postgres")
        service.pm2.stop(service.deployed.app)
        merged = step(back, "import")["merge"]
        _, after, _ = db_state(service)
        assert_creds_carried_back(service)
        entries = service.acknowledged_writes()
        lost = lost_writes(service, after, entries, db_prints) if entries is not None else None
        assert lost in ([], None), f"acknowledged writes lost on the way back: {lost}"
        # each write the service could not see is there as PostgreSQL kept it (unless the
        # service itself wrote that key again since: in file mode, or after the way back)
        again = {(e.type, e.id) for e in entries or [] if e.time >= outage_iso}
        assert all(after.get(k) == db_prints.get(k) for k in unseen if k not in again)
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "rto_s": data["rto_s"],
                "rto_limit_s": RTO_LIMIT_S,
                "outage_to_recovered_s": round(recovered_s, 3),
                "snapshot_age_s": installed.get("snapshot_age_s"),
                "installed_from": installed.get("installed_from"),
                "keys_seeded": SEEDED_KEYS if service.standin else None,
                "keys_in_db_at_loss": len(db_prints),
                "keys_in_files": len(files_now),
                "writes_acknowledged": _count(entries),
                "writes_in_file_mode": len(file_writes) if entries is not None else None,
                # writes the service could not see while on files: kept by the way back
                "loss_window_keys": len(unseen),
                "loss_window": [f"{t}/{i}" for t, i in unseen],
                "snapshot_digest": installed["digest"],
                "health_loaded_digest": loaded,
                "rto_back_s": back["rto_s"],
                "merge": merged,
                "keys_lost_after_way_back": len(lost) if lost is not None else _count(None),
                "keys_lost_after_way_back_max": 0,
            },
        )


def lost_writes(
    service: ServiceUnderTest,
    after: Fingerprints,
    entries: list[WriteEntry],
    held: Fingerprints,
) -> list[tuple[str, str]]:
    """Keys where PostgreSQL after the way back is not the seed plus every acknowledged write.

    One exception is not a loss: a write PostgreSQL committed while the fault cut the
    connection before the service heard the answer (so the service never journaled it). Such a
    key, untouched in file mode, is kept as PostgreSQL held it when the fault ended (``held``):
    its value after the way back must be exactly that one."""
    differ = differences(after, replay(seeded_prints(service), entries))
    touched = _touched(entries)
    return [k for k in differ if k in touched or after.get(k) != held.get(k)]


def _touched(entries: list[WriteEntry] | None) -> set[tuple[str, str]]:
    """The keys the service wrote in file mode (their PostgreSQL values were rightly replaced)."""
    return {(e.type, e.id) for e in entries or [] if e.mode == "file"}


def _count(entries: list[WriteEntry] | None) -> int | str:
    return len(entries) if entries is not None else "not available (real service)"


def _unreplay(
    files_now: Fingerprints, file_writes: list[WriteEntry], db: Fingerprints
) -> Fingerprints:
    """The files as installed: take back every key the service touched in file mode.

    A key touched in file mode tells nothing about the snapshot, so it is compared as the
    database has it (it can neither hide nor create a difference)."""
    touched = {(e.type, e.id) for e in file_writes}
    state = {k: v for k, v in files_now.items() if k not in touched}
    for key in touched:
        if key in db:
            state[key] = db[key]
    return state


def test_a_proxy_disabled_falls_back_to_the_newest_snapshot(
    drill_service: ServiceUnderTest, rollback_report: DrillReport
) -> None:
    _fallback_from_snapshot(
        drill_service,
        rollback_report,
        "a) proxy disabled: fallback from snapshot",
        "proxy-disabled",
    )


def test_b_postgres_stopped_falls_back_to_the_newest_snapshot(
    drill_service: ServiceUnderTest, rollback_report: DrillReport
) -> None:
    if not drill_service.stack.controls_postgres:
        pytest.skip(
            f"the {drill_service.stack.name} backend cannot stop the PostgreSQL server "
            "(a managed instance has no shell): scenario (a) covers an unreachable database"
        )
    _fallback_from_snapshot(
        drill_service,
        rollback_report,
        "b) PostgreSQL stopped: fallback from snapshot",
        "postgres-stopped",
    )


@pytest.mark.slow  # about 50 s: every round trip to the database costs 2 s
def test_c_slow_postgres_live_export_loses_nothing(
    drill_service: ServiceUnderTest, rollback_report: DrillReport
) -> None:
    service = drill_service
    standin_only(service, "scenario c (a 2 s latency on every round trip) runs on the stand-in")
    ep = service.stack.endpoints
    with scenario(
        rollback_report, "c) PostgreSQL slow (2 s latency): live export", service
    ) as journal:
        journal.steady_state("before", steady_state(service))
        wait_for_writes(service, 10)
        with (
            ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
            faults.latency(
                toxiproxy, ep.toxiproxy_proxy, int(LATENCY_S * 1000), allowed=ep.drill_target
            ),
        ):
            journal.event("fault", "2000 ms latency toxic on the PostgreSQL proxy")
            data = switch(service, journal, "to-files")
            health = service.wait_mode("file")
            journal.steady_state("after", steady_state(service))
            service.pm2.stop(service.deployed.app)

        _, db_prints, db_digest = db_state(service)
        entries = service.acknowledged_writes()
        pg_writes = [e for e in entries or [] if e.mode == "postgres"]
        file_writes = [e for e in entries or [] if e.mode == "file"]
        export = step(data, "export")
        # Round trips: one connection for preflight and export (connect and SCRAM, one
        # preflight statement, one export statement), counted from libpq's protocol trace.
        round_trips = data["db_round_trips"]
        assert round_trips <= ROUND_TRIPS_MAX, f"{round_trips} round trips to PostgreSQL"
        # RTO against its floor measured in this run: the restart (stop, start) until the
        # service answers, as a PM2 restart would do it, split around the export; the stop
        # from PM2's stop sent to the service gone (begun while the preflight's statement ran)
        stopped = step(data, "service-stopped")
        restart_s = stopped["stop_s"] + sum(
            st["duration_s"]
            for st in data["run"]["steps"]
            if st["name"] in ("start-service", "verify")
        )
        rto_limit_c = ROUND_TRIPS_MAX * LATENCY_S + restart_s
        assert data["rto_s"] <= rto_limit_c
        # Nothing lost: the database is exactly what was exported and what the service loaded
        # (and, for the stand-in, the seed plus every acknowledged write).
        if entries is not None:
            assert differences(db_prints, replay(seeded_prints(service), pg_writes)) == []
        assert export["digest"] == db_digest
        loaded = check_loaded_digest(service, health, export["digest"])  # runs on the export
        assert export["key_count"] == len(db_prints)
        _, files_now = dir_state(service)
        assert_same_creds(*creds_of(service))  # the files' counters moved on by file-mode uploads
        if entries is not None:  # ...and every file-mode write landed in the files
            assert differences(files_now, replay(db_prints, file_writes)) == []
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "rto_s": data["rto_s"],
                "rto_limit_s": round(rto_limit_c, 3),
                "restart_floor_s": round(restart_s, 3),
                "db_round_trips": round_trips,
                "db_round_trips_max": ROUND_TRIPS_MAX,
                "keys_seeded": SEEDED_KEYS if service.standin else None,
                "keys_exported": export["key_count"],
                "writes_acknowledged_in_postgres_mode": _count(
                    pg_writes if entries is not None else None
                ),
                "writes_in_file_mode": _count(file_writes if entries is not None else None),
                "loss_window_keys": 0,
                "loss_window_keys_max": 0,
                "export_digest": export["digest"],
                "health_loaded_digest": loaded,
                "collisions_reported": len(export.get("collisions", [])),
            },
        )


def test_d_round_trip_back_to_postgres_keeps_file_mode_writes(
    drill_service: ServiceUnderTest, rollback_report: DrillReport
) -> None:
    service = drill_service
    with scenario(
        rollback_report, "d) round trip: files and back to PostgreSQL", service
    ) as journal:
        journal.steady_state("before", steady_state(service))
        there = switch(service, journal, "to-files")
        assert SwitchState.read(state_file(service)) is not None
        service.wait_mode("file")
        baileys_reads_everything(service, journal, "file")
        wait_for_writes(service, 30)  # keys added, changed and deleted in file mode
        back = switch(service, journal, "to-postgres")
        health = service.wait_mode("postgres")
        journal.steady_state("after", steady_state(service))
        baileys_reads_everything(service, journal, "postgres")
        service.pm2.stop(service.deployed.app)

        _, db_prints, db_digest = db_state(service)
        entries = service.acknowledged_writes()
        by_mode = {m: sum(1 for e in entries or [] if e.mode == m) for m in ("postgres", "file")}
        expected = replay(seeded_prints(service), entries) if entries is not None else {}
        # keys written in file mode and still present at the end, with ids names cannot carry
        file_keys = {(e.type, e.id) for e in entries or [] if e.mode == "file"} & expected.keys()
        odd = [k for k in file_keys if "::" in k[1] or "/" in k[1] or "_" in k[1]]
        if entries is not None:
            # Every acknowledged write of both modes is in the database, under its exact id.
            assert differences(db_prints, expected) == []
            assert odd and all(db_prints.get(k) == expected[k] for k in odd)
        imported = next(s for s in back["run"]["steps"] if s["name"] == "import")["details"]
        assert imported["digest_db"] == imported["digest_dir"]
        loaded = check_loaded_digest(service, health, imported["digest_db"])  # runs on it
        assert SwitchState.read(state_file(service)) is None
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "rto_s": there["rto_s"],
                "rto_limit_s": RTO_LIMIT_S,
                "rto_back_s": back["rto_s"],
                "rto_back_limit_s": RTO_LIMIT_S,
                "keys_seeded": SEEDED_KEYS if service.standin else None,
                "writes_in_postgres_mode": by_mode["postgres"]
                if entries is not None
                else _count(None),
                "writes_in_file_mode": by_mode["file"] if entries is not None else _count(None),
                "imported_upserts": imported["upserted"],
                "imported_deletes": imported["deleted"],
                "keys_in_db_after": len(db_prints),
                "db_digest_after": db_digest,
                "health_loaded_digest_after_return": loaded,
                "ids_with_colons_slashes_or_domains_round_tripped": len(odd),
                "checked_at": datetime.now(UTC).isoformat(),
            },
        )


def test_e_failed_verification_carries_file_mode_writes_back(
    drill_service: ServiceUnderTest, rollback_report: DrillReport
) -> None:
    """The service runs in file mode and acknowledges writes, then verification fails (here:
    a mode line that is never logged). The undo must carry every one of those writes back to
    PostgreSQL before it reverts flags, code and service."""
    service = drill_service
    with scenario(
        rollback_report, "e) verification fails after file-mode writes: undo keeps them", service
    ) as journal:
        journal.steady_state("before", steady_state(service))
        broken = service.settings.model_copy(
            update={
                "file_mode_pattern": r"this line is never logged for {company}",
                "verify_timeout": 5.0,
            }
        )
        journal.event("fault", "verification cannot succeed: the file-mode line is never seen")
        with pytest.raises(StepFailed) as info:
            commands.switch(broken, "to-files", company_id=service.company)
        failed = info.value
        assert failed.record is not None
        undo = record_switch(journal, read_run(failed.record), record=failed.record)
        assert failed.result.halted is None
        undone = [(r.name, r.status) for r in failed.result.rollbacks]
        assert undone[0] == ("start-service", "ok")
        # what the undo carried back is in the run (hence --json and the alert), not only logs
        carried = failed.result.rollbacks[0].details["carried_back"]
        assert carried["merge"]["base"] == "export" and carried["digest_db"]
        health = service.wait_mode("postgres")
        journal.steady_state("after", steady_state(service))
        service.pm2.stop(service.deployed.app)

        _, db_prints, db_digest = db_state(service)
        entries = service.acknowledged_writes()
        file_writes = [e for e in entries or [] if e.mode == "file"]
        if entries is not None:
            assert file_writes, "the service acknowledged no write in file mode"
            assert differences(db_prints, replay(seeded_prints(service), entries)) == []
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                # until the undo had the service serving on PostgreSQL again
                "rto_s": undo["duration_s"],
                "rto_limit_s": RTO_LIMIT_S,
                "undone": undone,
                "writes_in_file_mode_carried_back": _count(
                    file_writes if entries is not None else None
                ),
                "writes_in_file_mode_carried_back_min": 1,
                "keys_lost": 0 if entries is not None else _count(None),
                "keys_lost_max": 0,
                "keys_in_db_after": len(db_prints),
                "db_digest_after": db_digest,
                "mode_after": health.get("mode"),
            },
        )


# --- nothing lost under real operator behaviour -----------------------------------------------
def _task(service: ServiceUnderTest, *args: str) -> subprocess.Popen[str]:
    """The operator's command in a process of its own, configured by the settings alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENCE_")}
    env |= settings_as_env(service.settings) | {"RESILIENCE_COMPANY_ID": service.company}
    return subprocess.Popen(
        [INVOKE, "--search-root", str(ROOT), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _way_back_loses_nothing(
    service: ServiceUnderTest, journal: Journal
) -> tuple[dict[str, Any], int | str]:
    """The way back with the service writing in file mode; every acknowledged write of both
    modes must be in PostgreSQL afterwards. (the switch's data, keys lost)"""
    service.wait_mode("file")
    wait_for_writes(service, 10)
    back = switch(service, journal, "to-postgres")
    service.wait_mode("postgres")
    journal.steady_state("after", steady_state(service))
    baileys_reads_everything(service, journal, "postgres")
    service.pm2.stop(service.deployed.app)
    _, after, _ = db_state(service)
    entries = service.acknowledged_writes()
    if entries is None:
        return back, _count(None)
    lost = differences(after, replay(seeded_prints(service), entries))
    assert lost == [], f"acknowledged writes lost: {lost[:10]}"
    return back, 0


@pytest.mark.parametrize(
    ("gap_s", "latency_ms"), [(0.5, 0), (6.0, 2000)], ids=["0.5s-apart", "latency-6s-apart"]
)
def test_f_two_switches_at_once_one_is_refused(
    drill_service: ServiceUnderTest, rollback_report: DrillReport, gap_s: float, latency_ms: int
) -> None:
    service = drill_service
    standin_only(
        service, "the lock is the tool's, whatever the service (scenario f on the stand-in)"
    )
    ep = service.stack.endpoints
    title = f"f) two restore.to-files --yes {gap_s} s apart" + (
        f" ({latency_ms} ms latency)" if latency_ms else ""
    )
    with scenario(rollback_report, title, service) as journal:
        journal.steady_state("before", steady_state(service))
        original_ref = gitref.current_ref(service.workdir)
        with contextlib.ExitStack() as fault:
            if latency_ms:
                toxiproxy = fault.enter_context(ToxiproxyClient(ep.toxiproxy_url))
                fault.enter_context(
                    faults.latency(
                        toxiproxy, ep.toxiproxy_proxy, latency_ms, allowed=ep.drill_target
                    )
                )
                journal.event("fault", f"{latency_ms} ms latency toxic on the PostgreSQL proxy")
            first = _task(service, "restore.to-files", "--yes", "--json")
            with contextlib.suppress(subprocess.TimeoutExpired):
                first.wait(timeout=gap_s)  # the gap between the two operators
            second = _task(service, "restore.to-files", "--yes", "--json")
            journal.event("method", f"two restore.to-files --yes started {gap_s} s apart")
            outs = [p.communicate(timeout=300) for p in (first, second)]
        codes = [first.returncode, second.returncode]
        journal.event("outcome", f"exit codes {codes}", stderr=[e for _, e in outs])
        assert sorted(codes) == [0, LockHeld.exit_code], outs
        refused = outs[codes.index(LockHeld.exit_code)][1]
        winner = (first, second)[codes.index(0)]
        assert "locked by restore.to-files" in refused and f"pid {winner.pid}" in refused
        state = SwitchState.read(state_file(service))
        assert state is not None and state.previous_ref == original_ref
        back, lost = _way_back_loses_nothing(service, journal)
        assert gitref.current_ref(service.workdir) == original_ref
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "exit_codes": codes,
                "refused_with": refused.strip().splitlines()[-1][:300],
                "previous_ref": state.previous_ref,
                "original_ref": original_ref,
                "ref_after_way_back": gitref.current_ref(service.workdir),
                "keys_lost": lost,
                "keys_lost_max": 0,
                "rto_back_s": back["rto_s"],
            },
        )


def test_g_way_back_after_snapshot_fallback_keeps_what_postgres_held(
    drill_service: ServiceUnderTest, rollback_report: DrillReport
) -> None:
    """PostgreSQL only unreachable for seconds: the writes it acknowledged after the snapshot
    survive the way back, every file-mode write too; both-sided changes are listed."""
    service = drill_service
    ep = service.stack.endpoints
    with scenario(
        rollback_report, "g) way back after a snapshot fallback, PostgreSQL intact", service
    ) as journal:
        journal.steady_state("before", steady_state(service))
        taken = service.snapshot()
        wait_for_writes(service, 30)  # PostgreSQL moves on after the snapshot
        with (
            ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
            faults.proxy_disabled(toxiproxy, ep.toxiproxy_proxy, allowed=ep.drill_target),
        ):
            journal.event("fault", "proxy disabled")
            there = switch(service, journal, "to-files")
            service.wait_mode("file")
            baileys_reads_everything(service, journal, "file")
        journal.event("fault-removed", "proxy enabled: PostgreSQL reachable again")
        _, held, _ = db_state(service)  # what PostgreSQL kept (the service is on files now)
        wait_for_writes(service, 20)  # file-mode writes, some over keys PostgreSQL changed
        preview = service.switch("to-postgres", dry_run=True).outcome.preflight
        assert preview.base_source == "install-snapshot" and preview.merge is not None
        back = switch(service, journal, "to-postgres")
        service.wait_mode("postgres")
        journal.steady_state("after", steady_state(service))
        baileys_reads_everything(service, journal, "postgres")
        service.pm2.stop(service.deployed.app)
        merge = step(back, "import")["merge"]
        _, after, _ = db_state(service)
        entries = service.acknowledged_writes()
        taken_at = taken.snapshot.taken_at.isoformat()
        if entries is not None:
            assert lost_writes(service, after, entries, held) == []
            pg_after = {
                (e.type, e.id) for e in entries if e.mode == "postgres" and e.time >= taken_at
            }
            in_files = _touched(entries)
            kept = pg_after - in_files
            assert kept, "no write reached PostgreSQL between the snapshot and the outage"
            # each of them is in PostgreSQL with the value it acknowledged
            last = replay({}, [e for e in entries if e.mode == "postgres"])
            assert all(after.get(k) == last.get(k) for k in kept)
            moved = merge["kept_from_postgres"]["count"]
            assert moved + merge["deleted_in_postgres_kept_deleted"]["count"] > 0
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "rto_s": there["rto_s"],
                "rto_limit_s": RTO_LIMIT_S,
                "rto_back_s": back["rto_s"],
                "rto_back_limit_s": RTO_LIMIT_S,
                "merge_preview": preview.merge,
                "merge": merge,
                "writes_in_postgres_after_snapshot": len(pg_after) if entries else _count(None),
                "writes_in_file_mode": len(in_files) if entries else _count(None),
                "keys_lost": 0 if entries is not None else _count(None),
                "keys_lost_max": 0,
            },
        )


@pytest.mark.standin_env(PRE_KEY_CREDS_SAVE="false")  # creds.json stays as h breaks it
def test_h_corrupt_files_are_refused_before_the_stop(
    drill_service: ServiceUnderTest, rollback_report: DrillReport
) -> None:
    service = drill_service
    standin_only(
        service, "Baileys saves creds.json in file mode itself (scenario h on the stand-in)"
    )
    with scenario(
        rollback_report, "h) corrupt files in file mode: refused before the stop", service
    ) as journal:
        switch(service, journal, "to-files")
        service.wait_mode("file")
        journal.steady_state("before", steady_state(service))
        company_dir = service.auth_root / company_dir_name(service.company)
        key_file = next(p for p in sorted(company_dir.glob("app-state-sync-key-*.json")))
        refusals: dict[str, Any] = {}
        for broken, payload in (
            (company_dir / "creds.json", b"{not json"),
            (key_file, b'{"keyData": {"type": "Buffer", "data": "%%% not base64 %%%"}}'),
        ):
            good = broken.read_bytes()
            atomic_write(broken, payload)
            journal.event("fault", f"{broken.name} made undecodable")
            pid = service.pm2.require(service.deployed.app).pid
            writes = int(service.health()["writes_ok"])
            done = _task(service, "restore.to-postgres", "--yes", "--json")
            _out, err = done.communicate(timeout=120)
            assert done.returncode == DataError.exit_code, err
            assert broken.name in err and "nothing was stopped" in err
            # the service kept serving: same process, file mode, still acknowledging writes
            assert service.pm2.require(service.deployed.app).pid == pid
            assert service.health()["mode"] == "file"
            wait_for_writes(service, 3)
            assert int(service.health()["writes_ok"]) > writes
            refusals[broken.name] = {"exit_code": done.returncode, "message": err.strip()[:300]}
            atomic_write(broken, good)
        back, lost = _way_back_loses_nothing(service, journal)
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "refusals": refusals,
                "service_restarts_during_refusals": 0,
                "keys_lost": lost,
                "keys_lost_max": 0,
                "rto_back_s": back["rto_s"],
            },
        )
