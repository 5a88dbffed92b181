"""`cleanup.legacy` on the embedded stack: which legacy rows are dropped and which are moved,
that the service's view (and so every digest) stays the same, one transaction per company, and
the task's output and refusals."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from task_runner import run_task

import resilience.maintenance.legacy as legacy
from resilience.authstate import pgraw
from resilience.authstate.codec import Style
from resilience.authstate.dataset import generate
from resilience.authstate.model import KeyRecord
from resilience.authstate.pgconn import Conn
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.config import Settings, load_settings
from resilience.drill.stack import Stack
from resilience.errors import PartialFailure
from tasks import cleanup as cleanup_tasks

pytestmark = pytest.mark.stack

NOW = datetime.now(UTC).replace(microsecond=0)
GROUP = "120363012345678901@g.us"


@pytest.fixture
def operator(stack: Stack, tmp_path: Path) -> Settings:
    return load_settings(
        env_file=None,
        service_dsn=stack.endpoints.service_dsn,
        runs_dir=tmp_path / "runs",
        db_connect_timeout=5,
    )


def key(
    company: str, key_type: str, key_id: str, days: float, value: Any = None, style: Style = "array"
) -> tuple[KeyRecord, Style]:
    updated = NOW - timedelta(days=days)
    return (
        KeyRecord(
            company, key_type, key_id, value or {"v": f"{key_type}/{key_id}".encode()}, updated
        ),
        style,
    )


def legacy_fixture(company: str) -> list[tuple[KeyRecord, Style]]:
    """Every case of the rule, legacy rows in Baileys' base64 form as migrated from files."""
    return [
        key(company, "pre-key", "5", 1),
        key(company, "pre", "key-5", 3, style="base64"),  # older than its twin: dropped
        key(company, "pre-key", "6", 5),
        key(company, "pre", "key-6", 1, style="base64"),  # newer: moved
        key(company, "pre", "key-7", 2, style="base64"),  # no twin: moved
        key(company, "pre-key", "8", 2),
        key(company, "pre", "key-8", 2, style="base64"),  # as new: dropped
        key(company, "app", "state-sync-key-AAAAAQ==", 4, style="base64"),  # no twin: moved
        key(company, "app-state-sync-version", "regular", 1),
        key(company, "app", "state-sync-version-regular", 6, style="base64"),  # older: dropped
        key(company, "sender", f"key-memory-{GROUP}", 2, style="base64"),  # moved
        key(company, "sender", f"key-{GROUP}::79001234567::0", 2, style="base64"),  # moved
        key(company, "lid", "mapping-79001234567_reverse", 3, style="base64"),  # moved
        key(company, "pre", "foo", 3),  # maps to no known type: unresolved, left alone
        key(company, "session", "79001234567.0", 1),  # not legacy
    ]


def raw_rows(conn: Conn, company: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT key_type, key_id, value::text, created_at, updated_at, expires_at "
        "FROM whatsapp_keys WHERE company_id = %s",
        (company,),
    ).fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def view_digest(store: PgAuthStore, company: str) -> str:
    return view_of(company, store.load_creds(company), store.records(company)).digest().digest


def creds_row(conn: Conn, company: str) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT creds, created_at, updated_at FROM whatsapp_auth WHERE company_id = %s",
        (company,),
    ).fetchone()


EXPECTED_ACTIONS = {
    ("pre", "key-5"): ("drop", ("pre-key", "5")),
    ("pre", "key-6"): ("move", ("pre-key", "6")),
    ("pre", "key-7"): ("move", ("pre-key", "7")),
    ("pre", "key-8"): ("drop", ("pre-key", "8")),
    ("app", "state-sync-key-AAAAAQ=="): ("move", ("app-state-sync-key", "AAAAAQ==")),
    ("app", "state-sync-version-regular"): ("drop", ("app-state-sync-version", "regular")),
    ("sender", f"key-memory-{GROUP}"): ("move", ("sender-key-memory", GROUP)),
    ("sender", f"key-{GROUP}::79001234567::0"): (
        "move",
        ("sender-key", f"{GROUP}::79001234567::0"),
    ),
    ("lid", "mapping-79001234567_reverse"): ("move", ("lid-mapping", "79001234567_reverse")),
}


def test_report_names_every_legacy_row_and_changes_nothing(
    operator: Settings, store: PgAuthStore, company: str, admin: Conn
) -> None:
    pgraw.insert_raw(store.conn, company, {"me": b"x"}, legacy_fixture(company))
    before = raw_rows(admin, company)
    run = legacy.cleanup_legacy(operator, company_id=company)
    data = run.to_dict()
    assert data["dry_run"] is True
    (found,) = data["companies"]
    actions = {
        (r["key_type"], r["key_id"]): (r["action"], (r["real_type"], r["real_id"]))
        for r in found["rows"]
    }
    assert actions == EXPECTED_ACTIONS
    assert found["by_type"] == {"app": 2, "lid": 1, "pre": 4, "sender": 2}
    assert (found["drop"], found["move"]) == (3, 6)
    assert found["unresolved"] == [{"key_type": "pre", "key_id": "foo"}]
    assert found["purged"] is False
    assert raw_rows(admin, company) == before
    assert run.record is not None


