"""Drill: point-in-time recovery from WAL archived to both regions with barman-cloud.

A stack of its own (module scope): its PostgreSQL runs durable, with `archive_mode = on`, the
project's `archive_command` into a spool and an `archive_timeout` of a few seconds. The pusher
(`backup.wal-daemon`'s loop) runs beside it while a scenario lasts; every scenario has buckets
of its own and takes its own base backup with `backup.base`'s code.

a) the stand-in writes keys; at T one tenant's keys are deleted; `backup.pitr --at T-1s` gives a
   cluster holding every key acknowledged before T, by fingerprint, and none of the deletion
   (and the bad inputs: `--at` before the oldest base backup, a non-empty target directory);
b) RPO: PostgreSQL killed with SIGKILL mid-traffic, the archive restored to its end: the
   acknowledged writes missing from the restored cluster are counted, and the window they span
   is the measured RPO, against `archive_timeout` plus one push interval;
c) the Moscow region cut (its Toxiproxy proxy disabled) during archiving: the spool grows, the
   alert reaches the Sentry and Telegram fakes, EU keeps archiving, and once the region is back
   it is caught up: both regions hold the same WAL, with no gap since the base backup.

All three are slow (a stack of their own, base backups, restores): `drill.backup` and
`drill.all` run them, `./run test` does not.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from resilience.authstate.pgconn import connect
from resilience.backup.barman import Archive, archives
from resilience.backup.base import take_base_backup, wal_objects
from resilience.backup.pitr import PitrResult, missing_segments, pitr, stop_restored
from resilience.backup.wal import WalSpool, wal_daemon
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings, Settings, load_drill_settings
from resilience.drill.evidence import Fingerprints, database_state, differences, replay, seeded
from resilience.drill.fakes.receivers import ReceiverClient
from resilience.drill.report import DrillReport
from resilience.drill.service import ServiceUnderTest
from resilience.drill.stack.local import LocalStack
from resilience.drill.standin.deploy import StandinOnStack, backup_settings, standin_on_stack
from resilience.drill.standin.writelog import WriteEntry
from resilience.errors import InputError
from resilience.infra.s3 import regions_from_settings
from resilience.infra.waiting import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE_TIMEOUT_S = 8.0
PUSH_INTERVAL_S = 2.0
KEYS = 300


@pytest.fixture(scope="module")
def pitr_stack(
    settings: DrillSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    if settings.backend != "local":
        pytest.skip("the PITR drill needs the local stack: it sets the server's archive_command")
    rig = load_drill_settings(
        env_file=None,
        stack_dir=tmp_path_factory.mktemp("pitr") / "stack",
        tools_dir=ROOT / ".tools",
        pg_durable=True,
        pg_archive=True,
        pg_archive_timeout=ARCHIVE_TIMEOUT_S,
    )
    stack = LocalStack(rig)
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


@contextmanager
def writing_service(stack: LocalStack, tmp_path: Path, prefix: str) -> Iterator[StandinOnStack]:
    with standin_on_stack(stack, stack.settings, tmp_path, prefix=prefix, keys=KEYS) as s:
        ServiceUnderTest(stack, s.deployed, s.settings, s.pm2, s.dataset).wait_mode("postgres")
        yield s


def pitr_settings(stack: LocalStack, s: StandinOnStack, work: Path, **extra: object) -> Settings:
    """Backups of this stack in buckets of the scenario's own, its spool, its admin role."""
    ep = stack.endpoints
    assert ep.wal_spool, "the stack was started without WAL archiving"
    return backup_settings(stack, s.settings, work).model_copy(
        update={
            "wal_spool_dir": Path(ep.wal_spool),
            "wal_push_interval": PUSH_INTERVAL_S,
            "pitr_dsn": SecretStr(ep.admin_dsn),
            "barman_server_bin_dir": ROOT / ".tools" / "barman" / "bin",
            **extra,
        }
    )


