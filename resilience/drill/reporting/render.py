"""The drill report page and the reports index, rendered with Jinja2 (autoescaping on).

Both pages are self-contained: inline CSS and inline SVG, no script, no external asset; their
Content-Security-Policy (``default-src 'none'``) makes a browser refuse anything else, so a
stray external reference shows up as a console error instead of a silent fetch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader

from resilience.drill.reporting import history, targets, timeline
from resilience.infra.redact import Redactor
from resilience.runs.html import format_duration

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_env = Environment(
    loader=PackageLoader("resilience.drill.reporting", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return targets.show(value)


def _anchor(index: int, title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
    return f"s{index}-{slug}" if slug else f"s{index}"


def _offset(start: Any, stamp: Any) -> str:
    began, at = timeline.parse(start), timeline.parse(stamp)
    if began is None or at is None:
        return str(stamp or "")
    return f"+{(at - began).total_seconds():.3f} s"


def _records(journal: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    return [
        {
            **r,
            "offset": _offset(journal.get("started_at"), r.get("started_at")),
            "duration": format_duration(r.get("duration_s")),
            "details_shown": _shown(r["details"]) if r.get("details") else "",
        }
        for r in journal.get(key, [])
    ]


def _steady(journal: Mapping[str, Any]) -> list[dict[str, Any]]:
    states = journal.get("steady_states") or {}
    before = (states.get("before") or {}).get("data") or {}
    after = (states.get("after") or {}).get("data") or {}
    return [
        {
            "key": key,
            "before": _shown(before[key]) if key in before else "-",
            "after": _shown(after[key]) if key in after else "-",
            "differs": key in before and key in after and before[key] != after[key],
        }
        for key in [*before, *(k for k in after if k not in before)]
    ]


def scenario_view(index: int, journal: Mapping[str, Any]) -> dict[str, Any]:
    """What the template shows of one scenario's journal dict."""
    measurements = journal.get("measurements") or {}
    rows, used = targets.evaluate(measurements)
    return {
        "j": journal,
        "anchor": _anchor(index, str(journal.get("title", ""))),
        "duration": format_duration(journal.get("duration_s")),
        "timeline": timeline.build(journal),
        "targets": rows,
        "met": sum(r.met is True for r in rows),
        "missed": sum(r.met is False for r in rows),
        "unknown": sum(r.met is None for r in rows),
        "rto": history.rto_of(measurements),
        "measurements": [(k, _shown(v)) for k, v in measurements.items() if k not in used],
        "steady": _steady(journal),
        "steps": _records(journal, "steps"),
        "rollbacks": _records(journal, "rollbacks"),
        "events": [
            {
                **e,
                "offset": _offset(journal.get("started_at"), e.get("at")),
                "data_shown": _shown(e["data"]) if e.get("data") else "",
            }
            for e in journal.get("events", [])
        ],
    }


def render_drill(data: Mapping[str, Any]) -> str:
    """The page of a drill report's data (``drill``, ``status``, ``generated_at``,
    ``environment``, ``scenarios`` as journal dicts)."""
    data = Redactor().data(dict(data))  # DSN passwords, in case of a raw dict
    scenarios = [scenario_view(i, s) for i, s in enumerate(data.get("scenarios", []), 1)]
    return _env.get_template("drill.html.j2").render(
        csp=CSP,
        d=data,
        generated=history.when(data.get("generated_at")),
        scenarios=scenarios,
        passed=sum(s["j"].get("status") == "completed" for s in scenarios),
        met=sum(s["met"] for s in scenarios),
        missed=sum(s["missed"] for s in scenarios),
        unknown=sum(s["unknown"] for s in scenarios),
        with_rto=any(s["rto"] is not None for s in scenarios),
        format_duration=format_duration,
    )


def render_index(entries: list[dict[str, Any]], reports_dir: Path) -> str:
    """``reports/index.html``: every run newest first, and the RTO trend of each drill."""
    entries = Redactor().data(entries)
    runs = []
    for e in reversed(entries):
        scenarios = e.get("scenarios") or []
        rtos = [s["rto_s"] for s in scenarios if isinstance(s.get("rto_s"), int | float)]
        report = str(e.get("report") or "")
        rows = [r for s in scenarios for r in s.get("targets", [])]
        runs.append(
            {
                "e": e,
                "when": history.when(e.get("at")),
                "passed": sum(s.get("status") == "completed" for s in scenarios),
                "total": len(scenarios),
                "met": sum(r.get("met") is True for r in rows),
                "missed": sum(r.get("met") is False for r in rows),
                "rto": format_duration(max(rtos)) if rtos else "-",
                "report": report if report and (reports_dir / report).is_file() else "",
            }
        )
    cards = []
    for name in history.drills(entries):
        latest = next(e for e in reversed(entries) if e["drill"] == name)
        cards.append(
            {
                "name": name,
                "latest": latest,
                "when": history.when(latest.get("at")),
                "page": f"drill-{name}.html" if (reports_dir / f"drill-{name}.html").is_file()
                else "",
                "junit": f"junit-{name}.xml" if (reports_dir / f"junit-{name}.xml").is_file()
                else "",
                "trend": history.trend(name, entries),
            }
        )  # fmt: skip
    junit = sorted(p.name for p in reports_dir.glob("junit-*.xml"))
    return _env.get_template("index.html.j2").render(csp=CSP, runs=runs, cards=cards, junit=junit)
