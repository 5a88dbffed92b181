"""Diagnose drill: for each scenario of the runbook, break the embedded stack the way it happens
in life, check that `./run diagnose` names the scenario (and its exit code), then run the next
command it prints, exactly as printed, and check that it repairs the deployment: `diagnose`
healthy again and the stand-in serving what the repair put back (its health digest).

Steady state: `diagnose` exits 0, the stand-in serves from PostgreSQL, and the monitor (under
PM2 beside it, its data checks `integrity` and `completeness` every second instead of 15 minutes)
sees scenario 0. `diagnose` and every next command run as the operator runs them: `invoke` in a
subprocess, on the drill's settings alone.

- 0) healthy: exit 0, and the `--json` document's shape;
- 1a) the Toxiproxy proxy in front of PostgreSQL disabled, 1b) PostgreSQL stopped: scenario 1,
  exit 11, next `restore.to-files --company C --yes`; run, the stand-in serves the newest
  snapshot from files; then undone (fault off, `restore.to-postgres --yes`);
- 2a) the company's creds replaced by ``{}``, 2b) one key's Buffer data that does not decode
  (written by the admin connection): scenario 2, exit 12, naming the company and for the key its
  ``(type, id)``, never its value; the monitor pages ``integrity`` by itself (nobody runs
  `diagnose` first) with the same next command, and resolves once repaired; the printed
  `backup.restore --company C --id ... --region ... --yes` repairs it;
- 3) 40 % of the company's keys deleted (two rows in five of every type): scenario 3, exit 13;
  the monitor pages ``completeness`` the same way; the printed command repairs it;
- 4a) the auth tables dropped (the stand-in stopped first, so it does not recreate rows):
  scenario 4, exit 14, next `backup.restore --id ... --region ... --to-service --yes`; run,
  then the restarted stand-in loads the backup's digest;
- 4b) the cluster removed (stopped and its data directory deleted): a client cannot tell a
  removed cluster from a stopped one (the proxy accepts, the server behind it does not answer),
  so `diagnose` says scenario 1, exit 11, with the switch to files as the next command: the
  runbook's "run on files meanwhile" while the database is rebuilt from a backup (drill.backup d).

For the data scenarios the stand-in is stopped before the fault and a backup taken (the hourly
backup of life, with nothing written after it), so the repair can be checked by digest.

The drill uses a stack of its own (its "no rows at all" and its company list must be this
drill's alone): local backend only.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.backup.manifest import BackupManifest
from resilience.backup.take import take_backup
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings, Settings, load_drill_settings, settings_as_env
from resilience.drill.fakes.receivers import ReceiverClient
from resilience.drill.fakes.telegram import TelegramRecord
from resilience.drill.monitor import monitor_under_pm2
from resilience.drill.report import DrillReport
from resilience.drill.service import ServiceUnderTest
from resilience.drill.stack.local import LocalStack
from resilience.drill.standin.deploy import backup_settings, standin_on_stack
from resilience.files import snapshot
from resilience.infra.waiting import wait_until
from resilience.runs.journal import Journal, Phase

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
TAG = "baileys auth monitor"
BAD_BUFFER = '{"type":"Buffer","data":"!!notbase64"}'

pytestmark = pytest.mark.stack


@dataclass
class Rig:
    stack: LocalStack
    service: ServiceUnderTest
    operator: Settings  # the operator's settings: the service, snapshots, both S3 regions
    work: Path
    receivers: ReceiverClient
    monitor_url: str  # the monitor's own page and /health.json

    @property
    def company(self) -> str:
        return self.service.company

    @property
    def admin_dsn(self) -> str:
        return self.stack.endpoints.admin_dsn

    def invoke(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """A task as the operator runs it (`./run TASK ...`), on the drill's settings alone."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENCE_")}
        env |= settings_as_env(self.operator)
        env["RESILIENCE_STACK_DIR"] = str(self.work / "no-stack-settings")  # never .stack's
        return subprocess.run(
            [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *argv],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=self.work,
            env=env,
            check=False,
        )

    def diagnose(self) -> tuple[int, dict[str, Any]]:
        """`./run diagnose --company C --json`: (exit code, its document)."""
        result = self.invoke("diagnose", "--company", self.company, "--json")
        try:
            doc: dict[str, Any] = json.loads(result.stdout)
        except ValueError:
            raise AssertionError(
                f"diagnose printed no JSON (exit {result.returncode}): {result.stderr[-2000:]}"
            ) from None
        return result.returncode, doc

    def run_next(self, command: str) -> tuple[subprocess.CompletedProcess[str], float]:
        """The next command exactly as `diagnose` printed it (`./run` is `invoke` here)."""
        argv = shlex.split(command)
        assert argv[0] == "./run", command
        began = time.monotonic()
        result = self.invoke(*argv[1:])
        seconds = time.monotonic() - began
        assert result.returncode == 0, f"{command}: exit {result.returncode}: {result.stderr}"
        return result, seconds

    def monitor(self) -> dict[str, Any]:
        response = httpx.get(self.monitor_url + "/health.json", timeout=5)
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc

    def monitor_data_scenario(
        self, scenario: int, timeout: float = 30, started_after: float = 0.0
    ) -> int:
        """Wait until the monitor's own data check saw `scenario` (in a check that started
        after `started_after`, a Unix time)."""

        def seen() -> bool:
            try:
                data = self.monitor().get("data") or {}
            except httpx.HTTPError:
                return False
            at = datetime.fromisoformat(data["at"]).timestamp() if data.get("at") else 0.0
            ok = data.get("state") == "ok" and data.get("scenario") == scenario
            return ok and at > started_after  # `at` is whole seconds, rounded down

        wait_until(seen, timeout, f"the monitor's data check at scenario {scenario}")
        return scenario

    def steady(self, journal: Journal, phase: Phase) -> dict[str, Any]:
        code, doc = self.diagnose()
        assert (code, doc["scenario"]) == (0, 0), doc["evidence"]
        health = self.service.wait_mode("postgres")
        state = {
            "diagnose_exit": code,
            "mode": health.get("mode"),
            "digest": health.get("digest"),
            "monitor_data_scenario": self.monitor_data_scenario(0),
        }
        journal.steady_state(phase, state)
        return state

    def last_seq(self) -> int:
        seqs = [m.get("seq", 0) for m in self.receivers.telegram_messages()]
        return max(seqs, default=0)

    def page(self, rule: str, since: int, resolved: bool = False) -> TelegramRecord:
        def match(m: TelegramRecord) -> bool:
            text = m.get("text", "")
            opened = text.startswith("[RESOLVED]") if resolved else text.startswith("[CRITICAL]")
            return opened and f"{TAG}, {rule}:" in text and m.get("seq", 0) > since

        return self.receivers.wait_for("telegram", match, timeout=45)

    def restart_service(self) -> dict[str, Any]:
        self.service.pm2.restart(self.service.deployed.app)
        return self.service.wait_mode("postgres", timeout=60)

    def stop_service_and_back_up(self) -> BackupManifest:
        """The stand-in stopped (nothing written after the backup), then the hourly backup,
        and the monitor's data check run once since."""
        self.service.pm2.stop(self.service.deployed.app)
        manifest = take_backup(self.operator).manifest
        # a fault must not meet a data check that listed the backups before this one
        self.monitor_data_scenario(0, started_after=time.time())
        return manifest


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, settings: DrillSettings) -> Iterator[Rig]:
    if settings.backend != "local":
        pytest.skip("the diagnose drill breaks a stack of its own (local backend)")
    base = tmp_path_factory.mktemp("diagnose")
    drill = load_drill_settings(env_file=None, stack_dir=base / "stack", tools_dir=ROOT / ".tools")
    stack = LocalStack(drill)
    with (
        stack,
        standin_on_stack(stack, drill, base / "svc", prefix="dg", keys=1000) as s,
    ):
        ep = stack.endpoints
        operator = backup_settings(stack, s.settings, base / "ops")
        service = ServiceUnderTest(stack, s.deployed, operator, s.pm2, s.dataset)
        service.wait_mode("postgres")
        take_backup(operator)  # the newest backup every comparison starts from
        monitors = monitor_under_pm2(
            stack,
            operator,
            base,
            integrity_interval=1.0,  # scaled from 900 s
        )
        with monitors as (_, url), ReceiverClient(ep.receivers_url or "") as receivers:
            rig = Rig(stack, service, operator, base, receivers, url)
            rig.monitor_data_scenario(0, timeout=90)
            yield rig