@contextmanager
def pusher(settings: Settings) -> Iterator[None]:
    """The pusher's loop (what PM2 runs as `backup.wal-daemon`) for the scenario's length."""
    stop = threading.Event()
    thread = threading.Thread(
        target=wal_daemon, args=(settings,), kwargs={"wait": stop.wait}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=180)


def writes(s: StandinOnStack) -> list[WriteEntry]:
    from resilience.drill.standin.writelog import WRITELOG_FILE, read_writelog

    return read_writelog(s.deployed.workdir / WRITELOG_FILE) or []


def wait_for_writes(s: StandinOnStack, more: int, timeout: float = 60) -> None:
    start = len(writes(s))
    wait_until(lambda: len(writes(s)) >= start + more, timeout, f"{more} acknowledged writes")


def archived(settings: Settings) -> dict[str, dict[str, datetime]]:
    return {a.name: wal_objects(a) for a in archives(settings, regions_from_settings(settings))}


def wait_archived(settings: Settings, segment: str, timeout: float = 90) -> None:
    """Until every region holds `segment` (read from S3, not from the pusher)."""
    wait_until(
        lambda: all(segment in names for names in archived(settings).values()),
        timeout,
        f"WAL segment {segment} in every region",
        interval=0.5,
    )


def restore_dir() -> Path:
    """A new directory the server's user can reach (pytest's tmp dirs are 0700 root)."""
    return Path(tempfile.gettempdir()) / f"resilience-pitr-drill-{secrets.token_hex(4)}"


def restored_state(result: PitrResult, company: str) -> tuple[Fingerprints, str]:
    assert result.dsn is not None
    _, keys, digest = database_state(result.dsn, company)
    return keys, digest


def test_a_deleted_tenant_recovered_to_the_second_before(
    pitr_stack: LocalStack, tmp_path: Path, backup_report: DrillReport
) -> None:
    ep = pitr_stack.endpoints
    with writing_service(pitr_stack, tmp_path, "pa") as s:
        settings = pitr_settings(pitr_stack, s, tmp_path)
        title = "PITR a) a tenant's keys deleted at T, recovered to T-1s"
        with backup_report.scenario(title, ep.admin_dsn) as journal, pusher(settings):
            company = s.deployed.company_id
            base = take_base_backup(settings)
            assert all(r.ok for r in base.regions), base.to_dict()
            wait_for_writes(s, 30)  # writes after the base backup: they come from the WAL
            s.pm2.stop(s.deployed.app)  # every acknowledged write is now in the log
            acked = writes(s)
            last_ack = max(datetime.fromisoformat(e.time) for e in acked)
            journal.steady_state("before", {"acknowledged_writes": len(acked)})
            settle = last_ack + timedelta(seconds=2)
            wait_until(lambda: datetime.now(UTC) > settle, 10, "a quiet second after the writes")
            deleted_at = datetime.now(UTC)
            with connect(ep.admin_dsn) as conn:
                gone = conn.execute(
                    "DELETE FROM whatsapp_keys WHERE company_id = %s", (company,)
                ).rowcount
                conn.commit()
                row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
            assert row is not None and gone > 0
            journal.event("fault", f"{gone} keys of {company} deleted at {deleted_at.isoformat()}")
            wait_archived(settings, str(row[0]))  # the deletion's segment, in both regions

            at = deleted_at - timedelta(seconds=1)
            with pytest.raises(InputError, match="before the oldest base backup"):
                pitr(settings, at=base_start(base.name) - timedelta(hours=1), yes=False)
            busy = tmp_path / "busy"
            busy.mkdir()
            (busy / "PG_VERSION").write_text("15\n")
            with pytest.raises(InputError, match="not empty"):
                pitr(settings, at=at, target_dir=busy, yes=False)

            target = restore_dir()
            try:
                result = pitr(settings, at=at, target_dir=target, yes=True)
                keys, digest = restored_state(result, company)
            finally:
                stop_restored(settings, target)
                shutil.rmtree(target, ignore_errors=True)
            expected = replay(seeded(s.dataset, company), acked)
            assert differences(keys, expected) == []  # every acknowledged key, by fingerprint
            assert len(keys) > 0 and len(keys) == len(expected)  # none of the deletion
            _, live, _ = database_state(ep.admin_dsn, company)
            assert live == {}  # the live cluster still shows the deletion: it was not touched
            assert result.companies[company]["digest"] == digest
            journal.steady_state("after", {"keys": len(keys), "digest": digest})
            journal.finish(
                "completed",
                deviated=False,
                measurements={
                    "deleted_at": deleted_at.isoformat(),
                    "recovery_target": at.isoformat(),
                    "recovered_to": result.recovered_to,
                    "timeline": result.timeline,
                    "keys": len(keys),
                    "keys_expected": len(expected),
                    "acknowledged_writes": len(acked),
                    "base_backup": result.plan.backup_id,
                    "pitr_s": round(result.timings.get("total", 0.0), 3),
                    "pitr_target_s": 1800,
                    "record": str(result.record),
                },
            )


