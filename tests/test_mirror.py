"""The live mirror against the stack's PostgreSQL: the change feed (install, remove, rights),
apply cycles (upserts, deletes, creds, legacy twins), resume, reconciliation, bad input, and
the switch installing the mirror's copy."""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from psycopg import sql

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.naming import company_dir_name
from resilience.authstate.pgconn import Conn, connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.config import Settings
from resilience.drill.stack import Stack
from resilience.errors import ConfigError, DatabaseError
from resilience.files.importer import read_directory
from resilience.files.install import install_snapshot
from resilience.files.manifest import read_manifest
from resilience.mirror import feed
from resilience.mirror import mirror as mirror_module
from resilience.mirror.commands import change_feed, mirror_status
from resilience.mirror.fallback import mirror_fallback
from resilience.mirror.health import mirror_observation
from resilience.mirror.mirror import Mirror, candidates
from resilience.mirror.position import read_position
from resilience.monitoring.monitor import Monitor
from resilience.monitoring.rules import Observed, evaluate
from resilience.monitoring.server import MonitorCollector

pytestmark = pytest.mark.stack

CREDS = {"noiseKey": {"private": b"\x01" * 32, "public": b"\x02" * 32}, "registrationId": 7}


@pytest.fixture
def feed_installed(stack: Stack) -> Iterator[None]:
    """The feed on the stack's database for one test (as the service role, the tables'
    owner), removed afterwards so other tests see the tables as deployed."""
    with connect(stack.endpoints.service_dsn) as conn:
        feed.install_feed(conn)
        conn.commit()
    yield
    with connect(stack.endpoints.service_dsn) as conn:
        feed.remove_feed(conn)
        conn.commit()


@pytest.fixture
def mirror_settings(stack: Stack, tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "service_dsn": stack.endpoints.service_dsn,
            "mirror_dir": tmp_path / "mirror",
            "snapshot_dir": tmp_path / "snapshots",
            "runs_dir": tmp_path / "runs",
            "db_connect_timeout": 5,
        }
    )


@pytest.fixture
def company(stack: Stack) -> Iterator[str]:
    cid = f"m_{uuid.uuid4().hex[:10]}"
    data = generate(cid, 60)
    with connect(stack.endpoints.admin_dsn) as conn:
        pgraw.insert_raw(conn, cid, data.creds, data.rows())
    yield cid
    with connect(stack.endpoints.admin_dsn) as conn:
        pgraw.delete_company(conn, cid)


def _db_digest(stack: Stack, company: str) -> str:
    with connect(stack.endpoints.admin_dsn) as conn:
        store = PgAuthStore(conn)
        return view_of(company, store.load_creds(company), store.records(company)).digest().digest


def _dir_digest(root: Path, company: str) -> str:
    return read_directory(root / company_dir_name(company), company).digest().digest


def _mirror(settings: Settings) -> Iterator[Mirror]:
    mirror = Mirror(settings)
    try:
        mirror.start()
        yield mirror
    finally:
        mirror.close()


@pytest.fixture
def mirror(feed_installed: None, mirror_settings: Settings, company: str) -> Iterator[Mirror]:
    yield from _mirror(mirror_settings)


# --- the feed --------------------------------------------------------------------------------
def test_feed_install_is_idempotent_and_remove_leaves_nothing(
    stack: Stack, mirror_settings: Settings
) -> None:
    try:
        dry = change_feed(mirror_settings, "install", dry_run=True)
        assert dry["before"]["installed"] is False and "after" not in dry
        first = change_feed(mirror_settings, "install", dry_run=False)
        again = change_feed(mirror_settings, "install", dry_run=False)
        assert first["after"]["installed"] and again["after"]["installed"]
        assert sorted(again["after"]["triggers"]) == sorted(feed.TRIGGER_NAMES)
        assert again["record"] and Path(again["record"], "journal.json").is_file()
        assert "s3cret" not in str(again)
    finally:
        removed = change_feed(mirror_settings, "remove", dry_run=False)
    after = removed["after"]
    assert not after["table"] and after["triggers"] == [] and after["functions"] == []


