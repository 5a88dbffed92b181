"""A drill's report: one journal per scenario, as JSON and one self-contained HTML page."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from resilience.runs.html import render_html
from resilience.runs.journal import Journal, atomic_write_text


class DrillReport:
    """One journal per scenario; written as JSON and one self-contained HTML page."""

    def __init__(self, name: str, reports_dir: Path) -> None:
        self.name = name
        self.reports_dir = reports_dir
        self.journals: list[Journal] = []

    @contextlib.contextmanager
    def scenario(self, title: str, *secrets: str) -> Iterator[Journal]:
        """One scenario's journal; a scenario that raises is finished as failed (deviated)."""
        journal = self.journal(title)
        for secret in secrets:
            journal.register_secret(secret)
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

    def write(self) -> tuple[Path, Path]:
        from jinja2 import Environment, select_autoescape

        self.reports_dir.mkdir(exist_ok=True)
        scenarios = [j.to_dict() for j in self.journals]
        failed = [s for s in scenarios if s.get("status") != "completed"]
        data = {
            "drill": self.name,
            "status": "failed" if failed or not scenarios else "completed",
            "scenarios": scenarios,
        }
        json_path = atomic_write_text(
            self.reports_dir / f"drill-{self.name}.json", json.dumps(data, indent=2, default=str)
        )
        env = Environment(autoescape=select_autoescape(default=True))
        page = env.from_string(INDEX_TEMPLATE).render(
            name=self.name,
            status=data["status"],
            scenarios=[(s, render_html(s)) for s in scenarios],
        )
        html_path = atomic_write_text(self.reports_dir / f"drill-{self.name}.html", page)
        return json_path, html_path


# Each scenario's own page is embedded whole (srcdoc), so the file stays self-contained.
INDEX_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>drill {{ name }}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em}iframe{width:100%;height:900px;
border:1px solid #ccc;margin-bottom:2em}.completed{color:#176b28}.failed{color:#b00020}</style>
</head><body>
<h1>drill {{ name }}: <span class="{{ status }}">{{ status }}</span></h1>
<ul>{% for s, _ in scenarios %}<li>{{ s.title }}: <span class="{{ s.status }}">{{ s.status }}
</span>{% if s.measurements and s.measurements.rto_s is defined %}, RTO
{{ s.measurements.rto_s }} s{% endif %}</li>{% endfor %}</ul>
{% for s, page in scenarios %}<h2>{{ s.title }}</h2><iframe srcdoc="{{ page }}"></iframe>
{% endfor %}</body></html>
"""
