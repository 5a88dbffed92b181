"""`diagnose` under bad input, against the embedded stack: an unknown company, S3 that does not
answer, manifests of an older format, a role without rights, a wrong password, a DSN pointing at
an HTTP server, at port 70000 or at a host that does not resolve, an unreachable database. Each
is said plainly (a warning, a note, a ConfigError naming what to fix), never a traceback and
never a scenario it is not."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr
from task_runner import run_task

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.pgconn import connect
from resilience.backup.catalog import list_region
from resilience.backup.manifest import PREFIX, manifest_key
from resilience.backup.take import take_backup
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import Settings, settings_as_env
from resilience.diagnose.tree import diagnose
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import backup_settings
from resilience.errors import ConfigError, InputError
from resilience.infra.processes import free_port
from resilience.infra.s3 import regions_from_settings
from tasks import diagnose as diagnose_task

pytestmark = pytest.mark.stack


@pytest.fixture
def company(stack: Stack) -> Iterator[str]:
    """A seeded company of this test's own (so the tables hold rows), deleted afterwards."""
    cid = f"dg_{uuid.uuid4().hex[:10]}"
    data = generate(cid, 60)
    with connect(stack.endpoints.admin_dsn) as conn:
        pgraw.insert_raw(conn, cid, data.creds, data.rows())
    yield cid
    with connect(stack.endpoints.admin_dsn) as conn:
        pgraw.delete_company(conn, cid)


@pytest.fixture
def operator(stack: Stack, tmp_path: Path) -> Settings:
    """The operator's settings: the service DSN and both regions, in fresh buckets."""
    return backup_settings(stack, None, tmp_path)


def _task(
    settings: Settings,
    work: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    **flags: Any,
) -> tuple[int, str, str]:
    return run_task(
        diagnose_task.diagnose, settings_as_env(settings), work, monkeypatch, capsys, **flags
    )