def test_feed_without_ddl_rights_names_the_privilege_and_installs_nothing(
    stack: Stack, admin: Conn, mirror_settings: Settings
) -> None:
    role = f"mirror_ro_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    admin.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )
    try:
        admin.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON whatsapp_keys, whatsapp_auth TO {}")
            .format(sql.Identifier(role))
        )  # fmt: skip
        dsn = psycopg.conninfo.make_conninfo(
            stack.endpoints.admin_dsn, user=role, password=password
        )
        settings = mirror_settings.model_copy(update={"mirror_dsn": None, "service_dsn": None})
        settings = Settings.model_validate({**settings.model_dump(), "service_dsn": dsn})
        with pytest.raises(ConfigError) as info:
            change_feed(settings, "install", dry_run=False)
        message = str(info.value)
        assert "TRIGGER on table whatsapp_keys" in message and role in message
        assert password not in message
        with connect(stack.endpoints.admin_dsn) as conn:
            status = feed.feed_status(conn)
        assert not status.table and status.triggers == [] and status.functions == []
    finally:
        admin.execute(sql.SQL("REVOKE ALL ON whatsapp_keys, whatsapp_auth FROM {}").format(
            sql.Identifier(role)))  # fmt: skip
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_feed_records_every_statement_and_pruning_empties_it(
    stack: Stack, feed_installed: None, company: str
) -> None:
    with connect(stack.endpoints.service_dsn) as conn:
        conn.execute(f"DELETE FROM {feed.CHANGES_TABLE}")
        conn.commit()
        store = PgAuthStore(conn)
        store.set_keys(company, {"session": {"1.0": {"a": b"x"}, "2.0": {"a": b"y"}}})
        store.set_keys(company, {"session": {"1.0": {"a": b"z"}, "2.0": None}})
        store.save_creds(company, CREDS)
        conn.commit()
        with conn.transaction():
            changes = feed.read_changes(conn, 100)
        mine = [(c.key_type, c.key_id) for c in changes if c.company_id == company]
        assert mine.count(("session", "1.0")) == 2 and ("session", "2.0") in mine
        assert (None, None) in mine
        assert feed.prune_changes(conn, [c.id for c in changes]) == len(changes)
        conn.commit()
        assert feed.feed_status(conn).pending_changes == 0


def test_an_update_that_moves_a_key_records_both_identities_and_an_empty_one_wakes_nobody(
    stack: Stack, feed_installed: None, company: str
) -> None:
    """The update trigger reads only the new rows: a statement that changes a key's identity
    (cleanup.legacy moves a `pre`/`key-5` row to `pre-key`/`5`) has its old identity recorded
    by the row trigger, so the mirror removes the old file too; an upsert records each key
    once; a statement that changed nothing records nothing and sends no NOTIFY. (An id far
    above the seeded ones: the seeded company has legacy rows of its own.)"""
    with (
        connect(stack.endpoints.service_dsn, autocommit=True) as listener,
        connect(stack.endpoints.service_dsn) as conn,
    ):
        conn.execute(f"DELETE FROM {feed.CHANGES_TABLE}")
        conn.commit()
        store = PgAuthStore(conn)
        store.set_keys(
            company, {"pre-key": {"999995": {"a": b"x"}}, "session": {"1.0": {"a": b"y"}}}
        )
        conn.commit()
        conn.execute(
            "UPDATE whatsapp_keys SET key_type = 'pre', key_id = 'key-999995' "
            "WHERE company_id = %s AND key_type = 'pre-key' AND key_id = '999995'",
            (company,),
        )
        store.set_keys(company, {"session": {"1.0": {"a": b"z"}}})  # an upsert that updates
        conn.commit()
        with conn.transaction():
            changes = feed.read_changes(conn, 100)
        mine = [(c.key_type, c.key_id) for c in changes if c.company_id == company]
        assert sorted(mine) == sorted(
            [("pre-key", "999995"), ("session", "1.0"), ("pre", "key-999995"),
             ("pre-key", "999995"), ("session", "1.0")]
        )  # fmt: skip
        assert feed.prune_changes(conn, [c.id for c in changes]) == len(changes)
        conn.commit()

        listener.execute(f"LISTEN {feed.CHANNEL}")
        conn.execute(
            "UPDATE whatsapp_keys SET value = value WHERE company_id = %s AND key_id = 'none'",
            (company,),
        )
        conn.execute(
            "DELETE FROM whatsapp_keys WHERE company_id = %s AND key_id = 'none'", (company,)
        )
        conn.commit()
        assert feed.feed_status(conn).pending_changes == 0
        conn.execute(
            "UPDATE whatsapp_keys SET value = value WHERE company_id = %s AND key_id = '1.0'",
            (company,),
        )
        conn.commit()
        # NOTIFYs are delivered in commit order: the one received is the last commit's
        received = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in received] == [feed.CHANNEL]
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        assert feed.feed_status(conn).pending_changes == 1