def test_0_a_healthy_stack_exits_0_with_the_json_shape(
    rig: Rig, diagnose_report: DrillReport
) -> None:
    with diagnose_report.scenario("0) healthy", rig.admin_dsn) as j:
        rig.steady(j, "before")
        with j.step("./run diagnose --json (every company)"):
            result = rig.invoke("diagnose", "--json")
        doc = json.loads(result.stdout)
        assert result.returncode == 0, result.stderr
        assert set(doc) >= {
            "ok", "scenario", "title", "exit_code", "company_id", "evidence", "next_command",
            "preview_command", "connectivity", "exposure", "integrity", "completeness",
            "warnings",
        }  # fmt: skip
        assert doc["ok"] is True and doc["scenario"] == 0 and doc["exit_code"] == 0
        assert doc["title"] == "healthy" and doc["next_command"] is None
        assert doc["connectivity"]["verdict"] == "ok" and doc["warnings"] == []
        assert [c["company_id"] for c in doc["completeness"]] == [rig.company]
        assert doc["completeness"][0]["backup_id"] is not None
        assert doc["evidence"][-1] == "1 company: complete and valid"
        j.steady_state("after", {"diagnose_exit": result.returncode})
        j.finish(
            "completed",
            deviated=False,
            measurements={"scenario": 0, "exit_code": 0, "evidence": doc["evidence"]},
        )


