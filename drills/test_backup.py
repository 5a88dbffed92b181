"""Drill: backups that restore, in two regions, under the failures they exist for.

Each scenario is steady state -> fault -> method (the operator's own backup commands) ->
assertions on what real components hold (database digests and fingerprints, S3 objects, what
reached the Sentry and Telegram fakes) -> rollbacks; journals go to
`reports/drill-backup.{json,html}`.

a) back up, TRUNCATE whatsapp_keys, restore: every key identical by fingerprint, time recorded;
b) the Moscow region cut (its Toxiproxy proxy disabled) during a backup: EU gets it, the alert
   reaches the fakes, and the region is caught up once it is back;
c) one backup object with flipped bytes and one truncated: `backup.validate` flags both, re-takes,
   alerts, and fails with exit 5;
d) datacenter loss (scenario 4; slow, on a stack of its own): the primary cluster stopped and its
   data deleted, a second cluster restored from the EU region, the service pointed at it, RTO
   and RPO measured against 2 h and 1 h;
e) one company corrupted while another keeps writing: `backup.restore --company` brings it back
   to the backup's digest and the other company's keys are what its writes made them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.pgconn import connect
from resilience.backup.catalog import list_region
from resilience.backup.manifest import dump_key
from resilience.backup.restore import restore_backup
from resilience.backup.take import take_backup
from resilience.backup.validate import validate
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings, load_drill_settings
from resilience.drill.evidence import database_state, differences, replay, seeded
from resilience.drill.fakes.receivers import ReceiverClient
from resilience.drill.report import DrillReport
from resilience.drill.service import ServiceUnderTest
from resilience.drill.stack import Stack
from resilience.drill.stack.local import LocalStack
from resilience.drill.stack.postgres import PostgresCluster
from resilience.drill.standin.deploy import backup_settings, standin_on_stack
from resilience.errors import PartialFailure, VerificationError
from resilience.infra.processes import free_port
from resilience.infra.s3 import regions_from_settings
from resilience.service import envfile

pytestmark = pytest.mark.stack

RTO_LIMIT_S = 2 * 3600.0
RPO_LIMIT_S = 3600.0


@pytest.fixture
def service(stack: Stack, settings: DrillSettings, tmp_path: Path) -> Iterator[ServiceUnderTest]:
    with standin_on_stack(stack, settings, tmp_path, prefix="bk", keys=300) as s:
        operator = backup_settings(stack, s.settings, tmp_path)
        found = ServiceUnderTest(stack, s.deployed, operator, s.pm2, s.dataset)
        found.wait_mode("postgres")
        yield found


def _stop_writes(service: ServiceUnderTest) -> None:
    service.pm2.stop(service.deployed.app)


def test_a_truncated_keys_come_back_from_the_backup(
    service: ServiceUnderTest, backup_report: DrillReport
) -> None:
    ep = service.stack.endpoints
    with backup_report.scenario("a) TRUNCATE whatsapp_keys, restore", ep.admin_dsn) as journal:
        _stop_writes(service)  # the backup must hold every acknowledged write
        _, before, digest = database_state(ep.admin_dsn, service.company)
        journal.steady_state("before", {"keys": len(before), "digest": digest})
        backup = take_backup(service.settings)
        with connect(ep.admin_dsn) as conn:
            conn.execute("TRUNCATE whatsapp_keys")
            conn.commit()
        journal.event("fault", "TRUNCATE whatsapp_keys")
        began = time.monotonic()
        restored = restore_backup(
            service.settings,
            backup_id=backup.manifest.id,
            target_dsn=ep.service_dsn,  # the service's own role keeps owning its tables
            yes=True,
        )
        restore_s = time.monotonic() - began
        _, after, digest_after = database_state(ep.admin_dsn, service.company)
        journal.steady_state("after", {"keys": len(after), "digest": digest_after})
        assert differences(before, after) == []
        assert restored.verified["mismatches"] == []
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "backup_id": backup.manifest.id,
                "keys": len(after),
                "restore_s": round(restore_s, 3),
                "restore_target_s": 1800,
                "record": str(restored.record),
            },
        )


def test_b_a_region_cut_during_a_backup_is_caught_up(
    service: ServiceUnderTest, backup_report: DrillReport
) -> None:
    ep = service.stack.endpoints
    moscow, eu = regions_from_settings(service.settings)
    with backup_report.scenario("b) Moscow region cut during a backup", ep.admin_dsn) as journal:
        journal.steady_state("before", {"moscow": 0, "eu": 0})
        with (
            ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
            faults.proxy_disabled(toxiproxy, ep.s3_proxies["moscow"], allowed=ep.drill_target),
        ):
            journal.event("fault", "proxy s3-moscow disabled")
            with pytest.raises(PartialFailure) as info:
                take_backup(service.settings)
        assert info.value.exit_code == 6
        missed = [m.id for m in list_region(eu).manifests]
        assert len(missed) == 1 and list_region(moscow).manifests == []
        assert ep.receivers_url is not None
        with ReceiverClient(ep.receivers_url) as receivers:
            alert = receivers.wait_for(
                "sentry", lambda r: f"backup {missed[0]}" in (r.get("message") or ""), 15
            )
            told = receivers.wait_for("telegram", lambda r: missed[0] in r.get("text", ""), 15)
        later = take_backup(service.settings)
        caught = next(r for r in later.regions if r.region == "moscow").caught_up
        assert caught == missed
        moscow_ids = {m.id for m in list_region(moscow).manifests}
        assert (
            moscow_ids
            == {m.id for m in list_region(eu).manifests}
            == {
                missed[0],
                later.manifest.id,
            }
        )
        journal.steady_state("after", {"moscow": len(moscow_ids), "eu": len(moscow_ids)})
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "missed_backup": missed[0],
                "caught_up_by": later.manifest.id,
                "sentry_alert": alert.get("message"),
                "telegram_alert": told.get("text"),
            },
        )


def test_c_corrupt_and_truncated_objects_are_found_and_retaken(
    service: ServiceUnderTest, backup_report: DrillReport
) -> None:
    ep = service.stack.endpoints
    moscow, eu = regions_from_settings(service.settings)
    with backup_report.scenario("c) flipped bytes and a truncated dump", ep.admin_dsn) as journal:
        first = take_backup(service.settings).manifest
        journal.steady_state("before", {"backup": first.id})
        body = bytearray(moscow.get_bytes(dump_key(first.id)))
        body[len(body) // 2] ^= 0xFF
        moscow.put_bytes(dump_key(first.id), bytes(body))
        eu.put_bytes(dump_key(first.id), bytes(body[: len(body) // 3]))
        journal.event("fault", "moscow: one byte flipped; eu: dump cut to a third")
        with pytest.raises(VerificationError) as info:
            validate(service.settings)
        assert info.value.exit_code == 5
        details = info.value.details or {}
        bad = {c["region"]: c["error"] for c in details["checks"] if not c["valid"]}
        assert "corrupt" in bad["moscow"] and "truncated" in bad["eu"]
        retaken = details["retaken"]
        assert retaken and all(list_region(s).manifests[0].id == retaken for s in (moscow, eu))
        assert ep.receivers_url is not None
        with ReceiverClient(ep.receivers_url) as receivers:
            receivers.wait_for(
                "sentry", lambda r: "backup validation FAILED" in (r.get("message") or ""), 15
            )
        checked = validate(service.settings)  # the re-taken one is valid in both regions
        assert checked.ok
        journal.steady_state("after", {"backup": retaken})
        journal.finish(
            "completed", deviated=False, measurements={"invalid": bad, "retaken": retaken}
        )


def test_e_one_company_restored_while_another_keeps_writing(
    stack: Stack,
    settings: DrillSettings,
    service: ServiceUnderTest,
    tmp_path: Path,
    backup_report: DrillReport,
) -> None:
    ep = stack.endpoints
    other_company = f"bko_{secrets.token_hex(4)}"
    data = generate(other_company, 100)
    with connect(ep.admin_dsn) as conn:
        pgraw.insert_raw(conn, other_company, data.creds, data.rows())
    title = "e) one company corrupted and restored, another writing"
    try:
        with backup_report.scenario(title, ep.admin_dsn) as journal:
            _stop_writes(service)  # `service` is the one corrupted; it must not write over it
            backup = take_backup(service.settings).manifest
            bad = service.company
            with connect(ep.admin_dsn) as conn:
                conn.execute("UPDATE whatsapp_auth SET creds = '{}' WHERE company_id = %s", (bad,))
                conn.execute(
                    'UPDATE whatsapp_keys SET value = \'{"type":"Buffer","data":"%%%%"}\' '
                    "WHERE company_id = %s AND key_type = 'pre-key'",
                    (bad,),
                )
                conn.commit()
            journal.event("fault", f"company {bad}: creds {{}}, pre-keys undecodable")
            with standin_on_stack(
                stack, settings, tmp_path / "other", prefix="bkw", keys=50
            ) as writer:
                writing = ServiceUnderTest(
                    stack, writer.deployed, writer.settings, writer.pm2, writer.dataset
                )
                writing.wait_mode("postgres")
                preview = restore_backup(service.settings, company=bad)
                done = restore_backup(service.settings, company=bad, yes=True)
                writing.pm2.stop(writing.deployed.app)
                _, bad_now, bad_digest = database_state(ep.admin_dsn, bad)
                _, writer_now, _ = database_state(ep.admin_dsn, writing.company)
                entries = writing.acknowledged_writes() or []
                assert writer.dataset is not None
                expected = replay(seeded(writer.dataset, writing.company), entries)
            assert bad_digest == backup.companies[bad].digest
            assert differences(writer_now, expected) == []  # untouched by the restore
            assert entries, "the other company wrote nothing during the restore"
            journal.finish(
                "completed",
                deviated=False,
                measurements={
                    "backup_id": backup.id,
                    "preview": preview.change,
                    "restored_keys": len(bad_now),
                    "other_company_writes_during_restore": len(entries),
                    "record": str(done.record),
                },
            )
    finally:
        with connect(ep.admin_dsn) as conn:
            pgraw.delete_company(conn, other_company)


@pytest.mark.slow  # a stack of its own: its primary cluster is destroyed
def test_d_datacenter_loss_rebuilt_from_the_eu_region(
    tmp_path: Path, backup_report: DrillReport
) -> None:
    root = Path(__file__).resolve().parents[1]
    rig = load_drill_settings(env_file=None, stack_dir=tmp_path / "dc", tools_dir=root / ".tools")
    stack = LocalStack(rig)
    with stack, standin_on_stack(stack, rig, tmp_path / "svc", prefix="dc", keys=1313) as s:
        ep = stack.endpoints
        operator = backup_settings(stack, s.settings, tmp_path)
        service = ServiceUnderTest(stack, s.deployed, operator, s.pm2, s.dataset)
        service.wait_mode("postgres")
        with backup_report.scenario("d) datacenter loss: rebuilt from EU", ep.admin_dsn) as journal:
            backup = take_backup(operator).manifest
            spare = PostgresCluster.create(tmp_path / "dr", free_port())
            try:
                # the loss: primary stopped and its data gone; the service keeps failing
                lost_at = datetime.now(UTC)
                began = time.monotonic()
                stack.destroy_postgres()
                journal.event("fault", "primary PostgreSQL stopped and its data directory deleted")
                spare.init()
                spare.start()
                spare.wait_ready(rig.startup_timeout)
                spare.bootstrap()  # an empty auth database, as a new datacenter would get
                new_dsn = spare.service_dsn("127.0.0.1", spare.port)
                restored = restore_backup(
                    operator.model_copy(update={"restore_dsn": SecretStr(spare.admin_dsn())}),
                    region="eu",
                    target_dsn=new_dsn,
                    yes=True,
                )
                envfile.set_values(service.deployed.env_file, {"DATABASE_URL": new_dsn})
                service.pm2.restart(service.deployed.app)
                health = service.wait_mode("postgres", timeout=60)
                rto_s = time.monotonic() - began
                rpo_s = (lost_at - backup.created).total_seconds()
                assert health["loaded_digest"] == backup.companies[service.company].digest
                assert rto_s < RTO_LIMIT_S and rpo_s < RPO_LIMIT_S
                journal.finish(
                    "completed",
                    deviated=False,
                    measurements={
                        "rto_s": round(rto_s, 3),
                        "rpo_s": round(rpo_s, 3),
                        "rto_limit_s": RTO_LIMIT_S,
                        "rpo_limit_s": RPO_LIMIT_S,
                        "backup_id": backup.id,
                        "restored": restored.verified,
                    },
                )
            finally:
                service.pm2.stop(service.deployed.app)
                spare.remove()
                stack.rebuild_postgres()