def base_start(name: str) -> datetime:
    return datetime.strptime(name, "base-%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def lost_writes(restored: Fingerprints, base: Fingerprints, entries: list[WriteEntry]) -> int:
    """How many of the acknowledged writes (a suffix of them: the archive is a prefix of the
    commits) the restored cluster lacks: the largest k such that the restored keys equal the
    seed after the first k writes, except keys that later writes touch again."""
    last_write = {(e.type, e.id): i for i, e in enumerate(entries)}
    state = dict(base)
    mismatched = {k for k in state.keys() | restored.keys() if state.get(k) != restored.get(k)}
    best: int | None = None

    def explained(k: int) -> bool:
        return all(last_write.get(key, -1) >= k for key in mismatched)

    if explained(0):
        best = 0
    for i, entry in enumerate(entries):
        key = (entry.type, entry.id)
        if entry.deleted:
            state.pop(key, None)
        elif entry.fingerprint is not None:
            state[key] = entry.fingerprint
        if state.get(key) == restored.get(key):
            mismatched.discard(key)
        else:
            mismatched.add(key)
        if explained(i + 1):
            best = i + 1
    assert best is not None, "the restored cluster is no prefix of the acknowledged writes"
    return len(entries) - best


def test_b_rpo_after_sigkill_mid_traffic(
    pitr_stack: LocalStack, tmp_path: Path, backup_report: DrillReport
) -> None:
    ep = pitr_stack.endpoints
    limit = ARCHIVE_TIMEOUT_S + PUSH_INTERVAL_S
    with writing_service(pitr_stack, tmp_path, "pb") as s:
        settings = pitr_settings(pitr_stack, s, tmp_path)
        title = "PITR b) RPO: PostgreSQL killed with SIGKILL mid-traffic"
        target = restore_dir()
        with backup_report.scenario(title, ep.admin_dsn) as journal:
            company = s.deployed.company_id
            with pusher(settings):
                take_base_backup(settings)
                wait_for_writes(s, 100)
                journal.steady_state("before", {"acknowledged_writes": len(writes(s))})
                pitr_stack.kill_postgres()
                lost_at = datetime.now(UTC)
                journal.event("fault", "PostgreSQL killed with SIGKILL")
                s.pm2.stop(s.deployed.app)  # its log is final: what it was told is stored
                spool = WalSpool(settings.wal_spool_dir)
                wait_until(lambda: spool.files() == [], 120, "the spool pushed", interval=0.5)
            acked = writes(s)
            try:
                result = pitr(settings, at=None, target_dir=target, yes=True)
                keys, _ = restored_state(result, company)
            finally:
                stop_restored(settings, target)
                shutil.rmtree(target, ignore_errors=True)
                pitr_stack.start_postgres()  # crash recovery of the primary
            lost = lost_writes(keys, seeded(s.dataset, company), acked)
            first_lost = datetime.fromisoformat(acked[-lost].time) if lost else lost_at
            rpo_s = max(0.0, (lost_at - first_lost).total_seconds())
            journal.steady_state("after", {"keys": len(keys), "lost_writes": lost})
            journal.finish(
                "completed",
                deviated=rpo_s >= limit,
                measurements={
                    "rpo_s": round(rpo_s, 3),
                    "rpo_limit_s": limit,
                    "lost_writes": lost,
                    "acknowledged_writes": len(acked),
                    "archive_timeout_s": ARCHIVE_TIMEOUT_S,
                    "push_interval_s": PUSH_INTERVAL_S,
                    "recovered_to": result.recovered_to,
                    "pitr_s": round(result.timings.get("total", 0.0), 3),
                    "record": str(result.record),
                },
            )
            assert rpo_s < limit, f"RPO {rpo_s:.1f} s over {limit} s ({lost} writes lost)"


def test_c_one_region_down_spool_grows_alerts_and_catches_up(
    pitr_stack: LocalStack, tmp_path: Path, backup_report: DrillReport
) -> None:
    ep = pitr_stack.endpoints
    with writing_service(pitr_stack, tmp_path, "pc") as s:
        settings = pitr_settings(
            pitr_stack, s, tmp_path, wal_spool_alert_segments=2, wal_spool_alert_age=60.0
        )
        moscow, eu = archives(settings, regions_from_settings(settings))
        title = "PITR c) Moscow cut during WAL archiving, caught up"
        with backup_report.scenario(title, ep.admin_dsn) as journal, pusher(settings):
            base = take_base_backup(settings)
            begin = _begin_wal(settings, moscow, base.name)
            spool = WalSpool(settings.wal_spool_dir)
            journal.steady_state("before", {"spool": spool.state().to_dict()})
            eu_before = set(wal_objects(eu))
            with (
                ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
                faults.proxy_disabled(toxiproxy, ep.s3_proxies["moscow"], allowed=True),
            ):
                journal.event("fault", "proxy s3-moscow disabled")
                grown = wait_until(
                    lambda: (st := spool.state()).files > 2 and st,
                    120,
                    "the spool to grow",
                    interval=0.5,
                )
                assert ep.receivers_url is not None
                with ReceiverClient(ep.receivers_url) as receivers:
                    alert = receivers.wait_for(
                        "sentry", lambda r: _cut_alert(r.get("message") or ""), 60
                    )
                    told = receivers.wait_for(
                        "telegram", lambda r: _cut_alert(r.get("text", "")), 60
                    )
                only_eu = wait_until(
                    lambda: sorted(set(wal_objects(eu)) - eu_before),
                    120,
                    "EU archiving while Moscow is cut",
                    interval=0.5,
                )
            journal.event("recovery", "proxy s3-moscow enabled")
            s.pm2.stop(s.deployed.app)
            wait_until(lambda: spool.files() == [], 120, "the spool caught up", interval=0.5)
            m, e = wal_objects(moscow), wal_objects(eu)
            since = {n for n in e if len(n) == 24 and n >= begin}
            assert since and since <= set(m)  # Moscow caught up: every segment EU has
            newest = max(since)
            assert missing_segments(set(m), begin, newest, 16 * 1024 * 1024) == []
            journal.steady_state("after", {"spool": spool.state().to_dict()})
            journal.finish(
                "completed",
                deviated=False,
                measurements={
                    "spool_peak_files": grown.files,
                    "segments_only_in_eu_during_cut": len(only_eu),
                    "caught_up_segments": len(since),
                    "sentry_alert": alert.get("message"),
                    "telegram_alert": told.get("text"),
                },
            )


def _cut_alert(text: str) -> bool:
    """The backlog alert that names the region that fails (not one of a mere lag)."""
    return "WAL archive behind" in text and "region moscow" in text


def _begin_wal(settings: Settings, archive: Archive, name: str) -> str:
    from resilience.backup.barman import list_backups

    found = [b for b in list_backups(settings, archive) if b.get("backup_name") == name]
    assert found, f"base backup {name} not listed in {archive.name}"
    return str(found[-1]["begin_wal"])