def _unreachable(rig: Rig, report: DrillReport, title: str, fault: str) -> None:
    ep = rig.stack.endpoints
    company = rig.company
    with report.scenario(title, rig.admin_dsn, ep.service_dsn) as j:
        rig.steady(j, "before")
        with connect(ep.service_dsn) as conn:  # the 15-minute snapshot of life
            snap = snapshot.take_snapshot(
                PgAuthStore(conn), rig.operator.snapshot_dir, [company], keep=3, source="drill"
            )
        snap_digest = snap.companies[company]["digest"]
        with ToxiproxyClient(ep.toxiproxy_url) as toxiproxy:
            injected = (
                faults.proxy_disabled(toxiproxy, ep.toxiproxy_proxy, allowed=ep.drill_target)
                if fault == "proxy-disabled"
                else faults.server_stopped(
                    rig.stack.stop_postgres, rig.stack.start_postgres, "PostgreSQL"
                )
            )
            with injected:
                j.event("fault", fault)
                with j.step("./run diagnose"):
                    code, doc = rig.diagnose()
                assert (code, doc["scenario"]) == (11, 1), doc["evidence"]
                expected = f"./run restore.to-files --company {company} --yes"
                assert doc["next_command"] == expected
                failed = [p for p in doc["connectivity"]["probes"] if not p["ok"]]
                assert [p["name"] for p in failed] == (
                    ["tcp"] if fault == "proxy-disabled" else ["postgres"]
                )
                with j.step(f"the next command: {expected}"):
                    _, repair_s = rig.run_next(doc["next_command"])
                health = rig.service.wait_mode("file", timeout=60)
                assert health["loaded_digest"] == snap_digest
            with j.rollback("fault off, restore.to-postgres --yes"):
                back = rig.service.switch("to-postgres")
                assert back.outcome.result is not None and back.outcome.result.ok
        after = rig.steady(j, "after")
        j.finish(
            "completed",
            deviated=False,
            measurements={
                "scenario": doc["scenario"],
                "exit_code": code,
                "next_command": doc["next_command"],
                "evidence": doc["evidence"],
                "repair_s": round(repair_s, 2),
                "served_from": "files",
                "snapshot_digest": snap_digest,
                "health_loaded_digest": health["loaded_digest"],
                "mode_after_rollback": after["mode"],
            },
        )


def test_1a_proxy_disabled_is_scenario_1_and_the_switch_to_files_serves(
    rig: Rig, diagnose_report: DrillReport
) -> None:
    _unreachable(
        rig, diagnose_report, "1a) the proxy in front of PostgreSQL disabled", "proxy-disabled"
    )


def test_1b_postgres_stopped_is_scenario_1_and_the_switch_to_files_serves(
    rig: Rig, diagnose_report: DrillReport
) -> None:
    _unreachable(rig, diagnose_report, "1b) PostgreSQL stopped", "postgres-stopped")


