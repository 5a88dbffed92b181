"""Backups against the embedded stack: real pg_dump/pg_restore, moto's S3 with one bucket per
region, the Sentry fake. Each test gets buckets of its own, so listings are its own."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from task_runner import run_task

from resilience.authstate import pgraw
from resilience.authstate.bufferform import count_forms
from resilience.authstate.dataset import generate
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.backup import dump as pgdump
from resilience.backup.catalog import list_region
from resilience.backup.manifest import BackupManifest, dump_key
from resilience.backup.restore import restore_backup
from resilience.backup.retention import Retention
from resilience.backup.take import take_backup
from resilience.backup.validate import validate
from resilience.backup.verify import restore_dsn
from resilience.config import Settings, settings_as_env
from resilience.drill.fakes.receivers import ReceiverClient
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import backup_settings as backup_settings_for
from resilience.errors import ConfigError, DataError, InputError, PartialFailure, VerificationError
from resilience.infra.s3 import regions_from_settings
from tasks import backup as backup_tasks

pytestmark = pytest.mark.stack


@pytest.fixture
def companies(stack: Stack) -> Iterator[list[str]]:
    made = [f"bk_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with connect(stack.endpoints.admin_dsn) as conn:
        store = PgAuthStore(conn)
        for company in made:
            data = generate(company, 80)
            pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    yield made
    with connect(stack.endpoints.admin_dsn) as conn:
        for company in made:
            pgraw.delete_company(conn, company)


@pytest.fixture
def backup_settings(stack: Stack, tmp_path: Path) -> Settings:
    """The operator's settings for backups on this stack, with fresh buckets."""
    alerts = Settings.model_validate({"sentry_dsn": stack.endpoints.sentry_dsn})
    return backup_settings_for(stack, alerts, tmp_path)


@pytest.fixture
def bounded(backup_settings: Settings) -> Settings:
    """Short S3 bounds, so a region that hangs costs seconds (moto answers well within them)."""
    return backup_settings.model_copy(
        update={
            "s3_connect_timeout": 2.0,
            "s3_read_timeout": 3.0,
            "s3_max_attempts": 2,
            "s3_region_timeout": 30.0,
        }
    )


def _sentry(stack: Stack, match: Any) -> dict[str, Any]:
    ep = stack.endpoints
    assert ep.receivers_url is not None
    with ReceiverClient(ep.receivers_url) as receivers:
        return receivers.wait_for("sentry", match, 15)


def _digests(stack: Stack, companies: list[str]) -> dict[str, str]:
    with connect(stack.endpoints.admin_dsn) as conn:
        store = PgAuthStore(conn)
        return {
            c: view_of(c, store.load_creds(c), store.records(c)).digest().digest for c in companies
        }


def test_a_backup_lands_in_both_regions_and_validates(
    stack: Stack, companies: list[str], backup_settings: Settings
) -> None:
    run = take_backup(backup_settings)
    assert [(r.region, r.ok) for r in run.regions] == [("moscow", True), ("eu", True)]
    manifest = run.manifest
    assert manifest.kind == "monthly"  # the first backup ever
    assert manifest.client_version >= manifest.server_version
    expected = _digests(stack, companies)
    assert {c: manifest.companies[c].digest for c in companies} == expected
    for store in regions_from_settings(backup_settings):
        listing = list_region(store)
        assert [m.id for m in listing.manifests] == [manifest.id]
        assert listing.orphans == []
    second = take_backup(backup_settings)
    assert second.manifest.kind == "daily" or second.manifest.kind == "hourly"
    assert second.manifest.previous_id == manifest.id

    checked = validate(backup_settings)
    assert checked.ok and checked.retaken is None
    assert {c.region for c in checked.checks} == {"moscow", "eu"}
    lines = backup_settings.backup_validation_log.read_text().splitlines()
    assert len(lines) == len(checked.checks) and all(json.loads(x)["valid"] for x in lines)
    assert checked.record is not None and (checked.record / "journal.json").is_file()