def test_a_healthy_company_is_scenario_0_and_the_task_says_so_in_json(
    stack: Stack,
    company: str,
    operator: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backup = take_backup(operator).manifest
    found = diagnose(operator, company)
    assert (found.scenario, found.exit_code, found.next_command) == (0, 0, None)
    assert found.warnings == []
    [check] = found.completeness
    assert check.backup_id == backup.id and check.note is None and not check.missing
    code, out, err = _task(operator, tmp_path, monkeypatch, capsys, company=company, json=True)
    doc = json.loads(out)
    assert code == 0, err
    assert doc["ok"] is True and doc["scenario"] == 0 and doc["exit_code"] == 0
    assert doc["title"] == "healthy" and doc["company_id"] == company
    assert {r["state"] for r in doc["exposure"]["regions"].values()} == {"ok"}


def test_an_unknown_company_is_input_error_and_exit_2(
    company: str,
    operator: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(InputError, match="unknown company 'nobody_here'"):
        diagnose(operator, "nobody_here")
    code, out, err = _task(operator, tmp_path, monkeypatch, capsys, company="nobody_here")
    assert code == 2 and "unknown company 'nobody_here'" in err
    assert "Traceback" not in out + err
    code, out, _ = _task(operator, tmp_path, monkeypatch, capsys, company="nobody_here", json=True)
    assert code == 2 and json.loads(out)["exit_code"] == 2


def test_unreachable_s3_is_said_plainly_and_the_comparison_skipped(
    company: str, operator: Settings
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cut = operator.model_copy(update={"s3_endpoint_moscow": closed, "s3_endpoint_eu": closed})
    found = diagnose(cut, company)
    assert found.scenario == 0 and found.exit_code == 0
    regions = found.to_dict()["exposure"]["regions"]
    assert {name: info["state"] for name, info in regions.items()} == {
        "moscow": "unreachable",
        "eu": "unreachable",
    }
    assert any(w.startswith("region moscow unreachable") for w in found.warnings)
    assert any(w.startswith("region eu unreachable") for w in found.warnings)
    assert "no backup could be read: completeness not compared" in found.warnings
    [check] = found.completeness
    assert check.backup_id is None and not check.missing


def test_one_region_unreachable_compares_with_the_other(
    stack: Stack, company: str, operator: Settings
) -> None:
    backup = take_backup(operator).manifest
    with (
        ToxiproxyClient(stack.endpoints.toxiproxy_url) as toxiproxy,
        faults.proxy_disabled(toxiproxy, stack.endpoints.s3_proxies["moscow"]),
    ):
        found = diagnose(operator, company)
    assert found.scenario == 0
    assert [w.split(":")[0] for w in found.warnings] == ["region moscow unreachable"]
    assert found.completeness[0].backup_id == backup.id  # compared against the EU copy


def _rewrite_manifests(settings: Settings, backup_id: str, change: Any) -> None:
    for store in regions_from_settings(settings):
        doc = json.loads(store.get_bytes(manifest_key(backup_id)))
        change(doc)
        store.put_bytes(manifest_key(backup_id), json.dumps(doc).encode())


def test_a_manifest_without_counts_per_type_is_compared_by_totals(
    stack: Stack, company: str, operator: Settings
) -> None:
    backup = take_backup(operator).manifest

    def older(doc: dict[str, Any]) -> None:  # as written before counts per type were recorded
        for digest in doc["companies"].values():
            digest.pop("by_type")
            digest.pop("has_creds")

    _rewrite_manifests(operator, backup.id, older)
    found = diagnose(operator, company)
    [check] = found.completeness
    assert found.scenario == 0
    assert check.backup_by_type is None
    assert check.backup_total == backup.companies[company].key_count
    assert check.note == "the backup's manifest predates counts per type: totals compared"
    with connect(stack.endpoints.admin_dsn, autocommit=True) as admin:  # 40 % of its keys gone
        admin.execute(
            "DELETE FROM whatsapp_keys WHERE ctid IN (SELECT ctid FROM whatsapp_keys"
            " WHERE company_id = %s ORDER BY key_type, key_id"
            " LIMIT (SELECT count(*) * 4 / 10 FROM whatsapp_keys WHERE company_id = %s))",
            (company, company),
        )
    found = diagnose(operator, company)
    assert (found.scenario, found.exit_code) == (3, 13)
    assert [d["type"] for d in found.completeness[0].drops] == ["(all types)"]
    assert found.next_command is not None and f"--id {backup.id}" in found.next_command


def test_a_manifest_of_format_0_is_listed_unreadable_not_a_crash(
    company: str, operator: Settings
) -> None:
    backup = take_backup(operator).manifest
    later = "29990101T000000000000Z"  # newer than any real one: it would be read first
    for store in regions_from_settings(operator):
        doc = json.loads(store.get_bytes(manifest_key(backup.id)))
        doc.update(id=later, format=0)
        store.put_bytes(manifest_key(later), json.dumps(doc).encode())
        assert list_region(store).unreadable == [f"{PREFIX}/{later}/manifest.json"]
    found = diagnose(operator, company)
    assert found.scenario == 0 and found.warnings == []
    regions = found.to_dict()["exposure"]["regions"]
    assert {info["unreadable_manifests"] for info in regions.values()} == {1}
    assert {info["newest"]["id"] for info in regions.values()} == {backup.id}
    assert found.completeness[0].backup_id == backup.id


@pytest.fixture
def narrow_role(stack: Stack) -> Iterator[str]:
    """A DSN whose role may connect and read whatsapp_auth, but not whatsapp_keys."""
    admin_dsn = stack.endpoints.admin_dsn
    role, password = f"diag_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    database = conninfo_to_dict(admin_dsn).get("dbname") or "postgres"
    with connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        admin.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(str(database)), sql.Identifier(role)
            )
        )
        admin.execute(sql.SQL("GRANT SELECT ON whatsapp_auth TO {}").format(sql.Identifier(role)))
    yield make_conninfo(admin_dsn, user=role, password=password)
    with connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_without_select_on_a_table_is_configuration_naming_it(
    company: str,
    operator: Settings,
    narrow_role: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    narrow = operator.model_copy(update={"service_dsn": SecretStr(narrow_role)})
    with pytest.raises(ConfigError, match="lacks SELECT on whatsapp_keys"):
        diagnose(narrow, company)
    code, out, err = _task(narrow, tmp_path, monkeypatch, capsys, company=company)
    assert code == 2
    assert "lacks SELECT on whatsapp_keys" in err and "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1
    password = str(conninfo_to_dict(narrow_role)["password"])
    assert password not in out + err


def test_a_wrong_password_is_configuration_never_scenario_1(
    company: str,
    operator: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert operator.service_dsn is not None
    wrong_password = "not-the-password-" + secrets.token_hex(4)
    dsn = make_conninfo(operator.service_dsn.get_secret_value(), password=wrong_password)
    wrong = operator.model_copy(update={"service_dsn": SecretStr(dsn)})
    with pytest.raises(ConfigError, match="password") as info:
        diagnose(wrong, company)
    assert "not an outage" in str(info.value) and wrong_password not in str(info.value)
    code, out, err = _task(wrong, tmp_path, monkeypatch, capsys, company=company, json=True)
    doc = json.loads(out)
    assert code == 2 and doc["exit_code"] == 2 and "scenario" not in doc
    assert wrong_password not in out + err and "Traceback" not in out + err


def test_an_unreachable_database_is_scenario_1_with_the_probe_as_evidence(
    stack: Stack,
    company: str,
    operator: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ep = stack.endpoints
    with (
        ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
        faults.proxy_disabled(toxiproxy, ep.toxiproxy_proxy, allowed=ep.drill_target),
    ):
        found = diagnose(operator, company)
        code, out, err = _task(operator, tmp_path, monkeypatch, capsys, company=company, json=True)
    assert (found.scenario, found.exit_code) == (1, 11)
    assert found.evidence[0].startswith("dns: ok")
    assert found.evidence[-1].startswith("tcp: FAILED") and "refused" in found.evidence[-1]
    assert found.next_command == f"./run restore.to-files --company {company} --yes"
    assert found.preview_command == f"./run restore.to-files --company {company} --dry-run"
    assert code == 11, err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["scenario"] == 1 and doc["exit_code"] == 11
    probes = doc["connectivity"]["probes"]
    assert [(p["name"], p["ok"]) for p in probes] == [("dns", True), ("tcp", False)]
    assert doc["connectivity"]["verdict"] == "outage"


def _pointed_at(operator: Settings, host: str, port: int | str) -> tuple[Settings, str]:
    """The operator's settings with the service DSN's host and port replaced; its password."""
    assert operator.service_dsn is not None
    parts = urlsplit(operator.service_dsn.get_secret_value())
    assert parts.password
    netloc = f"{parts.username}:{parts.password}@{host}:{port}"
    dsn = urlunsplit(parts._replace(netloc=netloc))
    return operator.model_copy(update={"service_dsn": SecretStr(dsn)}), parts.password


@pytest.mark.parametrize(
    ("where", "evidence"),
    [
        ("http", "answers, but not as PostgreSQL"),
        ("port-70000", "port 70000 is out of range"),
        ("unresolvable", "does not resolve"),
    ],
)
def test_each_wrong_dsn_is_configuration_exit_2_never_scenario_1(
    where: str,
    evidence: str,
    company: str,
    operator: Settings,
    http_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the switch reads as a wrong DSN (exit 2, no snapshot), diagnose reads alike: an
    HTTP server on the DSN's port (told in moments, not after the connect timeout), a port
    out of range, a host that does not resolve."""
    host, port = {
        "http": ("127.0.0.1", http_port),
        "port-70000": ("127.0.0.1", 70000),
        "unresolvable": ("no-such-host.invalid", 5432),
    }[where]
    wrong, password = _pointed_at(operator, host, port)
    with pytest.raises(ConfigError, match="not an outage") as info:
        diagnose(wrong, company)
    assert evidence in str(info.value) and password not in str(info.value)
    code, out, err = _task(wrong, tmp_path, monkeypatch, capsys, company=company, json=True)
    doc = json.loads(out)
    assert code == 2 and doc["exit_code"] == 2 and "scenario" not in doc
    assert evidence in doc["error"]
    assert password not in out + err and "Traceback" not in out + err


def test_a_refused_port_is_scenario_1(company: str, operator: Settings) -> None:
    refused, _ = _pointed_at(operator, "127.0.0.1", free_port())  # nothing listens there
    found = diagnose(refused, company)
    assert (found.scenario, found.exit_code) == (1, 11)
    assert found.evidence[-1].startswith("tcp: FAILED") and "refused" in found.evidence[-1]


def test_a_corrupt_key_is_named_by_type_and_id_never_by_value(
    stack: Stack, company: str, operator: Settings
) -> None:
    take_backup(operator)
    bad_value = '{"type":"Buffer","data":"!!notbase64"}'
    with connect(stack.endpoints.admin_dsn, autocommit=True) as admin:
        admin.execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value)"
            " VALUES (%s, 'pre-key', 'diag-bad', %s)",
            (company, bad_value),
        )
    found = diagnose(operator, company)
    assert (found.scenario, found.exit_code, found.company_id) == (2, 12, company)
    assert any("pre-key/diag-bad" in line for line in found.evidence)
    [integrity] = found.integrity
    assert integrity.bad_examples == [{"type": "pre-key", "id": "diag-bad"}]
    shown = json.dumps(found.to_dict())
    assert "notbase64" not in shown
    assert found.next_command is not None and found.next_command.startswith(
        f"./run backup.restore --company {company} --id "
    )


def test_rows_the_service_cannot_read_are_scenario_2_when_the_form_is_pinned(
    company: str, operator: Settings
) -> None:
    """The generated company holds both Buffer forms: with the form pinned to base64 (a
    service on Baileys' BufferJSON) its array rows are scenario 2 evidence, counted per form,
    and the next command rewrites them; with auto they are counted, not a problem."""
    pinned = operator.model_copy(update={"db_buffer_form": "base64"})
    found = diagnose(pinned, company)
    assert (found.scenario, found.exit_code, found.company_id) == (2, 12, company)
    [integrity] = found.integrity
    arrays = integrity.unreadable["array"]
    assert arrays > 0 and integrity.buffer_forms is not None
    assert integrity.buffer_forms["keys"]["base64"] > 0
    assert found.reason == (
        f"company {company}: invalid data: {arrays + integrity.unreadable.get('mixed', 0)} "
        f"row(s) the service cannot read (RESILIENCE_DB_BUFFER_FORM=base64): {arrays} array"
    )
    assert found.next_command == (
        f"./run cleanup.buffer-form --company {company} --form base64 --yes"
    )
    assert found.preview_command == (
        f"./run cleanup.buffer-form --company {company} --form base64 --dry-run"
    )
    relaxed = diagnose(operator, company)  # auto: counted, not a scenario
    assert relaxed.scenario == 0 and relaxed.integrity[0].unreadable == {}
    assert relaxed.integrity[0].buffer_forms == integrity.buffer_forms


def test_a_company_gone_from_the_tables_but_in_the_backup_is_scenario_3_not_unknown(
    stack: Stack, company: str, operator: Settings
) -> None:
    other = f"dg_{uuid.uuid4().hex[:10]}"  # rows of another company: not "no rows at all"
    data = generate(other, 20)
    with connect(stack.endpoints.admin_dsn) as conn:
        pgraw.insert_raw(conn, other, data.creds, data.rows())
    try:
        backup = take_backup(operator).manifest
        with connect(stack.endpoints.admin_dsn) as conn:
            pgraw.delete_company(conn, company)
        found = diagnose(operator, company)
    finally:
        with connect(stack.endpoints.admin_dsn) as conn:
            pgraw.delete_company(conn, other)
    assert (found.scenario, found.exit_code, found.company_id) == (3, 13, company)
    [check] = found.completeness
    assert check.creds_lost and check.now_total == 0
    assert found.next_command == (
        f"./run backup.restore --company {company} --id {backup.id} --region moscow --yes"
    )