# --- applying ------------------------------------------------------------------------------------
def test_start_exports_then_every_change_is_applied_through_export_naming(
    stack: Stack, mirror: Mirror, company: str
) -> None:
    root = mirror.root
    directory = root / company_dir_name(company)
    assert _dir_digest(root, company) == _db_digest(stack, company)
    with connect(stack.endpoints.service_dsn) as conn:
        store = PgAuthStore(conn)
        store.set_keys(
            company,
            {
                "sender-key": {"123@g.us::456::0": {"k": b"\x00\xff"}},
                "app-state-sync-key": {"AAB/cd+=": {"k": b"\x01"}},
                "pre-key": {"5": None, "9001": {"k": b"\x02"}},
            },
        )
        store.save_creds(company, {**CREDS, "registrationId": 8})
        conn.commit()
    result = mirror.cycle()
    assert result.drained and result.files_written >= 3
    assert _dir_digest(root, company) == _db_digest(stack, company)
    manifest = read_manifest(directory)
    assert manifest is not None and manifest.digest == _db_digest(stack, company)
    assert manifest.files["sender-key-123@g.us--456--0.json"] == ("sender-key", "123@g.us::456::0")
    assert manifest.files["app-state-sync-key-AAB__cd+=.json"] == ("app-state-sync-key", "AAB/cd+=")
    assert "pre-key-5.json" not in os.listdir(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((directory / n).stat().st_mode) == 0o600 for n in os.listdir(directory))
    assert not [n for n in os.listdir(directory) if n.startswith(".tmp-")]
    position = read_position(root)
    assert position is not None and position.companies[company]["digest"] == manifest.digest
    assert position.confirmed_at is not None and position.state == "following"


def test_legacy_twins_resolve_as_the_export_resolves_them(
    stack: Stack, mirror: Mirror, company: str
) -> None:
    assert ("pre", "key-77") in candidates("pre-key", "77")
    with connect(stack.endpoints.admin_dsn) as conn:
        conn.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) VALUES "
            "(%s, 'pre-key', '77', '{\"v\": 1}', now() - interval '1 day'), "
            "(%s, 'pre', 'key-77', '{\"v\": 2}', now())",
            (company, company),
        )
        conn.commit()
    mirror.cycle()
    assert _dir_digest(mirror.root, company) == _db_digest(stack, company)
    manifest = read_manifest(mirror.root / company_dir_name(company))
    assert manifest is not None
    assert any(c.file_name == "pre-key-77.json" for c in manifest.collisions)
    with connect(stack.endpoints.service_dsn) as conn:
        PgAuthStore(conn).set_keys(company, {"pre-key": {"77": None}})  # deletes the twin too
        conn.commit()
    mirror.cycle()
    assert "pre-key-77.json" not in os.listdir(mirror.root / company_dir_name(company))
    assert _dir_digest(mirror.root, company) == _db_digest(stack, company)


def test_a_restarted_mirror_resumes_and_catches_up(
    stack: Stack, feed_installed: None, mirror_settings: Settings, company: str
) -> None:
    first = Mirror(mirror_settings)
    first.start()
    first.close()  # killed: changes made now wait in the change table
    with connect(stack.endpoints.service_dsn) as conn:
        PgAuthStore(conn).set_keys(company, {"session": {f"{n}.0": {"n": n} for n in range(150)}})
        conn.commit()
    second = Mirror(mirror_settings)
    try:
        result = second.start()
        assert company not in result.exported  # resumed from its directory, not re-exported
        assert result.repaired == []  # caught up from the feed, nothing left to repair
        assert _dir_digest(second.root, company) == _db_digest(stack, company)
    finally:
        second.close()


