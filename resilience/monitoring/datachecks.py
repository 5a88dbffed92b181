"""The data branches of `diagnose` in the monitor: integrity and completeness per company,
against the newest backup, on a schedule of their own and off the cycle."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from resilience.config import Settings
from resilience.errors import ResilienceError
from resilience.infra.timefmt import epoch_iso
from resilience.monitoring.rules import Finding
from resilience.monitoring.sources import MonitorConnection, SourceDown


class DataChecks:
    """The data branches of `diagnose` (integrity and completeness per company, against the
    newest backup), every ``integrity_interval`` seconds, in a thread and on a connection of
    their own: they read every key, so they never run inside a cycle."""

    RULES = ("integrity", "completeness")

    def __init__(self, settings: Settings, dsn: str) -> None:
        self.settings = settings
        self.connection = MonitorConnection(
            dsn,
            connect_timeout=min(settings.db_connect_timeout, settings.monitor_http_timeout),
            statement_timeout_ms=max(settings.monitor_statement_timeout_ms, 30000),
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next = 0.0
        self.findings: list[Finding] = []
        self.summary: dict[str, Any] | None = None  # None until the first run ended

    def maybe_start(self, now: float) -> None:
        if (self._thread is not None and self._thread.is_alive()) or now < self._next:
            return
        self._next = now + self.settings.integrity_interval
        self._thread = threading.Thread(target=self._run, name="data-checks", daemon=True)
        self._thread.start()

    def observed(self) -> tuple[list[Finding], dict[str, Any] | None]:
        with self._lock:
            return list(self.findings), self.summary

    def _run(self) -> None:
        from resilience.diagnose.tree import TITLES, scan_data

        began = time.time()
        try:
            diagnosis = scan_data(self.connection.get(), self.settings)
        except SourceDown as exc:
            with self._lock:
                self.summary = {"state": "unreachable", "at": epoch_iso(began), "error": str(exc)}
            return
        except (psycopg.Error, ResilienceError) as exc:
            error = self.connection.failed(exc)
            with self._lock:
                self.summary = {"state": "unreachable", "at": epoch_iso(began), "error": str(error)}
            return
        findings = []
        if diagnosis.scenario in (2, 3, 4):
            rule = "integrity" if diagnosis.scenario == 2 else "completeness"
            findings.append(
                Finding(
                    rule,
                    "critical",
                    f"{TITLES[diagnosis.scenario]}: {diagnosis.reason}; next: "
                    f"{diagnosis.next_command or 're-pair the company (no backup holds it)'}",
                    self.settings.alert_cooldown,
                )
            )
        with self._lock:
            self.findings = findings
            self.summary = {
                "state": "ok",
                "at": epoch_iso(began),
                "duration_s": round(time.time() - began, 3),
                "scenario": diagnosis.scenario,
                "title": TITLES[diagnosis.scenario],
                "company_id": diagnosis.company_id,
                "next_command": diagnosis.next_command,
                "companies": len(diagnosis.completeness),
                "warnings": diagnosis.warnings,
            }

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.connection.close()
