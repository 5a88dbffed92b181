"""Monitoring drill: the monitor runs under PM2 beside the stand-in service, faults are
injected on the real stack, and every assertion is on what the Sentry and Telegram receivers
got, what the monitor serves, and what a real browser shows.

Steady state: the monitor reports ``ok``, no rule fires. Time is scaled (a window and cooldown
of seconds instead of 5 minutes) through the monitor's own settings; thresholds are the
docs/domain.md §7's (500 ms, 3 slow queries, more than 5 waiting, 100 and 500 keys past expiry).

a) a 700 ms latency toxic on the service's path: slow-query warnings (Sentry) and one Telegram
   alert per cooldown window, then exactly one "resolved" once the toxic is gone;
b) every pool connection held (an ACCESS EXCLUSIVE lock taken by another session): a critical
   waiting alert, and the lock seen on the database side;
c) 600 keys aged past expiry: a critical keys alert; the monitor restarted by PM2 in the middle
   does not send it again; the status page in headless Chromium shows what the monitor reports
   and refreshes; the runbook's fix (`cleanup.keys --expired --yes`) resolves it;
d) every fault gone: no new alert for a full window.

The monitor uses its own stack (its key counts must be this drill's alone).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from resilience.authstate.pgconn import connect
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings, Settings, load_drill_settings, settings_as_env
from resilience.drill.browser import render, screenshot
from resilience.drill.fakes.receivers import ReceiverClient
from resilience.drill.fakes.telegram import TelegramRecord
from resilience.drill.monitor import monitor_under_pm2
from resilience.drill.report import DrillReport
from resilience.drill.reporting.targets import target
from resilience.drill.stack import Stack
from resilience.drill.stack.local import LocalStack
from resilience.drill.standin.deploy import StandinOnStack, standin_on_stack
from resilience.infra.pm2 import Pm2
from resilience.infra.waiting import wait_until
from resilience.maintenance.cleanup import cleanup_keys

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
TAG = "baileys auth monitor"
WINDOW_S = 8.0  # the slow-query window, scaled from 300 s
COOLDOWN_S = 8.0  # the alert cooldown, scaled from 300 s
KEYS_COOLDOWN_S = 120.0  # long enough to restart the monitor inside it
AGED_KEYS = 600


@dataclass
class Rig:
    stack: Stack
    service: StandinOnStack
    settings: Settings  # the monitor's
    url: str
    pm2: Pm2
    receivers: ReceiverClient

    def health(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/health.json", timeout=5)
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc

    def wait_health(self, predicate: Any, timeout: float = 60, what: str = "") -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            try:
                doc = self.health()
            except httpx.HTTPError:
                return None
            return doc if predicate(doc) else None

        result: dict[str, Any] = wait_until(check, timeout, what or "monitor health", interval=0.2)
        return result

    def telegram(self, rule: str | None = None, since: int = 0) -> list[TelegramRecord]:
        out = [
            m
            for m in self.receivers.telegram_messages()
            if TAG in m.get("text", "") and m.get("seq", 0) > since
        ]
        if rule is not None:
            out = [m for m in out if f"{TAG}, {rule}:" in m.get("text", "")]
        return out

    def sentry(self, rule: str, since: int = 0) -> list[dict[str, Any]]:
        return [
            dict(e)
            for e in self.receivers.sentry_events()
            if e.get("tags", {}).get("rule") == rule and e.get("seq", 0) > since
        ]

    def last_seq(self) -> int:
        seqs = [m.get("seq", 0) for m in self.receivers.telegram_messages()]
        seqs += [e.get("seq", 0) for e in self.receivers.sentry_events()]
        return max(seqs, default=0)

    def steady(self) -> dict[str, Any]:
        return self.wait_health(
            lambda d: d["status"] == "ok" and not d["alerts"]["firing"] and d["pool"],
            timeout=60,
            what="the monitor reporting ok with nothing firing",
        )


def _kinds(messages: list[TelegramRecord]) -> list[str]:
    out = []
    for m in messages:
        text = m.get("text", "")
        out.append(
            "resolved"
            if text.startswith("[RESOLVED]")
            else "reminder"
            if "still firing" in text
            else "fired"
        )
    return out


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, settings: DrillSettings) -> Iterator[Rig]:
    if settings.backend != "local":
        pytest.skip("the monitoring drill counts keys on a stack of its own (local backend)")
    base = tmp_path_factory.mktemp("monitoring")
    drill = load_drill_settings(env_file=None, stack_dir=base / "stack", tools_dir=ROOT / ".tools")
    stack = LocalStack(drill)
    with (
        stack,
        standin_on_stack(
            stack,
            drill,
            base / "svc",
            prefix="mon",
            keys=300,
            write_interval_ms=100,
            # a pool of 2 and 8 readers: idle in steady state, exhausted when a lock holds it
            extra_env={"DB_POOL_SIZE": "2", "STANDIN_READERS": "8", "READ_INTERVAL_MS": "2000"},
        ) as service,
    ):
        ep = stack.endpoints
        with connect(ep.admin_dsn, autocommit=True) as admin:  # nothing past expiry at start
            admin.execute(
                "UPDATE whatsapp_keys SET expires_at = now() + interval '7 days'"
                " WHERE expires_at < now() + interval '1 day'"
            )
        monitors = monitor_under_pm2(
            stack,
            service.settings,
            base,
            monitor_page_refresh=1.0,
            slow_query_window=WINDOW_S,
            alert_cooldown=COOLDOWN_S,
            keys_alert_cooldown=KEYS_COOLDOWN_S,
            runs_dir=base / "runs",
        )
        with (
            monitors as (monitor_settings, url),
            ReceiverClient(ep.receivers_url or "") as receivers,
        ):
            rig = Rig(stack, service, monitor_settings, url, service.pm2, receivers)
            rig.wait_health(lambda d: d["cycle"] >= 1, timeout=90, what="the monitor's first cycle")
            yield rig


def test_a_latency_gives_warnings_one_page_per_cooldown_and_one_resolved(
    rig: Rig, monitoring_report: DrillReport
) -> None:
    ep = rig.stack.endpoints
    with monitoring_report.scenario("a) 700 ms latency on the service's path", ep.admin_dsn) as j:
        j.steady_state("before", {"status": rig.steady()["status"]})
        since = rig.last_seq()
        with (
            ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
            j.step("latency toxic 700 ms until the slow queries page"),
            faults.latency(toxiproxy, ep.toxiproxy_proxy, 700),
        ):
            began = time.monotonic()
            j.event("fault", "latency toxic of 700 ms on the postgres proxy")
            rig.receivers.wait_for(
                "telegram",
                lambda m: f"{TAG}, slow_queries:" in m.get("text", "") and m["seq"] > since,
                timeout=60,
            )
            paged_after = time.monotonic() - began
            j.event("alert", "Telegram: slow_queries paged")
            # keep the fault for one and a half cooldowns: at most one reminder may come
            wait_until(
                lambda: time.monotonic() - began >= paged_after + 1.5 * COOLDOWN_S or None,
                60,
                "one and a half cooldowns",
                interval=0.2,
            )
            fault_s = time.monotonic() - began
        cleared = time.monotonic()
        j.event("fault", "removed: latency toxic")
        with j.step("toxic removed: wait for the resolved message"):
            rig.receivers.wait_for(
                "telegram",
                lambda m: (
                    m.get("text", "").startswith("[RESOLVED]")
                    and f"{TAG}, slow_queries:" in m.get("text", "")
                    and m["seq"] > since
                ),
                timeout=WINDOW_S + 30,
            )
            resolved_after = time.monotonic() - cleared
            j.event("alert", "Telegram: slow_queries resolved")
        after = rig.steady()
        pages = rig.telegram("slow_queries", since)
        kinds = _kinds(pages)
        warnings = rig.sentry("slow_query", since)
        j.steady_state("after", {"status": after["status"]})
        # what the receivers got
        fired = [e for e in warnings if e.get("tags", {}).get("kind") != "resolved"]
        assert fired and {e.get("level") for e in fired} == {"warning"}
        assert kinds.count("fired") == 1 and kinds.count("resolved") == 1
        assert kinds[0] == "fired" and kinds[-1] == "resolved"
        # one page per cooldown window: the reminders are a cooldown apart, never closer
        sends = [
            datetime.fromisoformat(m["received_at"]).timestamp()
            for m in pages
            if not m.get("text", "").startswith("[RESOLVED]")
        ]
        assert all(b - a >= COOLDOWN_S - 1.5 for a, b in itertools.pairwise(sends))
        resolved_at = datetime.fromisoformat(pages[-1]["received_at"]).timestamp()
        firing_s = resolved_at - sends[0]  # the fault, then the window draining
        assert len(sends) <= int(firing_s // COOLDOWN_S) + 1
        errors = rig.sentry("slow_queries", since)
        assert any(e.get("level") == "error" for e in errors)
        j.finish(
            "completed",
            deviated=False,
            measurements={
                "paged_after_s": round(paged_after, 2),
                "paged_after_limit_s": 60,
                "fault_s": round(fault_s, 2),
                "firing_s": round(firing_s, 2),
                "resolved_after_s": round(resolved_after, 2),
                "telegram": kinds,
                "sentry_slow_query_warnings": len(warnings),
                "targets": {
                    "Telegram pages fired": target(kinds.count("fired"), 1, "=="),
                    "Telegram resolved messages": target(kinds.count("resolved"), 1, "=="),
                    "pages, one per cooldown at most": target(
                        len(sends), int(firing_s // COOLDOWN_S) + 1
                    ),
                    "Sentry slow-query warnings": target(len(fired), 1, ">="),
                },
            },
        )


def test_b_every_pool_connection_held_is_critical(rig: Rig, monitoring_report: DrillReport) -> None:
    ep = rig.stack.endpoints
    with monitoring_report.scenario("b) every pool connection held", ep.admin_dsn) as j:
        j.steady_state("before", {"status": rig.steady()["status"]})
        since = rig.last_seq()
        locker = psycopg.connect(ep.admin_dsn)
        try:
            with j.step("ACCESS EXCLUSIVE lock on whatsapp_keys until the page"):
                locker.execute("LOCK TABLE whatsapp_keys IN ACCESS EXCLUSIVE MODE")
                j.event("fault", "another session holds an ACCESS EXCLUSIVE lock on whatsapp_keys")
                page = rig.receivers.wait_for(
                    "telegram",
                    lambda m: f"{TAG}, pool_waiting:" in m.get("text", "") and m["seq"] > since,
                    timeout=60,
                )
                j.event("alert", "Telegram: pool_waiting paged")
                held = rig.wait_health(lambda d: d["pool"] and d["pool"]["waiting"] > 5, timeout=30)
                j.event("health", f"monitor: {held['pool']['waiting']} waiting on the pool")
        finally:
            locker.rollback()
            locker.close()
        j.event("fault", "removed: lock released")
        with j.step("lock released: wait for the resolved message"):
            rig.receivers.wait_for(
                "telegram",
                lambda m: (
                    m.get("text", "").startswith("[RESOLVED]")
                    and f"{TAG}, pool_waiting:" in m.get("text", "")
                ),
                timeout=60,
            )
        after = rig.steady()
        j.steady_state("after", {"status": after["status"]})
        assert page["text"].startswith("[CRITICAL]")
        assert held["pool"]["active"] == held["pool"]["max"] == 2
        assert held["database"]["waiting_on_lock"] >= 1  # the database side saw it too
        assert held["sources"]["keys"]["state"] == "unreachable"  # the monitor did not queue
        j.finish(
            "completed",
            deviated=False,
            measurements={
                "waiting": held["pool"]["waiting"],
                "waiting_min": 6,
                "waiting_on_lock": held["database"]["waiting_on_lock"],
                "telegram": _kinds(rig.telegram("pool_waiting", since)),
                "targets": {"critical page": target(page["text"][:10], "[CRITICAL]", "==")},
            },
        )


def test_c_aged_keys_are_critical_once_across_a_restart_and_shown_in_a_browser(
    rig: Rig, monitoring_report: DrillReport
) -> None:
    ep = rig.stack.endpoints
    company = rig.service.dataset.company_id
    with monitoring_report.scenario("c) 600 keys aged past expiry", ep.admin_dsn) as j:
        j.steady_state("before", {"status": rig.steady()["status"]})
        since = rig.last_seq()
        with j.step("600 keys aged past expiry"), connect(ep.admin_dsn, autocommit=True) as c:
            c.execute(
                "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at,"
                " expires_at) SELECT %s, 'pre-key', 'aged-' || g,"
                ' \'{"keyPair": {"public": {"type": "Buffer", "data": "AQID"}}}\','
                " now() - interval '20 days', now() - interval '6 days'"
                " FROM generate_series(1, %s) g",
                (company, AGED_KEYS),
            )
        j.event("fault", f"{AGED_KEYS} keys of {company} aged past expiry")
        rig.receivers.wait_for(
            "telegram",
            lambda m: f"{TAG}, keys_expired:" in m.get("text", "") and m["seq"] > since,
            timeout=30,
        )
        j.event("alert", "Telegram: keys_expired paged")
        with j.step("monitor restarted by PM2 while the alert fires"):
            before = rig.health()
            rig.pm2.restart(rig.settings.monitor_app)
            restarted = rig.wait_health(
                lambda d: d["cycle"] >= 5 and d["checked_at"] > before["checked_at"],
                timeout=90,
                what="five cycles of the restarted monitor",
            )
        assert restarted["cycle"] < before["cycle"] + 5  # a new process counts from 1
        assert restarted["status"] == "critical"
        j.event("health", f"restarted monitor: {restarted['status']}, cycle {restarted['cycle']}")
        assert len(rig.telegram("keys_expired", since)) == 1  # not sent again

        with j.step("status page in headless Chromium"):
            dom = render(rig.url + "/", wait_ms=3500)
            shown = rig.health()["status"]
            shot = screenshot(rig.url + "/", REPORTS / "drill-monitoring-status.png", wait_ms=1500)
        assert f'data-status="{shown}"' in dom and shown == "critical"
        refreshed = int(dom.split('id="refreshes">', 1)[1].split("<", 1)[0])
        assert refreshed >= 2
        assert f"{AGED_KEYS}" in dom  # the page shows the count the monitor counted
        j.event("evidence", f"status page screenshot {shot.name}", refreshes=refreshed)

        with j.step("health --once --json, as an operator runs it"):
            result = subprocess.run(
                [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "health", "--once",
                 "--json"],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=rig.settings.runs_dir.parent,
                env={**os.environ, **settings_as_env(rig.settings)},
                check=False,
            )  # fmt: skip
        doc = json.loads(result.stdout)
        assert result.returncode == 2 and doc["status"] == "critical"
        assert "monitor" in doc["via"]
        assert ep.admin_dsn.split("@")[0].split(":")[-1] not in result.stdout  # no password

        with j.step("the runbook's fix: cleanup.keys --expired --yes"):
            run = cleanup_keys(rig.settings, expired=True, yes=True)
        deleted = run.to_dict()["deleted"]
        j.event("fault", f"removed: cleanup deleted {deleted} keys")
        assert deleted == AGED_KEYS
        rig.receivers.wait_for(
            "telegram",
            lambda m: (
                m.get("text", "").startswith("[RESOLVED]")
                and f"{TAG}, keys_expired:" in m.get("text", "")
            ),
            timeout=60,
        )
        j.event("alert", "Telegram: keys_expired resolved")
        after = rig.steady()
        j.steady_state("after", {"status": after["status"]})
        j.finish(
            "completed",
            deviated=False,
            measurements={
                "telegram": _kinds(rig.telegram("keys_expired", since)),
                "cycles_after_restart": restarted["cycle"],
                "page_refreshes": refreshed,
                "page_refreshes_min": 2,
                "health_exit_code": result.returncode,
                "health_exit_code_expected": 2,
                "deleted": deleted,
                "deleted_expected": AGED_KEYS,
                "targets": {
                    "pages across the restart": target(
                        _kinds(rig.telegram("keys_expired", since)).count("fired"), 1, "=="
                    )
                },
            },
        )


def test_d_once_every_fault_is_gone_no_alert_for_a_full_window(
    rig: Rig, monitoring_report: DrillReport
) -> None:
    ep = rig.stack.endpoints
    with monitoring_report.scenario("d) quiet once every fault is gone", ep.admin_dsn) as j:
        steady = rig.steady()
        j.steady_state("before", {"status": steady["status"]})
        since = rig.last_seq()
        began = time.monotonic()
        last = rig.wait_health(
            lambda d: time.monotonic() - began >= WINDOW_S + COOLDOWN_S and d["cycle"] > 0,
            timeout=WINDOW_S + COOLDOWN_S + 30,
            what="a full window and cooldown",
        )
        new_pages = rig.telegram(since=since)
        events = [
            e for e in rig.receivers.sentry_events() if e.get("seq", 0) > since
            and TAG in (e.get("message") or "")
        ]  # fmt: skip
        # One auth query over 500 ms is a warning, not an alert: a shared CI machine under load
        # gives one now and then. It stays below the count that pages, so it is counted, not
        # failed; every other event (and every page) is an alert the quiet window must not see.
        warnings = [e for e in events if e.get("tags", {}).get("rule") == "slow_query"]
        new_events = [e for e in events if e not in warnings]
        j.steady_state("after", {"status": last["status"]})
        assert last["status"] == "ok" and not new_pages and not new_events
        j.finish(
            "completed",
            deviated=False,
            measurements={
                "quiet_s": WINDOW_S + COOLDOWN_S,
                "slow_query_warnings": len(warnings),
                "targets": {"alerts in the quiet window": target(len(new_pages + new_events), 0)},
            },
        )