def test_reconciliation_repairs_a_row_written_with_the_triggers_off(
    stack: Stack, mirror: Mirror, company: str
) -> None:
    with connect(stack.endpoints.admin_dsn) as conn:
        conn.execute("SET session_replication_role = replica")  # triggers do not fire
        PgAuthStore(conn).set_keys(company, {"session": {"999.1": {"missed": b"\x07"}}})
        conn.commit()
    assert mirror.cycle().repaired == []  # the feed never saw it
    assert _dir_digest(mirror.root, company) != _db_digest(stack, company)
    result = mirror.cycle(reconcile=True)
    assert result.repaired == [f"{company}: session-999.1.json"]
    assert _dir_digest(mirror.root, company) == _db_digest(stack, company)
    position = read_position(mirror.root)
    assert position is not None and position.reconcile_repairs_total >= 1
    assert position.reconcile_last == result.repaired


def test_a_company_id_that_does_not_validate_is_skipped_never_a_path(
    stack: Stack, mirror: Mirror, company: str
) -> None:
    with connect(stack.endpoints.admin_dsn) as conn:
        conn.execute(
            f"INSERT INTO {feed.CHANGES_TABLE} (company_id, key_type, key_id) "
            "VALUES ('../../etc', 'session', '1.0')"
        )
        conn.commit()
    result = mirror.cycle()
    assert result.skipped == 1
    assert sorted(os.listdir(mirror.root)) == sorted(
        [company_dir_name(c) for c in mirror.companies] + ["position.json"]
    )