def test_purge_drops_older_legacy_rows_and_moves_newer_ones(
    operator: Settings, store: PgAuthStore, company: str, admin: Conn
) -> None:
    pgraw.insert_raw(store.conn, company, {"me": b"x"}, legacy_fixture(company))
    before = raw_rows(admin, company)
    digest = view_digest(store, company)
    creds = creds_row(admin, company)
    run = legacy.cleanup_legacy(operator, company_id=company, yes=True)
    assert run.to_dict()["companies"][0]["purged"] is True
    after = raw_rows(admin, company)
    for (legacy_type, legacy_id), (action, real) in EXPECTED_ACTIONS.items():
        assert (legacy_type, legacy_id) not in after
        if action == "move":  # value and timestamps of the legacy row, under the real name
            assert after[real] == before[(legacy_type, legacy_id)]
        else:  # the real row as it was
            assert after[real] == before[real]
    untouched = set(before) - set(EXPECTED_ACTIONS) - {r for _, r in EXPECTED_ACTIONS.values()}
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    assert ("pre", "foo") in after  # unresolved: left alone
    assert len(after) == len(before) - 9 + 5  # nine legacy rows gone, five under new names
    assert view_digest(store, company) == digest  # what Baileys sees did not change
    assert creds_row(admin, company) == creds  # whatsapp_auth untouched
    again = legacy.cleanup_legacy(operator, company_id=company, yes=True)
    assert again.to_dict()["legacy"] == 0  # nothing left to do


def test_purge_of_a_generated_tenant_keeps_its_digest(
    operator: Settings, store: PgAuthStore, company: str, admin: Conn
) -> None:
    data = generate(company, 300, legacy=8)
    pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    digest = view_digest(store, company)
    run = legacy.cleanup_legacy(operator, company_id=company, yes=True)
    assert run.to_dict()["legacy"] == 8
    assert view_digest(store, company) == digest
    left = admin.execute(
        "SELECT count(*) FROM whatsapp_keys WHERE company_id = %s AND key_type = 'pre'",
        (company,),
    ).fetchone()
    assert left == (0,)


def test_one_transaction_per_company(
    operator: Settings,
    store: PgAuthStore,
    company: str,
    admin: Conn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A company whose purge fails keeps every row; the others are purged."""
    other = f"t_{uuid.uuid4().hex[:12]}"
    try:
        pgraw.insert_raw(store.conn, company, {"me": b"x"}, legacy_fixture(company))
        pgraw.insert_raw(
            store.conn,
            other,
            {"me": b"y"},
            [key(other, "pre-key", "5", 1), key(other, "pre", "key-5", 3, style="base64")],
        )
        before = raw_rows(admin, company)
        monkeypatch.setattr(legacy, "_MOVE", legacy._MOVE.replace("SELECT", "SELEKT", 1))
        with pytest.raises(PartialFailure) as failed:
            legacy.cleanup_legacy(operator, yes=True)
        assert failed.value.exit_code == 6
        assert f"company {company}" in str(failed.value) and other not in str(failed.value)
        assert raw_rows(admin, company) == before  # rolled back as a whole
        assert set(raw_rows(admin, other)) == {("pre-key", "5")}
        assert failed.value.details is not None
        assert company in failed.value.details["failures"]
    finally:
        pgraw.delete_company(store.conn, other)


def test_task_reports_then_purges(
    stack: Stack,
    store: PgAuthStore,
    company: str,
    admin: Conn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pgraw.insert_raw(store.conn, company, {"me": b"x"}, legacy_fixture(company))
    env = {
        "RESILIENCE_SERVICE_DSN": stack.endpoints.service_dsn,
        "RESILIENCE_RUNS_DIR": str(tmp_path / "runs"),
    }
    code, out, err = run_task(
        cleanup_tasks.legacy, env, tmp_path, monkeypatch, capsys, company=company, json=True
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and (doc["drop"], doc["move"], doc["unresolved"]) == (3, 6, 1)
    code, out, err = run_task(
        cleanup_tasks.legacy, env, tmp_path, monkeypatch, capsys, company=company, yes=True
    )
    assert code == 0, err
    assert "3 legacy rows dropped, 6 moved then dropped" in out and "run record:" in out
    assert stack.endpoints.service_dsn not in out + err
    remaining = admin.execute(
        "SELECT count(*) FROM whatsapp_keys WHERE company_id = %s AND key_type = ANY(%s)",
        (company, list(legacy.LEGACY_TYPES)),
    ).fetchone()
    assert remaining == (1,)  # pre/foo
