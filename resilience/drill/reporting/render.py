"""The drill report page and the reports index, rendered with Jinja2 (autoescaping on).

Both pages are self-contained: inline CSS and inline SVG, no script, no external asset; their
Content-Security-Policy (``default-src 'none'``) makes a browser refuse anything else, so a
stray external reference shows up as a console error instead of a silent fetch.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader

from resilience.drill.reporting import history, steady, targets, timeline, values
from resilience.infra.redact import Redactor
from resilience.runs.html import format_duration

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_env = Environment(
    loader=PackageLoader("resilience.drill.reporting", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _offset(start: Any, stamp: Any) -> str:
    began, at = timeline.parse(start), timeline.parse(stamp)
    if began is None or at is None:
        return str(stamp or "")
    return f"+{(at - began).total_seconds():.3f} s"


def _anchor(index: int, title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
    return f"s{index}-{slug}" if slug else f"s{index}"


def _step_rows(journal: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The steps table: a switch's header row (its record, RTO) before its steps."""
    started = journal.get("started_at")
    records = [*journal.get("steps", []), *journal.get("rollbacks", [])]
    switches = {
        str((e.get("data") or {}).get("run_id")): e.get("data") or {}
        for e in journal.get("events", [])
        if e.get("kind") == timeline.SWITCH_EVENT
    }
    rows = []
    for kind, item in timeline.ordered(records):
        if kind == "group":
            command, run_id = item
            rows.append({"group": command, "switch": switches.get(run_id, {})})
            continue
        details = dict(item.get("details") or {})
        rows.append(
            {
                **item,
                "grouped": timeline.group_of(item) is not None,
                "offset": _offset(started, item.get("started_at")),
                "duration": format_duration(item.get("duration_s")),
                "details_line": values.line(details, skip=(timeline.GROUP, timeline.GROUP_RUN)),
            }
        )
    return rows


def _lost(measurements: Mapping[str, Any]) -> Any:
    """Keys lost, as the scenario measured them (``keys_lost...``), else None."""
    for key, value in measurements.items():
        if key.startswith("keys_lost") and not key.endswith(("_max", "_limit", "_expected")):
            return value
    return None


def _loss_windows(journal: Mapping[str, Any], measurements: Mapping[str, Any]) -> list[Any]:
    """Each list of ``type/id`` keys at risk (``loss_window``, ``*_lost``): counted by type,
    with the time span it covers (``<key>_from`` and ``<key>_to``, else the snapshot taken
    and the fault injected), the ids kept for a folded list."""
    events = journal.get("events", [])
    snapshot = next((e for e in events if e.get("kind") == "snapshot"), None)
    fault = next((e for e in events if e.get("kind") == "fault"), None)
    out = []
    for key, value in measurements.items():
        if not ("loss" in key or key.endswith("_lost")) or not isinstance(value, list):
            continue
        if not all(isinstance(v, str) and "/" in v for v in value):
            continue
        by_type = Counter(v.split("/", 1)[0] for v in value)
        began = measurements.get(f"{key}_from") or (
            (snapshot.get("data") or {}).get("taken_at") or snapshot.get("at") if snapshot else None
        )
        ended = measurements.get(f"{key}_to") or (fault.get("at") if fault else None)
        since, until = timeline.parse(began), timeline.parse(ended)
        span = None
        if since is not None and until is not None:
            span = {
                "from": since.strftime("%H:%M:%S.%f")[:-3],
                "to": until.strftime("%H:%M:%S.%f")[:-3],
                "from_what": "" if f"{key}_from" in measurements else "the snapshot taken",
                "to_what": "" if f"{key}_to" in measurements else "the fault injected",
                "seconds": format_duration((until - since).total_seconds()),
            }
        out.append(
            {
                "key": key,
                "count": len(value),
                "by_type": by_type.most_common(),
                "ids": value,
                "span": span,
                "lost": _lost(measurements),
            }
        )
    return out


def _facts(
    journal: Mapping[str, Any], measurements: Mapping[str, Any], t: timeline.Timeline
) -> dict[str, Any]:
    """What broke (each fault, with its window), what the switches did (their RTO)."""
    started = journal.get("started_at")
    faults = []
    for e in journal.get("events", []):
        if e.get("kind") == "fault" and not str(e.get("message", "")).lower().startswith("removed"):
            faults.append({"message": e.get("message"), "at": _offset(started, e.get("at"))})
    switches = [
        e.get("data") or {}
        for e in journal.get("events", [])
        if e.get("kind") == timeline.SWITCH_EVENT and (e.get("data") or {}).get("run_id")
    ]
    return {
        "faults": faults,
        "windows": [b.title.removeprefix("fault window ") for b in t.bands],
        "switches": switches,
        "at_risk": measurements.get("loss_window_keys"),
        "lost": _lost(measurements),
    }


def scenario_view(index: int, journal: Mapping[str, Any], base: str = "") -> dict[str, Any]:
    """What the template shows of one scenario's journal dict (``base``: the way from the page
    to the reports directory, for links to the copied run records)."""
    measurements = journal.get("measurements") or {}
    rows, used = targets.evaluate(measurements)
    loss = _loss_windows(journal, measurements)
    used |= {w["key"] for w in loss}
    judged = steady.judge(journal)
    drawn = timeline.build(journal)
    shown = {k: values.html(v, key=k, base=base) for k, v in measurements.items() if k not in used}
    return {
        "j": journal,
        "anchor": _anchor(index, str(journal.get("title", ""))),
        "duration": format_duration(journal.get("duration_s")),
        "timeline": drawn,
        "targets": rows,
        "met": sum(r.met is True for r in rows),
        "missed": sum(r.met is False for r in rows),
        "unknown": sum(r.met is None for r in rows),
        "rto": history.rto_of(measurements),
        "measurements": list(shown.items()),
        "steady": judged,
        "loss": loss,
        "facts": _facts(journal, measurements, drawn),
        "steps": _step_rows(journal),
        "step_count": len(journal.get("steps", [])),
        "rollback_count": len(journal.get("rollbacks", [])),
        "events": [
            {
                **e,
                "offset": _offset(journal.get("started_at"), e.get("at")),
                "data_shown": values.html(e["data"], base=base) if e.get("data") else "",
            }
            for e in journal.get("events", [])
        ],
    }


def render_drill(data: Mapping[str, Any], base: str = "") -> str:
    """The page of a drill report's data (``drill``, ``status``, ``generated_at``,
    ``environment``, ``scenarios`` as journal dicts); ``base`` leads from where the page is
    written to the reports directory (``../`` for the archived copy)."""
    data = Redactor().data(dict(data))  # DSN passwords, in case of a raw dict
    scenarios = [scenario_view(i, s, base) for i, s in enumerate(data.get("scenarios", []), 1)]
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
        with_lost=any(s["facts"]["lost"] is not None for s in scenarios),
        format_duration=format_duration,
        show=targets.show,
        base=base,
        record_link=values.record_link,
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