def test_a_full_disk_stops_applying_and_keeps_the_position(
    stack: Stack, mirror: Mirror, company: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = read_position(mirror.root)
    directory = mirror.root / company_dir_name(company)
    with connect(stack.endpoints.service_dsn) as conn:
        PgAuthStore(conn).set_keys(company, {"session": {"4242.0": {"x": 1}}})
        conn.commit()

    def full(*_args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mirror_module, "create_file", full)
    with pytest.raises(OSError):
        mirror.cycle()
    mirror._failed("write-failed", OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.undo()
    after = read_position(mirror.root)
    assert before is not None and after is not None
    assert after.confirmed_at == before.confirmed_at and after.state == "write-failed"
    assert "session-4242.0.json" not in os.listdir(directory)
    assert not [n for n in os.listdir(directory) if n.startswith(".tmp-")]
    mirror.cycle()  # the changes waited in the table
    assert _dir_digest(mirror.root, company) == _db_digest(stack, company)
    assert read_position(mirror.root).state == "following"  # type: ignore[union-attr]


def test_the_database_lost_mid_batch_leaves_the_position_at_the_last_applied(
    stack: Stack, mirror: Mirror, company: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = read_position(mirror.root)
    with connect(stack.endpoints.service_dsn) as conn:
        PgAuthStore(conn).set_keys(company, {"session": {"4343.0": {"x": 1}}})
        conn.commit()

    def lost(*_args: Any) -> None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(mirror_module, "_rows", lost)
    with pytest.raises(DatabaseError):
        mirror.cycle()
    monkeypatch.undo()
    after = read_position(mirror.root)
    assert before is not None and after is not None
    assert after.confirmed_at == before.confirmed_at
    assert after.last_change_id == before.last_change_id
    mirror.cycle()
    assert _dir_digest(mirror.root, company) == _db_digest(stack, company)


# --- the switch's side ---------------------------------------------------------------------------
def test_the_mirror_installs_as_a_snapshot_checked_against_its_manifest(
    stack: Stack, mirror: Mirror, mirror_settings: Settings, company: str, tmp_path: Path
) -> None:
    found = mirror_fallback(mirror_settings, company)
    assert found is not None and found.loss_window_s() >= 0
    result = install_snapshot(found.as_snapshot(), company, tmp_path / "auth")
    assert result.digest == _db_digest(stack, company)
    status: dict[str, Any] = mirror_status(mirror_settings)
    assert status["feed"]["installed"] and status["lag_s"] is not None
    manifest = tmp_path / "auth" / company_dir_name(company) / "manifest.json"
    manifest.write_bytes(manifest.read_bytes())  # installed copies are plain exports
    corrupt = mirror.root / company_dir_name(company) / "creds.json"
    corrupt.write_bytes(b'{"registrationId": 1}')
    with pytest.raises(Exception, match="digest mismatch"):
        install_snapshot(found.as_snapshot(), company, tmp_path / "auth2")


# --- monitoring --------------------------------------------------------------------------------
def _observed(**changes: Any) -> Observed:
    base: dict[str, Any] = {
        "slow_in_window": 0,
        "slowest_recent_ms": None,
        "pool_usage_pct": None,
        "pool_active": None,
        "pool_max": None,
        "pool_waiting": None,
        "keys_past_expiry": 0,
        "keys_past_expiry_by_company": {},
        "database_error": None,
        "metrics_error": None,
    }
    return Observed(**(base | changes))


def test_the_mirror_lag_rule_alerts_over_the_threshold() -> None:
    s = Settings()
    assert s.mirror_lag_alert == 10.0

    def rules(**kw: Any) -> set[tuple[str, str]]:
        return {(f.rule, f.severity) for f in evaluate(_observed(**kw), s)}

    assert rules() == set()
    assert rules(mirror_lag_s=9.5, mirror_state="following") == set()
    assert rules(mirror_lag_s=11, mirror_state="following") == {("mirror_lag", "warning")}
    assert rules(mirror_lag_s=11, mirror_state="write-failed") == {("mirror_lag", "critical")}
    assert rules(mirror_lag_s=61, mirror_state="following") == {("mirror_lag", "critical")}


def test_the_monitor_publishes_the_mirror_and_health_shows_it(
    stack: Stack, mirror: Mirror, mirror_settings: Settings
) -> None:
    settings = mirror_settings.model_copy(
        update={"monitor_state_file": mirror.root.parent / "monitor.json"}
    )
    monitor = Monitor(settings, alerting=False, keep_state=False)
    try:
        doc = monitor.cycle()
    finally:
        monitor.close()
    seen = doc["mirror"]
    assert doc["sources"]["mirror"] == {"state": "ok"}
    assert seen["mirror_state"] == "following" and seen["process"] == "running"
    assert seen["lag_s"] is not None and seen["pending_changes"] is not None
    assert not any(f["rule"] == "mirror_lag" for f in doc["findings"])
    registry = CollectorRegistry()
    registry.register(MonitorCollector(monitor))
    text = generate_latest(registry).decode()
    assert "baileys_monitor_mirror_lag_seconds" in text
    assert "baileys_monitor_mirror_up 1.0" in text
    later = mirror_observation(settings, None, datetime.now(UTC) + timedelta(seconds=30))
    assert later["lag_s"] > settings.mirror_lag_alert  # a mirror that stopped confirming
    off = mirror_observation(settings.model_copy(update={"mirror_dir": mirror.root / "x"}), None)
    assert off["state"] == "off"


def test_a_backup_dump_with_the_feed_restores_with_its_triggers(
    stack: Stack, feed_installed: None, company: str, admin: Conn, tmp_path: Path
) -> None:
    from resilience.backup import dump

    path = tmp_path / "auth.dump"
    dump.dump(stack.endpoints.admin_dsn, path)
    scratch = f"scratch_mirror_{uuid.uuid4().hex[:8]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        scratch_dsn = psycopg.conninfo.make_conninfo(stack.endpoints.admin_dsn, dbname=scratch)
        dump.restore(scratch_dsn, path)  # the feed's functions are created first
        with connect(scratch_dsn) as conn:
            assert feed.feed_status(conn).installed
            PgAuthStore(conn).set_keys(company, {"session": {"5.5": {"x": 1}}})
            with conn.transaction():
                changes = feed.read_changes(conn, 10)
        assert [(c.key_type, c.key_id) for c in changes] == [("session", "5.5")]
    finally:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(scratch)))


def test_a_mirror_restarted_while_the_database_is_down_keeps_its_position(
    mirror: Mirror, mirror_settings: Settings, company: str
) -> None:
    before = read_position(mirror.root)
    assert before is not None and before.confirmed_at is not None
    mirror.close()
    restarted = Mirror(mirror_settings, dsn="postgresql://u:pw-12345678@127.0.0.1:1/auth")
    with pytest.raises(DatabaseError) as info:
        restarted.start()
    restarted._failed("db-unreachable", info.value)
    after = read_position(mirror.root)
    assert after is not None and after.state == "db-unreachable"
    assert after.confirmed_at == before.confirmed_at
    assert after.companies[company] == before.companies[company]
    assert after.failing_since is not None and "pw-12345678" not in str(after.to_dict())
    found = mirror_fallback(mirror_settings, company)
    assert found is not None and found.loss_window_s() >= 0