def test_a_corrupt_and_a_truncated_backup_are_found_retaken_and_alerted(
    stack: Stack, companies: list[str], backup_settings: Settings
) -> None:
    first = take_backup(backup_settings).manifest
    moscow, eu = regions_from_settings(backup_settings)
    body = bytearray(moscow.get_bytes(dump_key(first.id)))
    body[len(body) // 2] ^= 0xFF
    moscow.put_bytes(dump_key(first.id), bytes(body))
    eu.put_bytes(dump_key(first.id), bytes(body[: len(body) // 3]))
    with pytest.raises(VerificationError) as info:
        validate(backup_settings)
    assert info.value.exit_code == 5
    details = info.value.details or {}
    bad = {c["region"]: c["error"] for c in details["checks"] if not c["valid"]}
    assert "corrupt" in bad["moscow"] and "truncated" in bad["eu"]
    retaken = details["retaken"]
    assert retaken and retaken != first.id
    assert all(list_region(s).manifests[0].id == retaken for s in (moscow, eu))
    ep = stack.endpoints
    assert ep.receivers_url is not None
    with ReceiverClient(ep.receivers_url) as receivers:
        event = receivers.wait_for(
            "sentry", lambda r: first.id in (r.get("message") or "") and r["level"] == "error", 15
        )
    assert "backup validation FAILED" in (event["message"] or "")


def test_one_region_down_the_other_gets_it_and_it_is_caught_up(
    stack: Stack, companies: list[str], backup_settings: Settings
) -> None:
    down = backup_settings.model_copy(update={"s3_endpoint_moscow": "http://127.0.0.1:9"})
    with pytest.raises(PartialFailure) as info:
        take_backup(down)
    assert info.value.exit_code == 6 and "missed moscow" in str(info.value)
    moscow, eu = regions_from_settings(backup_settings)
    assert len(list_region(eu).manifests) == 1
    assert list_region(moscow).manifests == []
    later = take_backup(backup_settings)  # the region is back: caught up, then the new one
    caught = next(r for r in later.regions if r.region == "moscow").caught_up
    assert caught == [list_region(eu).manifests[-1].id]
    assert len(list_region(moscow).manifests) == 2
    assert not any(backup_settings.backup_spool_dir.iterdir())


def test_one_company_is_restored_and_the_others_are_untouched(
    stack: Stack, companies: list[str], backup_settings: Settings
) -> None:
    bad, good = companies
    manifest = take_backup(backup_settings).manifest
    with connect(stack.endpoints.admin_dsn) as conn:  # scenario 2 and 3 at once for `bad`
        conn.execute("UPDATE whatsapp_auth SET creds = '{}'::jsonb WHERE company_id = %s", (bad,))
        conn.execute(
            "DELETE FROM whatsapp_keys WHERE company_id = %s AND key_id IN (SELECT key_id FROM "
            "whatsapp_keys WHERE company_id = %s ORDER BY key_id LIMIT 30)",
            (bad, bad),
        )
        conn.execute(
            'UPDATE whatsapp_keys SET value = \'{"type":"Buffer","data":"%%%%"}\'::jsonb '
            "WHERE company_id = %s AND key_type = 'session'",
            (bad,),
        )
        conn.commit()
    good_before = _digests(stack, [good])
    preview = restore_backup(backup_settings, company=bad)
    assert preview.mode == "company-preview"
    assert preview.change is not None
    assert preview.change["added"] == 30 and preview.change["creds_changed"] is True
    assert preview.change["changed"] > 0
    with pytest.raises(DataError):
        _digests(stack, [bad])  # still corrupt: the preview changed nothing
    done = restore_backup(backup_settings, company=bad, yes=True)
    assert done.mode == "company"
    assert _digests(stack, [bad]) == {bad: manifest.companies[bad].digest}
    assert _digests(stack, [good]) == good_before
    # every row written in one Buffer form: auto, the form most of the live rows used
    assert done.buffer_form is not None and done.buffer_form["setting"] == "auto"
    with connect(stack.endpoints.admin_dsn) as conn:
        assert count_forms(conn, bad).unreadable(done.buffer_form["form"]) == {}
    # pinned: base64, as a service on Baileys' BufferJSON reads it
    base64 = backup_settings.model_copy(update={"db_buffer_form": "base64"})
    again = restore_backup(base64, company=bad, yes=True)
    assert again.buffer_form is not None and again.buffer_form["form"] == "base64"
    with connect(stack.endpoints.admin_dsn) as conn:
        counts = count_forms(conn, bad)
    assert counts.unreadable("base64") == {} and counts.rows["base64"] > 0
    assert _digests(stack, [bad]) == {bad: manifest.companies[bad].digest}


def test_a_restore_into_a_scratch_database_is_verified(
    companies: list[str], backup_settings: Settings
) -> None:
    manifest = take_backup(backup_settings).manifest
    done = restore_backup(backup_settings, backup_id=manifest.id, region="eu")
    assert done.verified["mismatches"] == [] and done.verified["companies"] >= 2
    with pytest.raises(InputError, match="no backup with id"):
        restore_backup(backup_settings, backup_id="20000101T000000000000Z")
    with pytest.raises(InputError, match="unknown or unconfigured region"):
        restore_backup(backup_settings, region="mars")


def test_bad_configuration_is_one_clear_line(backup_settings: Settings) -> None:
    wrong = backup_settings.model_copy(update={"s3_secret_access_key": SecretStr("not-the-secret")})
    with pytest.raises(PartialFailure):  # moto accepts any key; the bucket is what matters
        take_backup(wrong.model_copy(update={"s3_bucket_eu": "no-such-bucket-here"}))
    with pytest.raises(ConfigError, match="older than the server"):
        pgdump.check_client_version(14, 15, Path("pg_dump"))
    with pytest.raises(ConfigError, match="RESTORE_DSN"):
        restore_dsn(backup_settings.model_copy(update={"restore_dsn": None}))


def test_manifest_parsing_refuses_what_it_cannot_trust() -> None:
    with pytest.raises(DataError, match="not JSON"):
        BackupManifest.from_json(b"{", "x")
    with pytest.raises(DataError, match="format"):
        BackupManifest.from_json(b'{"format": 9}', "x")


def test_retention_keeps_grandfathers_fathers_and_sons() -> None:
    hours = [f"202611{d:02d}T{h:02d}0000000000Z" for d in range(1, 31) for h in (0, 6, 12, 18)]
    months = [f"2026{m:02d}01T000000000000Z" for m in range(1, 11)]
    ids = months + hours
    kept = Retention(hourly=5, daily=3, monthly=2).keep(ids)
    assert set(sorted(hours)[-5:]) <= kept  # sons: the newest
    days = {f"202611{d}T000000000000Z" for d in (28, 29, 30)}
    assert days <= kept  # fathers: the first of each of the newest days
    assert {"20261101T000000000000Z", "20261001T000000000000Z"} <= kept  # grandfathers
    assert "20260901T000000000000Z" not in kept
    assert Retention(0, 0, 0).keep(ids) == {max(ids)}  # the newest always stays


def test_restore_refuses_a_filled_target_and_a_time_before_the_oldest(
    stack: Stack, companies: list[str], backup_settings: Settings
) -> None:
    from datetime import UTC, datetime

    manifest = take_backup(backup_settings).manifest
    with pytest.raises(InputError, match="already has auth tables: --yes"):
        restore_backup(backup_settings, target_dsn=stack.endpoints.service_dsn)
    with pytest.raises(InputError, match=f"the oldest is {manifest.id}"):
        restore_backup(backup_settings, at=datetime(2000, 1, 1, tzinfo=UTC))
    found = restore_backup(backup_settings, at=datetime.now(UTC))
    assert found.backup["id"] == manifest.id


def test_the_monthly_restore_test_verifies_every_key_and_reports(
    stack: Stack, companies: list[str], backup_settings: Settings, tmp_path: Path
) -> None:
    from resilience.backup.restore import test_restore as monthly

    manifest = take_backup(backup_settings).manifest
    telegram = backup_settings.model_copy(
        update={
            "telegram_api_url": stack.endpoints.telegram_api_url,
            "telegram_bot_token": SecretStr(stack.endpoints.telegram_bot_token or ""),
            "telegram_chat_id": stack.endpoints.telegram_chat_id,
        }
    )
    result = monthly(telegram, report_dir=tmp_path / "reports")
    assert result["ok"] and result["within_target"]
    assert result["verified"]["keys"] == sum(c.key_count for c in manifest.companies.values())
    report = Path(result["report"])
    assert json.loads(report.read_text())["backup"]["id"] == manifest.id
    assert report.stat().st_mode & 0o777 == 0o600
    ep = stack.endpoints
    assert ep.receivers_url is not None
    with ReceiverClient(ep.receivers_url) as receivers:
        sent = receivers.wait_for("telegram", lambda r: manifest.id in r.get("text", ""), 15)
    assert "ok" in sent["text"]


def test_a_hanging_region_is_alerted_and_caught_up_while_the_other_is_backed_up(
    stack: Stack, companies: list[str], bounded: Settings, hanging_endpoint: str
) -> None:
    hung = bounded.model_copy(update={"s3_endpoint_moscow": hanging_endpoint})
    with pytest.raises(PartialFailure) as info:
        take_backup(hung)
    assert info.value.exit_code == 6 and "missed moscow" in str(info.value)
    details = info.value.details or {}
    backup_id = details["backup"]["id"]
    assert info.value.record is not None and "record" not in details  # its JSON shows the record
    outcome = {r["region"]: r for r in details["regions"]}
    assert outcome["eu"]["ok"] and not outcome["moscow"]["ok"]
    assert outcome["moscow"]["error"].startswith("region moscow (")
    assert f"no answer from {hanging_endpoint}" in outcome["moscow"]["error"]
    moscow, eu = regions_from_settings(bounded)
    assert [m.id for m in list_region(eu).manifests] == [backup_id]
    pending = bounded.backup_spool_dir / backup_id / "pending"
    assert pending.read_text().split() == ["moscow"]
    event = _sentry(stack, lambda r: backup_id in (r.get("message") or ""))
    assert "region moscow missed the backup" in (event["message"] or "")

    later = take_backup(bounded)  # the region answers again: caught up, then the new one
    caught = next(r for r in later.regions if r.region == "moscow").caught_up
    assert caught == [backup_id]
    assert [m.id for m in list_region(moscow).manifests] == [later.manifest.id, backup_id]
    assert not any(bounded.backup_spool_dir.iterdir())


@pytest.mark.parametrize("fault", ["hanging", "refusing"])
def test_validate_reports_an_unreachable_region_and_retakes_nothing(
    stack: Stack,
    companies: list[str],
    bounded: Settings,
    fault: str,
    request: pytest.FixtureRequest,
) -> None:
    endpoint = request.getfixturevalue(f"{fault}_endpoint")
    first = take_backup(bounded).manifest
    cut = bounded.model_copy(update={"s3_endpoint_moscow": endpoint})
    with pytest.raises(PartialFailure) as info:
        validate(cut)
    assert info.value.exit_code == 6
    assert "nothing re-taken" in str(info.value) and "moscow" in str(info.value)
    details = info.value.details or {}
    statuses = {(c["region"], c["status"]) for c in details["checks"]}
    assert statuses == {("eu", "valid"), ("moscow", "unreachable")}
    assert details["unreachable"] == ["moscow"] and details["invalid"] == []
    assert details["retaken"] is None
    assert info.value.record is not None and "record" not in details  # its JSON shows the record
    moscow, eu = regions_from_settings(bounded)
    assert [m.id for m in list_region(eu).manifests] == [first.id]  # nothing re-taken
    assert [m.id for m in list_region(moscow).manifests] == [first.id]
    assert not bounded.backup_spool_dir.exists() or not any(bounded.backup_spool_dir.iterdir())
    logged = [json.loads(x) for x in bounded.backup_validation_log.read_text().splitlines()]
    assert {(x["region"], x["status"], x["valid"]) for x in logged} == {
        ("eu", "valid", True),
        ("moscow", "unreachable", False),
    }
    event = _sentry(
        stack,
        lambda r: (
            "backup validation FAILED" in (r.get("message") or "")
            and endpoint in (r.get("message") or "")
        ),
    )
    assert event["level"] == "error" and "moscow unreachable: region moscow (" in event["message"]


@pytest.mark.parametrize("as_json", [False, True])
def test_list_reports_a_hanging_region_beside_the_other(
    stack: Stack,
    companies: list[str],
    bounded: Settings,
    hanging_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    as_json: bool,
) -> None:
    taken = take_backup(bounded).manifest
    env = settings_as_env(bounded.model_copy(update={"s3_endpoint_moscow": hanging_endpoint}))
    code, out, err = run_task(backup_tasks.list_, env, tmp_path, monkeypatch, capsys, json=as_json)
    assert code == 6
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: 1 region(s) could not be listed (listed: eu): region moscow (")
    if as_json:  # one document
        doc = json.loads(out)
        assert doc["ok"] is False and doc["exit_code"] == 6
        assert doc["regions"]["moscow"]["state"] == "unreachable"
        assert f"no answer from {hanging_endpoint}" in doc["regions"]["moscow"]["error"]
        assert doc["regions"]["eu"]["state"] == "ok"
        assert [b["id"] for b in doc["regions"]["eu"]["backups"]] == [taken.id]
    else:  # the region that answered as a table, the other named unreachable
        assert not out.lstrip().startswith("{")
        assert "region moscow: UNREACHABLE (" in out and f"no answer from {hanging_endpoint}" in out
        assert "region eu: 1 backup(s)" in out and taken.id in out
    assert bounded.s3_secret_access_key is not None
    assert bounded.s3_secret_access_key.get_secret_value() not in out + err


def test_restore_refuses_an_id_and_a_time_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_task(
        backup_tasks.restore, {}, tmp_path, monkeypatch, capsys,
        id="20260101T000000000000Z", at="2026-01-02T00:00:00",
    )  # fmt: skip
    assert code == 2
    assert err.strip() == "error: --id and --at both pick the backup: give one"


def test_backup_tasks_print_tables_for_people_and_json_with_the_flag(
    stack: Stack,
    companies: list[str],
    backup_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """backup.run, backup.list, backup.validate and backup.test-restore: tables and lines for
    people by default, the same JSON documents as before with --json."""
    env = settings_as_env(backup_settings)

    def human(task: Any) -> str:
        code, out, err = run_task(task, env, tmp_path, monkeypatch, capsys)
        assert code == 0, err
        assert not out.lstrip().startswith("{") and "Traceback" not in out + err
        return out

    def document(task: Any) -> dict[str, Any]:
        code, out, err = run_task(task, env, tmp_path, monkeypatch, capsys, json=True)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["ok"] is True
        return dict(doc)

    out = human(backup_tasks.run)
    first = list_region(regions_from_settings(backup_settings)[0]).manifests[0]
    assert f"backup {first.id} (monthly)" in out
    assert re.search(r"moscow\s*│\s*uploaded", out) and re.search(r"eu\s*│\s*uploaded", out)
    doc = document(backup_tasks.run)
    assert set(doc) == {"ok", "backup", "regions", "warnings", "duration_s", "record"}
    assert [(r["region"], r["ok"]) for r in doc["regions"]] == [("moscow", True), ("eu", True)]
    second = doc["backup"]["id"]

    out = human(backup_tasks.list_)
    assert "region moscow: 2 backup(s)" in out and "region eu: 2 backup(s)" in out
    assert first.id in out and second in out and "not yet" in out
    doc = document(backup_tasks.list_)
    assert set(doc) == {"ok", "regions"}
    assert [b["id"] for b in doc["regions"]["eu"]["backups"]] == [second, first.id]

    out = human(backup_tasks.validate)
    assert "backup validation" in out and "all " in out and " backup(s) valid" in out
    assert re.search(r"moscow\s*│\s*monthly\s*│\s*" + first.id + r"\s*│\s*valid", out)
    doc = document(backup_tasks.validate)
    assert set(doc) == {"ok", "valid", "checks", "invalid", "unreachable", "retaken", "record"}
    assert doc["valid"] is True and {c["region"] for c in doc["checks"]} == {"moscow", "eu"}
    assert "valid" in human(backup_tasks.list_)  # the last validation beside each backup

    out = human(backup_tasks.test_restore)
    assert f"restore test of backup {second} " in out and ": ok, " in out
    assert re.search(r"verified: \d+ keys of \d+ companies", out)
    doc = document(backup_tasks.test_restore)
    assert doc["backup"]["id"] == second and doc["within_target"] is True
    assert {"region", "duration_s", "target_s", "verified", "error", "report", "record"} <= set(doc)