def _data_scenario(
    rig: Rig,
    report: DrillReport,
    title: str,
    fault: str,
    sql: str,
    params: tuple[str, ...],
    expected: tuple[int, int],
    rule: str,
) -> dict[str, Any]:
    """Steady state, the stand-in stopped and a backup taken, the fault, the monitor's page,
    `diagnose`, its next command run, `diagnose` healthy, the stand-in restarted on the
    backup's digest. The diagnosis document is returned for the scenario's own checks."""
    company = rig.company
    with report.scenario(title, rig.admin_dsn) as j:
        rig.steady(j, "before")
        backup = rig.stop_service_and_back_up()
        j.event("backup", f"backup {backup.id} taken with the stand-in stopped")
        since = rig.last_seq()
        with connect(rig.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.encode(), params)
        j.event("fault", fault)
        began = time.monotonic()
        with j.step(f"the monitor pages {rule} (nobody ran diagnose)"):
            page = rig.page(rule, since)
        paged_s = time.monotonic() - began
        with j.step("./run diagnose"):
            code, doc = rig.diagnose()
        assert (doc["scenario"], code) == expected, doc["evidence"]
        assert doc["company_id"] == company
        assert doc["next_command"] is not None
        text = page["text"]
        assert f"scenario {expected[0]}:" in text and company in text
        assert doc["next_command"] in text  # the same next command as diagnose prints
        with j.step(f"the next command: {doc['next_command']}"):
            _, repair_s = rig.run_next(doc["next_command"])
        again, doc_after = rig.diagnose()
        assert (again, doc_after["scenario"]) == (0, 0), doc_after["evidence"]
        resolved = rig.page(rule, page["seq"], resolved=True)  # once repaired
        health = rig.restart_service()
        assert health["loaded_digest"] == backup.companies[company].digest
        rig.steady(j, "after")
        j.finish(
            "completed",
            deviated=False,
            measurements={
                "scenario": doc["scenario"],
                "exit_code": code,
                "next_command": doc["next_command"],
                "evidence": doc["evidence"],
                "repair_s": round(repair_s, 2),
                "backup_id": backup.id,
                "health_loaded_digest": health["loaded_digest"],
                "monitor_paged_s": round(paged_s, 2),
                "monitor_page": page["text"],
                "monitor_resolved": resolved["text"],
            },
        )
    return doc


def test_2a_creds_emptied_is_scenario_2_and_the_company_restore_repairs_it(
    rig: Rig, diagnose_report: DrillReport
) -> None:
    doc = _data_scenario(
        rig,
        diagnose_report,
        "2a) creds replaced by {}",
        "the company's creds replaced by {}",
        "UPDATE whatsapp_auth SET creds = '{}' WHERE company_id = %s",
        (rig.company,),
        (2, 12),
        "integrity",
    )
    [integrity] = doc["integrity"]
    assert integrity["creds"] == "invalid" and "missing noiseKey" in integrity["creds_problems"]
    assert doc["next_command"].startswith(f"./run backup.restore --company {rig.company} --id ")
    assert doc["next_command"].endswith(" --yes") and " --region " in doc["next_command"]


def test_2b_an_undecodable_key_is_scenario_2_named_by_type_and_id_never_value(
    rig: Rig, diagnose_report: DrillReport
) -> None:
    with connect(rig.admin_dsn) as conn:
        row = conn.execute(
            "SELECT key_id FROM whatsapp_keys WHERE company_id = %s AND key_type = 'session'"
            " ORDER BY key_id LIMIT 1",
            (rig.company,),
        ).fetchone()
    assert row is not None
    key_id = str(row[0])
    doc = _data_scenario(
        rig,
        diagnose_report,
        "2b) a key whose Buffer data does not decode",
        f"session/{key_id}: Buffer data that is not base64",
        "UPDATE whatsapp_keys SET value = %s::jsonb"
        " WHERE company_id = %s AND key_type = 'session' AND key_id = %s",
        (BAD_BUFFER, rig.company, key_id),
        (2, 12),
        "integrity",
    )
    [integrity] = doc["integrity"]
    assert integrity["bad_keys"] == 1
    assert integrity["bad_examples"] == [{"type": "session", "id": key_id}]
    assert any(f"session/{key_id}" in line for line in doc["evidence"])
    assert "notbase64" not in json.dumps(doc)  # never the value


