"""The monitoring library: percentiles, the sliding window, rules, alert state across restarts,
the metric contract, the alert channels' bad answers, and a cycle against the real database."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from resilience.alerting.channels import Alerts
from resilience.authstate import pgraw
from resilience.authstate.pgconn import Conn
from resilience.config import Settings, load_settings
from resilience.drill.stack import Stack
from resilience.errors import ConfigError
from resilience.infra.waiting import wait_until
from resilience.monitoring.alertstate import AlertBook
from resilience.monitoring.instrument import QueryRecorder, timed_cursor_class
from resilience.monitoring.latency import (
    QueryRecord,
    SlidingWindow,
    nearest_rank,
    sql_head,
    summarize,
)
from resilience.monitoring.monitor import Monitor
from resilience.monitoring.rules import Finding, Observed, evaluate
from resilience.monitoring.server import render_page, serve
from resilience.monitoring.sources import parse_metrics

# --- latency -----------------------------------------------------------------------------------


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=300), st.integers(1, 100))
def test_nearest_rank_is_a_member_with_enough_values_at_or_below(
    values: list[float], p: int
) -> None:
    ordered = sorted(values)
    value = nearest_rank(ordered, p)
    assert value in ordered
    at_or_below = sum(1 for v in ordered if v <= value)
    assert at_or_below / len(ordered) >= p / 100
    below = sum(1 for v in ordered if v < value)
    assert below / len(ordered) < p / 100


def test_percentiles_are_nearest_rank_over_successes_only() -> None:
    records = [QueryRecord(0, d / 1000, True, 1, "q") for d in range(1, 101)]
    records.append(QueryRecord(0, 99.0, False, -1, "q"))  # a failure never counts as latency
    summary = summarize(records)
    assert (summary.p50_s, summary.p95_s, summary.p99_s) == (0.05, 0.095, 0.099)
    assert summary.count == 101 and summary.failed == 1
    assert summary.success_rate == pytest.approx(100 / 101)


def test_sql_head_keeps_the_statement_start_and_never_parameters() -> None:
    assert sql_head("SELECT  *\n FROM t WHERE a = %s") == "SELECT * FROM t WHERE a = %s"
    assert len(sql_head("SELECT " + "x" * 500)) == 100


def test_the_sliding_window_forgets_exactly_what_is_older_than_it() -> None:
    window = SlidingWindow(300)
    window.add(1000.0, 2)
    window.add(1100.0)
    assert window.count(1100.0) == 3
    assert window.count(1299.9) == 3
    assert window.count(1300.0) == 1  # the two at 1000 left at 1000 + 300
    assert window.count(1400.0) == 0
    assert SlidingWindow(10, [5.0, 1.0]).events(6.0) == [1.0, 5.0]


# --- instrumentation ----------------------------------------------------------------------------


def test_timed_cursor_records_every_statement_and_publishes_the_contract(conn: Conn) -> None:
    registry = CollectorRegistry()
    recorder = QueryRecorder(registry, slow_s=0.05)
    conn.cursor_factory = timed_cursor_class(recorder)
    conn.execute("SELECT 1").fetchall()
    conn.execute("SELECT pg_sleep(0.06)").fetchall()
    with pytest.raises(Exception):  # noqa: B017 - any psycopg error
        conn.execute("SELECT * FROM no_such_table_here")
    records = recorder.ring.records()
    assert [r.ok for r in records] == [True, True, False]
    assert records[1].duration_s >= 0.06 and records[0].rows == 1
    metrics = parse_metrics(generate_latest(registry).decode())
    assert metrics.queries_ok == 2 and metrics.queries_failed == 1
    assert metrics.slow_total == 1
    assert metrics.quantiles_s["0.99"] == pytest.approx(records[1].duration_s)


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RESILIENCE_SLOW_QUERY_MS", "-5"),
        ("RESILIENCE_POOL_WAITING_CRITICAL", "many"),
        ("RESILIENCE_KEYS_EXPIRED_WARN", "0"),
        ("RESILIENCE_ALERT_COOLDOWN", "soon"),
        ("RESILIENCE_METRICS_URL", "localhost:9000/metrics"),
    ],
)
def test_bad_thresholds_are_refused_naming_the_setting(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings(env_file=None)
    assert name in str(err.value) and value not in str(err.value).replace(name, "")


def test_a_critical_keys_threshold_below_the_warning_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESILIENCE_KEYS_EXPIRED_WARN", "600")
    with pytest.raises(ConfigError, match="RESILIENCE_KEYS_EXPIRED_CRITICAL"):
        load_settings(env_file=None)


# --- rules and alert state ---------------------------------------------------------------------


def _observed(**kw: Any) -> Observed:
    base: dict[str, Any] = dict(
        slow_in_window=0,
        slowest_recent_ms=None,
        pool_usage_pct=None,
        pool_active=None,
        pool_max=None,
        pool_waiting=None,
        keys_past_expiry=0,
        keys_past_expiry_by_company={},
        database_error=None,
        metrics_error=None,
    )
    base.update(kw)
    return Observed(**base)


def test_rules_apply_the_domain_thresholds() -> None:
    s = Settings()
    rules = lambda **kw: {(f.rule, f.severity) for f in evaluate(_observed(**kw), s)}  # noqa: E731
    assert rules() == set()
    assert rules(slow_in_window=2) == {("slow_query", "warning")}
    assert rules(slow_in_window=3) == {("slow_query", "warning"), ("slow_queries", "critical")}
    assert rules(pool_usage_pct=81, pool_active=9, pool_max=10, pool_waiting=5) == {
        ("pool_usage", "warning")
    }
    assert ("pool_waiting", "critical") in rules(
        pool_usage_pct=100, pool_active=10, pool_max=10, pool_waiting=6
    )
    assert rules(keys_past_expiry=99) == set()
    assert rules(keys_past_expiry=100) == {("keys_expired", "warning")}
    assert rules(keys_past_expiry=500) == {("keys_expired", "critical")}
    assert rules(database_error="refused") == {("database_unreachable", "critical")}
    keys = evaluate(_observed(keys_past_expiry=500), s)[0]
    assert keys.cooldown_s == 1800 and keys.telegram


def test_alert_book_fires_once_per_cooldown_then_resolves_once(tmp_path: Path) -> None:
    book = AlertBook(tmp_path / "state.json")
    slow = Finding("slow_queries", "critical", "3 slow", 300)
    assert [n.kind for n in book.update([slow], 1000)] == ["fired"]
    assert book.update([slow], 1010) == []  # identical, in the cooldown
    assert book.update([Finding("slow_queries", "critical", "4 slow", 300)], 1200) == []
    assert [n.kind for n in book.update([slow], 1300)] == ["reminder"]
    notes = book.update([], 1310)
    assert [(n.kind, n.telegram) for n in notes] == [("resolved", True)]
    assert book.update([], 1320) == []
    assert [r["kind"] for r in book.recent] == ["fired", "reminder", "resolved"]


def test_escalation_is_news_inside_the_cooldown(tmp_path: Path) -> None:
    book = AlertBook(None)
    assert book.update([Finding("keys_expired", "warning", "150", 1800)], 0)[0].kind == "fired"
    notes = book.update([Finding("keys_expired", "critical", "600", 1800)], 10)
    assert [(n.kind, n.severity, n.telegram) for n in notes] == [("fired", "critical", True)]


def test_a_restarted_book_does_not_repeat_a_firing_alert(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first = AlertBook(path)
    first.update([Finding("pool_waiting", "critical", "8 waiting", 300)], 1000)
    first.memory["slow_events"] = [990.0]
    first.save()
    again = AlertBook(path)
    assert again.update([Finding("pool_waiting", "critical", "8 waiting", 300)], 1100) == []
    assert again.memory["slow_events"] == [990.0]
    assert [n.kind for n in again.update([], 1110)] == ["resolved"]


def test_an_unreadable_state_file_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    book = AlertBook(path)
    assert book.rules == {}
    path.write_text(json.dumps({"format": 99, "rules": {}}))
    assert AlertBook(path).rules == {}


# --- Telegram's bad answers ---------------------------------------------------------------------


class _Telegram:
    """A Bot API that answers what the test says, served by Werkzeug."""

    def __init__(self) -> None:
        self.answer: tuple[int, dict[str, Any]] = (200, {"ok": True, "result": {}})
        self.hang = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        self.calls += 1
        if self.hang.is_set():
            self.release.wait(10)
        status, body = self.answer
        response = Response(json.dumps(body), status=status, content_type="application/json")
        _ = request
        return response(environ, start_response)


@pytest.fixture
def telegram() -> Iterator[tuple[_Telegram, str]]:
    app = _Telegram()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.port}"
    app.release.set()
    server.shutdown()


def _alerts(url: str, timeout: float = 10.0) -> Alerts:
    return Alerts.from_endpoints(None, url, "123:SECRET-TOKEN-abc", "42", timeout=timeout)


def test_telegram_401_500_and_a_hang_are_reported_never_raised(
    telegram: tuple[_Telegram, str],
) -> None:
    app, url = telegram
    channel = _alerts(url, timeout=0.5).telegram
    app.answer = (401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
    assert channel.send("x") is False and channel.last_error == "Telegram answered HTTP 401"
    app.answer = (500, {"ok": False})
    assert channel.send("x") is False and "500" in (channel.last_error or "")
    app.hang.set()
    assert channel.send("x") is False
    assert channel.last_error == "sending failed: ReadTimeout"
    assert "SECRET" not in (channel.last_error or "")


def test_telegram_429_gives_retry_after_and_the_monitor_sends_it_later(
    telegram: tuple[_Telegram, str], tmp_path: Path
) -> None:
    app, url = telegram
    app.answer = (429, {"ok": False, "error_code": 429, "parameters": {"retry_after": 7}})
    settings = Settings(
        telegram_api_url=url,
        telegram_bot_token=SecretStr("123:SECRET-TOKEN-abc"),
        telegram_chat_id="42",
        monitor_state_file=tmp_path / "state.json",
    )
    now = [1000.0]
    monitor = Monitor(settings, clock=lambda: now[0])
    try:
        monitor._telegram("[CRITICAL] test", now[0])
        assert monitor.book.pending_telegram == [{"text": "[CRITICAL] test", "not_before": 1007.0}]
        app.answer = (200, {"ok": True, "result": {}})
        calls = app.calls
        monitor._send_pending(1005.0)  # not yet: Telegram asked for 7 s
        assert app.calls == calls
        monitor._send_pending(1007.0)
        assert app.calls == calls + 1 and monitor.book.pending_telegram == []
    finally:
        monitor.close()


# --- a cycle against the real database ----------------------------------------------------------


def _settings(stack: Stack, tmp_path: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "service_dsn": SecretStr(stack.endpoints.service_dsn),
        "company_id": "demo",
        "monitor_state_file": tmp_path / "state.json",
        "monitor_http_timeout": 2.0,
    }
    values.update(kw)
    return Settings.model_validate(values)


@pytest.mark.stack
def test_a_cycle_reads_keys_database_and_probe_and_survives_bad_sources(
    stack: Stack, tmp_path: Path
) -> None:
    settings = _settings(
        stack,
        tmp_path,
        metrics_url="http://127.0.0.1:9/metrics",  # nothing listens on the discard port
        sentry_dsn=SecretStr("https://not-a-sentry-dsn"),
    )
    monitor = Monitor(settings)
    try:
        doc = monitor.cycle()
    finally:
        monitor.close()
    assert doc["sources"]["database"]["state"] == "ok"
    assert doc["sources"]["metrics"]["state"] == "unreachable"
    assert doc["sources"]["probe"]["state"] == "ok"
    assert doc["latency"]["source"] == "probe"
    assert doc["keys"]["total"] >= 0 and set(doc["keys"]["age_histogram"]) == {
        "<1d", "1-7d", "7-14d", "14-30d", ">30d"
    }  # fmt: skip
    assert doc["database"]["max_connections"] > 0
    assert "baileys-resilience-monitor" in doc["database"]["connections"]
    assert {f["rule"] for f in doc["findings"]} >= {"metrics_unreachable"}
    assert doc["status"] in ("warning", "critical")


@pytest.mark.stack
def test_a_database_that_goes_away_is_shown_unreachable_and_alerted(
    stack: Stack, tmp_path: Path
) -> None:
    from resilience.chaos import faults
    from resilience.chaos.toxiproxy import ToxiproxyClient

    settings = _settings(stack, tmp_path)
    monitor = Monitor(settings, alerting=False)
    try:
        assert monitor.cycle()["sources"]["database"]["state"] == "ok"
        with (
            ToxiproxyClient(stack.endpoints.toxiproxy_url) as toxiproxy,
            faults.proxy_disabled(toxiproxy, stack.endpoints.toxiproxy_proxy),
        ):
            doc = monitor.cycle()
        assert doc["sources"]["database"]["state"] == "unreachable"
        assert doc["status"] == "critical"
        assert "database_unreachable" in {f["rule"] for f in doc["findings"]}
        assert "***" in json.dumps(doc) or "password" not in json.dumps(doc)
        assert monitor.cycle()["sources"]["database"]["state"] == "ok"  # and it comes back
    finally:
        monitor.close()


@pytest.mark.stack
def test_the_server_answers_page_health_and_metrics(stack: Stack, tmp_path: Path) -> None:
    settings = _settings(stack, tmp_path, monitor_port=0)
    monitor = Monitor(settings, alerting=False)
    server = serve(monitor, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert httpx.get(base + "/health.json").status_code == 503  # before the first cycle
        doc = monitor.cycle()
        health = httpx.get(base + "/health.json").json()
        assert health["status"] == doc["status"]
        page = httpx.get(base + "/").text
        assert f'data-status="{doc["status"]}"' in page and "<script" in page
        assert "http://" not in page.split("<script")[0].split("</style>")[0]  # no assets
        fragment = httpx.get(base + "/?fragment=1").text
        assert "<html" not in fragment and 'id="status"' in fragment
        metrics = httpx.get(base + "/metrics").text
        assert "baileys_monitor_status" in metrics
    finally:
        server.shutdown()
        monitor.close()
    assert render_page(doc, [], 10.0).startswith("<!doctype html>")


def test_a_held_rule_is_neither_resolved_nor_repeated() -> None:
    book = AlertBook(None)
    book.update([Finding("keys_expired", "critical", "600", 1800)], 0)
    assert book.update([], 10, hold=["keys_expired"]) == []  # its source was down: unseen
    assert book.firing()[0]["rule"] == "keys_expired"
    assert [n.kind for n in book.update([], 20)] == ["resolved"]


@pytest.mark.stack
def test_the_monitor_finds_corrupt_creds_by_its_data_checks(
    stack: Stack, tmp_path: Path, admin: Conn
) -> None:
    from resilience.authstate.dataset import generate

    company = f"t_{tmp_path.name[-8:].replace('-', '_')}"
    data = generate(company, 20)
    pgraw.insert_raw(admin, company, data.creds, data.rows())
    try:
        admin.execute("UPDATE whatsapp_auth SET creds = '{}' WHERE company_id = %s", (company,))
        settings = _settings(stack, tmp_path, integrity_interval=0.1)
        monitor = Monitor(settings)
        try:
            assert monitor.data is not None
            first = monitor.cycle()
            assert first["sources"]["data"]["state"] in ("pending", "ok")

            def checked() -> dict[str, Any] | None:
                doc = monitor.cycle()
                return doc if doc["data"] else None

            doc = wait_until(checked, 30, "the data checks")
        finally:
            monitor.close()
        assert doc["data"].get("scenario") == 2, doc["data"]
        integrity = [f for f in doc["findings"] if f["rule"] == "integrity"]
        assert integrity and integrity[0]["severity"] == "critical"
        assert "scenario 2" in integrity[0]["message"] and company in integrity[0]["message"]
        assert "next:" in integrity[0]["message"]
    finally:
        pgraw.delete_company(admin, company)
