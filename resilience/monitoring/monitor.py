"""The monitor: one cycle reads every source, applies the rules, sends what is news, and leaves
a health document; :func:`run` repeats it and serves it (:mod:`.server`).

A source that fails is shown as unreachable in the document and its status; it never stops the
cycle, and a failing alert channel never stops it either (it is logged and shown).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from resilience.alerting.channels import Alerts
from resilience.config import Settings
from resilience.errors import ResilienceError
from resilience.infra.redact import Redactor, redact_dsn
from resilience.infra.timefmt import epoch_iso
from resilience.mirror.health import mirror_observation
from resilience.monitoring import charts
from resilience.monitoring.alertstate import AlertBook, Notification
from resilience.monitoring.datachecks import DataChecks
from resilience.monitoring.latency import SlidingWindow
from resilience.monitoring.rules import Finding, Observed, evaluate, overall
from resilience.monitoring.sources import (
    MonitorConnection,
    ServiceMetrics,
    SourceDown,
    SyntheticProbe,
    database_side,
    key_stats,
    scrape_service,
)

log = logging.getLogger(__name__)
ERRORS_KEPT = 20
HISTORY = "history"
EXIT_CODES = {"ok": 0, "warning": 1, "critical": 2}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class Monitor:
    """One monitor over one deployment (settings alone). ``alerting=False`` and
    ``keep_state=False`` give a read-only look (``invoke health`` without a running monitor)."""

    def __init__(
        self,
        settings: Settings,
        *,
        alerting: bool = True,
        keep_state: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.redactor = Redactor(settings.secret_values())
        self.book = AlertBook(settings.monitor_state_file if keep_state else None)
        self.alerts = (
            Alerts.from_settings(settings, timeout=settings.monitor_http_timeout)
            if alerting
            else None
        )
        if self.alerts is not None:
            self.alerts.redactor.register(*settings.secret_values())
        dsn = settings.service_dsn.get_secret_value() if settings.service_dsn else None
        own = settings.monitor_dsn.get_secret_value() if settings.monitor_dsn else dsn
        self.db = (
            MonitorConnection(
                own,
                connect_timeout=min(settings.db_connect_timeout, settings.monitor_http_timeout),
                statement_timeout_ms=settings.monitor_statement_timeout_ms,
            )
            if own
            else None
        )
        # the probe runs on its interval, or in every cycle the service's /metrics gives nothing
        self.probe = (
            SyntheticProbe(
                dsn,
                settings.company_id,
                connect_timeout=min(settings.db_connect_timeout, settings.monitor_http_timeout),
                slow_s=settings.slow_query_ms / 1000,
                batch=settings.probe_batch,
                statement_timeout_ms=settings.monitor_statement_timeout_ms,
            )
            if dsn
            else None
        )
        # the data checks run in the long-running monitor only (a one-off look is `diagnose`)
        self.data = DataChecks(settings, own) if own and alerting and keep_state else None
        self._next_probe = 0.0
        self._probe_seen = 0.0  # end time of the newest probe query already counted
        self._probe_ok = True  # the last probe's outcome, shown between probes
        self.pool_history: deque[dict[str, Any]] = deque(maxlen=settings.pool_samples)
        #: one sample per cycle (latency, pool, keys past expiry, mirror lag), kept across
        #: restarts with the alert states: the status page's charts, `health`'s sparklines
        self.history: deque[dict[str, Any]] = deque(
            self.book.memory.get(HISTORY, [])[-settings.pool_samples :],
            maxlen=settings.pool_samples,
        )
        self.errors: deque[dict[str, Any]] = deque(
            self.book.memory.get("errors", [])[-ERRORS_KEPT:], maxlen=ERRORS_KEPT
        )
        self.slow = SlidingWindow(
            settings.slow_query_window, self.book.memory.get("slow_events", [])
        )
        self.last: dict[str, Any] | None = None
        self.cycles = 0
        self._lock = threading.Lock()

    # --- one cycle -----------------------------------------------------------------------------

    def _error(self, at: float, source: str, message: str) -> None:
        self.errors.append(
            {"at": epoch_iso(at), "source": source, "error": self.redactor.text(message)}
        )

    def _scrape(self, now: float, sources: dict[str, Any]) -> ServiceMetrics | None:
        url = self.settings.metrics_url
        if not url:
            sources["metrics"] = {"state": "off", "why": "RESILIENCE_METRICS_URL is not set"}
            return None
        try:
            metrics = scrape_service(url, self.settings.monitor_http_timeout)
        except SourceDown as exc:
            sources["metrics"] = {"state": "unreachable", "url": url, "error": str(exc)}
            self._error(now, "metrics", str(exc))
            return None
        sources["metrics"] = {"state": "ok", "url": url}
        self._count_slow_from_counter(now, metrics)
        return metrics

    def _count_slow_from_counter(self, now: float, metrics: ServiceMetrics) -> None:
        """New slow queries since the last scrape, from the service's counter (a restarted
        service starts its counter again: everything it counted is new)."""
        if metrics.slow_total is None:
            return
        base = self.book.memory.get("slow_counter")
        new = 0
        if base is not None:
            same_process = base.get("start_time") == metrics.start_time
            if same_process and metrics.slow_total >= base["total"]:
                new = int(metrics.slow_total - base["total"])
            else:
                new = int(metrics.slow_total)
        self.book.memory["slow_counter"] = {
            "total": metrics.slow_total,
            "start_time": metrics.start_time,
        }
        if new:
            self.slow.add(now, new)

    def _run_probe(self, now: float, sources: dict[str, Any], metrics_ok: bool) -> None:
        if self.probe is None or (metrics_ok and self.settings.probe_interval == 0):
            return
        interval = self.settings.probe_interval or self.settings.monitor_interval
        if now < self._next_probe and self.settings.probe_interval > 0:
            sources["probe"] = {"state": "ok" if self._probe_ok else "unreachable"}
            return
        self._next_probe = now + interval
        try:
            found = self.probe.run()
        except SourceDown as exc:
            self._probe_ok = False
            sources["probe"] = {"state": "unreachable", "error": str(exc)}
            self._error(now, "probe", str(exc))
        else:
            self._probe_ok = True
            sources["probe"] = {"state": "ok", "keys_read": found}
        slow_s = self.settings.slow_query_ms / 1000
        for record in self.probe.recorder.ring.records():
            if record.at > self._probe_seen:
                if record.duration_s > slow_s:
                    self.slow.add(record.at)
                self._probe_seen = record.at

    def _database(self, now: float, sources: dict[str, Any]) -> tuple[dict[str, Any] | None, ...]:
        if self.db is None:
            sources["database"] = {"state": "off", "why": "RESILIENCE_SERVICE_DSN is not set"}
            return None, None
        dsn = self.settings.monitor_dsn or self.settings.service_dsn
        where = self.redactor.text(redact_dsn(dsn.get_secret_value())) if dsn else None
        try:
            conn = self.db.get()
            side = database_side(conn, self.settings.service_application_name)
        except SourceDown as exc:
            sources["database"] = {"state": "unreachable", "at": where, "error": str(exc)}
            self._error(now, "database", str(exc))
            return None, None
        except (psycopg.Error, ResilienceError) as exc:
            error = self.db.failed(exc)
            sources["database"] = {"state": "unreachable", "at": where, "error": str(error)}
            self._error(now, "database", str(error))
            return None, None
        sources["database"] = {"state": "ok", "at": where}
        try:
            keys = key_stats(conn, self.settings.cleanup_retention_days)
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
            # the keys table is locked or too slow to count: the database side still tells
            conn.rollback()
            sources["keys"] = {"state": "unreachable", "error": self.db.reason(exc)}
            self._error(now, "keys", self.db.reason(exc))
            return side, None
        except (psycopg.Error, ResilienceError) as exc:
            error = self.db.failed(exc)
            sources["keys"] = {"state": "unreachable", "error": str(error)}
            self._error(now, "keys", str(error))
            return side, None
        sources["keys"] = {"state": "ok"}
        return side, keys

    def _mirror(self, now: float, sources: dict[str, Any]) -> dict[str, Any] | None:
        """The live mirror's lag, backlog, repairs and process (off when none runs here)."""
        conn = None
        if self.db is not None and sources.get("database", {}).get("state") == "ok":
            with contextlib.suppress(SourceDown):
                conn = self.db.get()
        at = datetime.fromtimestamp(now, UTC)
        try:
            seen = mirror_observation(self.settings, conn, at)
        except psycopg.Error as exc:  # the backlog query; the position file still tells
            if self.db is not None:
                self.db.failed(exc)
            seen = mirror_observation(self.settings, None, at)
        sources["mirror"] = {k: seen[k] for k in ("state", "why", "error") if k in seen}
        return seen if seen["state"] == "ok" else None

    def _pool(self, now: float, metrics: ServiceMetrics | None) -> dict[str, Any] | None:
        if metrics is None or not metrics.has_pool:
            return None
        active = metrics.pool_active or 0.0
        idle = metrics.pool_idle or 0.0
        size_max = metrics.pool_max or 0.0
        sample = {
            "at": epoch_iso(now),
            "size": active + idle,
            "idle": idle,
            "active": active,
            "waiting": metrics.pool_waiting or 0.0,
            "max": size_max,
            "usage_pct": round(100 * active / size_max, 1) if size_max else None,
        }
        self.pool_history.append(sample)
        return sample

    def _latency(self, metrics: ServiceMetrics | None, now: float) -> dict[str, Any]:
        window = self.slow.count(now)
        if metrics is not None and metrics.queries_ok + metrics.queries_failed > 0:
            total = metrics.queries_ok + metrics.queries_failed
            q = metrics.quantiles_s
            return {
                "source": "metrics",
                "p50_ms": _ms(q.get("0.5")),
                "p95_ms": _ms(q.get("0.95")),
                "p99_ms": _ms(q.get("0.99")),
                "queries": int(total),
                "success_rate": round(metrics.queries_ok / total, 4),
                "slow_in_window": window,
            }
        if self.probe is not None and len(self.probe.recorder.ring):
            summary = self.probe.recorder.ring.summary()
            return {
                "source": "probe",
                "p50_ms": _ms(summary.p50_s),
                "p95_ms": _ms(summary.p95_s),
                "p99_ms": _ms(summary.p99_s),
                "queries": summary.count,
                "success_rate": summary.success_rate,
                "slow_in_window": window,
            }
        # no source: the same fields, unknown (the page and the history read them)
        return {
            "source": None,
            "p50_ms": None,
            "p95_ms": None,
            "p99_ms": None,
            "queries": None,
            "success_rate": None,
            "slow_in_window": window,
        }

    def cycle(self) -> dict[str, Any]:
        """One look at everything; the health document."""
        with self._lock:
            return self._cycle()

    def _cycle(self) -> dict[str, Any]:
        started = time.perf_counter()
        now = self.clock()
        sources: dict[str, Any] = {}
        metrics = self._scrape(now, sources)
        self._run_probe(now, sources, metrics is not None)
        side, keys = self._database(now, sources)
        mirror = self._mirror(now, sources)
        pool = self._pool(now, metrics)
        latency = self._latency(metrics, now)
        slowest = None
        if self.probe is not None:
            recent = [r.duration_s for r in self.probe.recorder.ring.records()[-50:] if r.ok]
            slowest = max(recent) * 1000 if recent else None
        db_error = (
            sources["database"].get("error") if sources["database"]["state"] != "ok" else None
        )
        observed = Observed(
            slow_in_window=latency["slow_in_window"],
            slowest_recent_ms=slowest,
            pool_usage_pct=pool["usage_pct"] if pool else None,
            pool_active=pool["active"] if pool else None,
            pool_max=pool["max"] if pool else None,
            pool_waiting=pool["waiting"] if pool else None,
            keys_past_expiry=keys["past_expiry"] if keys else None,
            keys_past_expiry_by_company=keys["past_expiry_by_company"] if keys else {},
            database_error=db_error if self.db is not None else None,
            metrics_error=sources["metrics"].get("error"),
            mirror_lag_s=mirror["lag_s"] if mirror else None,
            mirror_state=mirror["mirror_state"] if mirror else None,
        )
        findings = evaluate(observed, self.settings)
        hold = []
        if metrics is None:
            hold += ["pool_waiting", "pool_usage"]
        if keys is None:
            hold.append("keys_expired")
        data_summary = None
        if self.data is not None:
            self.data.maybe_start(now)
            data_findings, data_summary = self.data.observed()
            if data_summary is None or data_summary["state"] != "ok":
                hold += list(DataChecks.RULES)
            findings += data_findings
            sources["data"] = (
                {"state": "pending", "why": "the first integrity check is running"}
                if data_summary is None
                else {"state": data_summary["state"], "at": data_summary["at"]}
                | ({"error": data_summary["error"]} if "error" in data_summary else {})
            )
        if self.alerts is not None:
            self._send_pending(now)
            for note in self.book.update(findings, now, hold):
                self._send(note)
        else:  # read-only: what fires now, no memory of what was sent
            pass
        self.history.append(
            charts.sample(
                now,
                {"latency": latency, "pool": pool, "keys": keys, "mirror": mirror},
            )
        )
        self.book.memory[HISTORY] = list(self.history)
        self.book.memory["slow_events"] = self.slow.events(now)
        self.book.memory["errors"] = list(self.errors)
        if self.alerts is not None:
            try:
                self.book.save()
            except OSError as exc:
                self._error(now, "state", f"cannot write the monitor state: {exc}")
        self.cycles += 1
        doc = self._document(now, findings, sources, latency, pool, side, keys)
        doc["data"] = data_summary
        doc["mirror"] = mirror
        doc["cycle_s"] = round(time.perf_counter() - started, 4)
        self.last = doc
        return doc

    # --- alerts --------------------------------------------------------------------------------

    def _send(self, note: Notification) -> None:
        assert self.alerts is not None
        level = {"warning": "warning", "critical": "error"}.get(note.severity, "info")
        try:
            self.alerts.sentry.event(
                note.text, level=level, tags={"rule": note.rule, "kind": note.kind}
            )
        except Exception as exc:  # a channel never breaks the monitor
            self._error(note.at, "sentry", f"{type(exc).__name__}")
        if note.telegram:
            self._telegram(note.text, note.at)

    def _telegram(self, text: str, now: float) -> None:
        assert self.alerts is not None
        telegram = self.alerts.telegram
        if not telegram.enabled:
            return
        try:
            sent = telegram.send(text)
        except Exception as exc:  # a channel never breaks the monitor
            sent = False
            telegram.last_error = type(exc).__name__
        if sent:
            return
        self._error(now, "telegram", telegram.last_error or "not sent")
        if telegram.retry_after is not None:
            self.book.pending_telegram.append(
                {"text": text, "not_before": now + telegram.retry_after}
            )

    def _send_pending(self, now: float) -> None:
        due = [p for p in self.book.pending_telegram if p["not_before"] <= now]
        if not due:
            return
        self.book.pending_telegram = [p for p in self.book.pending_telegram if p not in due]
        for item in due:
            self._telegram(item["text"], now)

    # --- the document --------------------------------------------------------------------------

    def _document(
        self,
        now: float,
        findings: list[Finding],
        sources: dict[str, Any],
        latency: dict[str, Any],
        pool: dict[str, Any] | None,
        side: dict[str, Any] | None,
        keys: dict[str, Any] | None,
    ) -> dict[str, Any]:
        status = overall(findings)
        return {
            "status": status,
            "exit_code": EXIT_CODES[status],
            "checked_at": epoch_iso(now),
            "company": self.settings.company_id,
            "cycle": self.cycles,
            "sources": sources,
            "findings": [f.to_dict() for f in findings],
            "latency": latency,
            "pool": None
            if pool is None
            else {**pool, "source": "metrics", "samples": len(self.pool_history)},
            "keys": None if keys is None else {**keys, "source": "database"},
            "database": None if side is None else {**side, "source": "database"},
            "alerts": {
                "firing": self.book.firing() if self.alerts is not None else [],
                "recent": list(reversed(self.book.recent[-20:])),
                "pending_telegram": len(self.book.pending_telegram),
            },
            "errors": list(reversed(self.errors)),
            "thresholds": {
                "slow_query_ms": self.settings.slow_query_ms,
                "slow_query_count": self.settings.slow_query_count,
                "slow_query_window_s": self.settings.slow_query_window,
                "alert_cooldown_s": self.settings.alert_cooldown,
                "pool_usage_warn_pct": self.settings.pool_usage_warn_pct,
                "pool_waiting_critical": self.settings.pool_waiting_critical,
                "keys_expired_warn": self.settings.keys_expired_warn,
                "keys_expired_critical": self.settings.keys_expired_critical,
            },
        }

    def close(self) -> None:
        if self.data is not None:
            self.data.close()
        if self.db is not None:
            self.db.close()
        if self.probe is not None:
            self.probe.close()
        if self.alerts is not None:
            self.alerts.close()