def test_3_forty_percent_of_the_keys_deleted_is_scenario_3(
    rig: Rig, diagnose_report: DrillReport
) -> None:
    doc = _data_scenario(
        rig,
        diagnose_report,
        "3) 40 % of the company's keys deleted",
        "40 % of the company's keys deleted (every type)",
        # two rows in five of every type: every type with five keys or more drops by 40 %
        "DELETE FROM whatsapp_keys WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number()"
        " OVER (PARTITION BY key_type ORDER BY key_id) AS n FROM whatsapp_keys"
        " WHERE company_id = %s) k WHERE n %% 5 IN (1, 2))",
        (rig.company,),
        (3, 13),
        "completeness",
    )
    [check] = doc["completeness"]
    assert check["missing"] and not check["creds_lost"]
    assert {d["type"] for d in check["drops"]} >= {"pre-key", "session"}
    assert all(d["down_pct"] > 20 for d in check["drops"])


def test_4a_tables_dropped_is_scenario_4_and_the_restore_to_the_service_repairs_it(
    rig: Rig, diagnose_report: DrillReport
) -> None:
    company = rig.company
    with diagnose_report.scenario("4a) the auth tables dropped", rig.admin_dsn) as j:
        rig.steady(j, "before")
        backup = rig.stop_service_and_back_up()  # stopped: it would recreate rows
        j.event("backup", f"backup {backup.id} taken with the stand-in stopped")
        with connect(rig.admin_dsn, autocommit=True) as admin:
            admin.execute("DROP TABLE whatsapp_auth, whatsapp_keys")
        j.event("fault", "DROP TABLE whatsapp_auth, whatsapp_keys")
        with j.step("./run diagnose"):
            code, doc = rig.diagnose()
        assert (doc["scenario"], code) == (4, 14), doc["evidence"]
        assert "tables: whatsapp_auth, whatsapp_keys missing" in doc["evidence"]
        command = doc["next_command"]
        assert command.startswith(f"./run backup.restore --id {backup.id} --region ")
        assert command.endswith(" --to-service --yes")
        with j.step(f"the next command: {command}"):
            _, repair_s = rig.run_next(command)
        again, doc_after = rig.diagnose()
        assert (again, doc_after["scenario"]) == (0, 0), doc_after["evidence"]
        health = rig.restart_service()
        assert health["loaded_digest"] == backup.companies[company].digest
        rig.steady(j, "after")
        j.finish(
            "completed",
            deviated=False,
            measurements={
                "scenario": doc["scenario"],
                "exit_code": code,
                "next_command": command,
                "evidence": doc["evidence"],
                "repair_s": round(repair_s, 2),
                "backup_id": backup.id,
                "health_loaded_digest": health["loaded_digest"],
            },
        )


def test_4b_a_removed_cluster_reads_as_unreachable_and_the_next_step_is_files(
    rig: Rig, diagnose_report: DrillReport
) -> None:
    company = rig.company
    with diagnose_report.scenario("4b) the cluster removed", rig.admin_dsn) as j:
        rig.steady(j, "before")
        try:
            rig.stack.destroy_postgres()
            j.event("fault", "PostgreSQL stopped and its data directory deleted")
            with j.step("./run diagnose"):
                code, doc = rig.diagnose()
        finally:
            with j.rollback("a fresh, empty cluster in its place"):
                rig.stack.rebuild_postgres()
        # a removed cluster cannot be told from a stopped one by a client: scenario 1, and the
        # runbook's "run on files meanwhile" while the database is rebuilt from a backup
        assert (doc["scenario"], code) == (1, 11), doc["evidence"]
        assert doc["next_command"] == f"./run restore.to-files --company {company} --yes"
        failed = [p for p in doc["connectivity"]["probes"] if not p["ok"]]
        assert [p["name"] for p in failed] == ["postgres"]
        j.steady_state("after", {"cluster": "rebuilt, empty"})
        j.finish(
            "completed",
            deviated=False,
            measurements={
                "scenario": doc["scenario"],
                "exit_code": code,
                "next_command": doc["next_command"],
                "evidence": doc["evidence"],
                "note": "a removed cluster reads as unreachable (scenario 1): files meanwhile",
            },
        )
