"""A drill's report: one journal per scenario, written as JSON and one self-contained HTML page,
remembered in the reports' history and index.

:meth:`DrillReport.write` writes, under ``reports/``:

``drill-<name>.json``
    ``{"drill", "status", "generated_at", "environment", "scenarios": [journal, ...],
    "targets": {scenario title: [row, ...]}}``, each journal as :meth:`Journal.to_dict` gives it;
``drill-<name>.html``
    the page (:mod:`resilience.drill.reporting.render`): a summary, the environment, and per
    scenario an inline-SVG timeline, the targets table, the other measurements, the steady state,
    the steps and the events. No script and no external asset;
``runs/<record>/``
    a copy of every run record a scenario names (the switch's ``journal.json`` and
    ``journal.html``), linked relatively, so the directory can be archived as a CI artifact
    (:mod:`resilience.drill.reporting.records`);
``archive/``, ``history.jsonl``, ``index.html``
    a copy of this run, its history line, and the index of every run with each drill's RTO
    trend (:mod:`resilience.drill.reporting.history`).

JUnit XML for CI comes from pytest itself (``--junitxml=reports/junit-<name>.xml``), which the
``drill.*`` tasks pass; the index links it.

What drills record, and how the page shows it:

* **Targets** (RTO, RPO, keys preserved, loss window, alerts expected and received) are read
  from ``journal.measurements``: a paired key such as ``rto_limit_s`` beside ``rto_s`` (also
  ``_max``, ``_target``: at most; ``_min``: at least; ``_expected``: equal), or a ``targets``
  dict ``{name: {"target": ..., "measured": ..., "met": bool}}`` (``met`` may be left to an
  ``op``); :func:`resilience.drill.reporting.targets.target` builds an entry. Each row shows
  met, missed or unknown. See :mod:`resilience.drill.reporting.targets`.
* **Timeline**: the steps and rollbacks as bars (a switch's, recorded by
  :func:`resilience.drill.switches.record_switch`, under a row marking its RTO), the events as
  marks by kind: ``fault`` (a ``fault`` event whose message starts with ``removed``, or
  ``fault_removed`` / ``fault-removed``, ends its window), ``alert``, ``health``, ``evidence``,
  ``failure``, the steady state probes; any other kind in a lane of its own. See
  :mod:`resilience.drill.reporting.timeline`.
* **Steady state**: each probe judged unchanged, expected or deviated
  (:mod:`resilience.drill.reporting.steady`); **loss window**: a measurement listing
  ``type/id`` keys at risk, counted by type (:func:`render._loss_windows`).
* **Environment**: Python, OS, backend (``RESILIENCE_BACKEND`` unless given), the PostgreSQL
  server's version (asked once, through the first PostgreSQL DSN a scenario registers as a
  secret), the git commit.

Secrets: each scenario's secrets are registered with its journal (which redacts everything it
outputs) and with the report, which redacts the environment and the history line too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resilience.drill.reporting import environment, history, records, render, targets
from resilience.infra.redact import Redactor
from resilience.runs.journal import Journal, atomic_write_text, now_iso


class DrillReport:
    """One journal per scenario; written as JSON and one self-contained HTML page."""

    def __init__(self, name: str, reports_dir: Path, *, backend: str | None = None) -> None:
        self.name = name
        self.reports_dir = reports_dir
        self.backend = backend
        self.journals: list[Journal] = []
        #: Facts shown in the environment table on top of :func:`environment.collect`'s.
        self.environment: dict[str, str] = {}
        self.postgresql: str | None = None
        self._redactor = Redactor()

    @property
    def html_path(self) -> Path:
        return self.reports_dir / f"drill-{self.name}.html"

    @property
    def json_path(self) -> Path:
        return self.reports_dir / f"drill-{self.name}.json"

    @contextlib.contextmanager
    def scenario(self, title: str, *secrets: str) -> Iterator[Journal]:
        """One scenario's journal; a scenario that raises is finished as failed (deviated)."""
        journal = self.journal(title)
        for secret in secrets:
            journal.register_secret(secret)
            self._redactor.register(secret)
        self._probe_postgres(secrets)
        journal.start()
        try:
            yield journal
        except BaseException as exc:
            if not journal.finished:
                journal.event("failure", f"{type(exc).__name__}: {exc}")
                journal.finish("failed", deviated=True)
            raise

    def journal(self, title: str) -> Journal:
        journal = Journal(title)
        self.journals.append(journal)
        return journal

    def _probe_postgres(self, secrets: tuple[str, ...]) -> None:
        if self.postgresql is not None:
            return
        for dsn in (s for s in secrets if environment.is_postgres_dsn(s)):
            self.postgresql = environment.postgres_version(dsn)
            if self.postgresql is not None:
                return

    def data(self) -> dict[str, Any]:
        """The report as JSON data (what ``drill-<name>.json`` holds)."""
        scenarios = [j.to_dict() for j in self.journals]
        failed = [s for s in scenarios if s.get("status") != "completed"]
        facts = environment.collect(backend=self.backend, postgresql=self.postgresql)
        data: dict[str, Any] = {
            "drill": self.name,
            "status": "failed" if failed or not scenarios else "completed",
            "generated_at": now_iso(),
            "environment": {**facts, **self.environment},
            "scenarios": scenarios,
            "targets": {
                str(s.get("title")): [
                    row.to_dict() for row in targets.evaluate(s.get("measurements") or {})[0]
                ]
                for s in scenarios
            },
        }
        redacted: dict[str, Any] = self._redactor.data(data)  # every scenario's secrets
        return redacted

    def write(self) -> tuple[Path, Path]:
        """Write the JSON and the page, archive them, append the history, rewrite the index."""
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        data = self.data()
        records.copy_records(data, self.reports_dir)
        json_text = json.dumps(data, indent=2, default=str) + "\n"
        page = render.render_drill(data)
        json_path = atomic_write_text(self.json_path, json_text)
        html_path = atomic_write_text(self.html_path, page)
        history.record(
            self.reports_dir, data, render.render_drill(data, base="../"), json_text,
            render.render_index,
        )  # fmt: skip
        records.prune(self.reports_dir)
        return json_path, html_path
