"""The journal as one self-contained HTML page (inline CSS, no scripts, no external assets).

Rendered with Jinja2 with autoescaping on, so anything recorded in the journal (step details,
error messages, ids from the network) is shown as text, never interpreted as markup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader

from resilience.infra.redact import Redactor
from resilience.runs.journal import Journal, atomic_write_text

TEMPLATE = "journal.html.j2"
MIN_BAR_PCT = 0.4

_env = Environment(
    loader=PackageLoader("resilience.runs", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def parse_stamp(stamp: Any) -> datetime | None:
    """An ISO 8601 time from a journal, or None when absent or malformed."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


def format_duration(seconds: Any) -> str:
    """``0.042`` -> ``42 ms``, ``3.5`` -> ``3.50 s``, ``125`` -> ``2 min 5.0 s``; else ``-``."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.1f} s"


def _shown(value: Any) -> str:
    """How a value appears in a table cell: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def _timeline(journal: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Steps and rollbacks with their bar position (percent of the whole run)."""
    records = [*journal.get("steps", []), *journal.get("rollbacks", [])]
    start = parse_stamp(journal.get("started_at"))
    starts = [parse_stamp(r.get("started_at")) for r in records]
    if start is None:
        known = [s for s in starts if s is not None]
        start = min(known) if known else None
    ends: list[datetime] = [
        d
        for d in (
            parse_stamp(journal.get("ended_at")),
            *(parse_stamp(r.get("ended_at")) for r in records),
        )
        if d is not None
    ]
    total = (max(ends) - start).total_seconds() if start is not None and ends else 0.0
    rows = []
    for record, began in zip(records, starts, strict=True):
        offset = width = 0.0
        if start is not None and began is not None and total > 0:
            offset = max(0.0, (began - start).total_seconds()) / total * 100
            duration = record.get("duration_s") or 0.0
            width = float(duration) / total * 100
        width = min(max(width, MIN_BAR_PCT), 100.0 - min(offset, 100.0 - MIN_BAR_PCT))
        rows.append(
            {
                "name": record.get("name", ""),
                "kind": record.get("kind", "step"),
                "status": record.get("status", ""),
                "offset": f"{min(offset, 100.0 - MIN_BAR_PCT):.2f}",
                "width": f"{width:.2f}",
                "duration": format_duration(record.get("duration_s")),
            }
        )
    return rows


def _steady_rows(journal: Mapping[str, Any]) -> list[dict[str, Any]]:
    states = journal.get("steady_states") or {}
    before = (states.get("before") or {}).get("data") or {}
    after = (states.get("after") or {}).get("data") or {}
    rows = []
    for key in [*before, *(k for k in after if k not in before)]:
        rows.append(
            {
                "key": key,
                "before": _shown(before[key]) if key in before else "-",
                "after": _shown(after[key]) if key in after else "-",
                "differs": key in before and key in after and before[key] != after[key],
            }
        )
    return rows


def _relative(journal: Mapping[str, Any], stamp: Any) -> str:
    start, at = parse_stamp(journal.get("started_at")), parse_stamp(stamp)
    if start is None or at is None:
        return ""
    return f"+{(at - start).total_seconds():.3f} s"


def _record_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            **record,
            "duration": format_duration(record.get("duration_s")),
            "details_shown": _shown(record["details"]) if record.get("details") else "",
        }
        for record in records
    ]


def render_html(journal: Mapping[str, Any]) -> str:
    """The page for a journal dict (as from :meth:`Journal.to_dict` or its JSON file)."""
    data: dict[str, Any] = Redactor().data(dict(journal))  # DSN passwords, in case of a raw dict
    events = [
        {
            **event,
            "offset": _relative(data, event.get("at")),
            "data_shown": _shown(event["data"]) if event.get("data") else "",
        }
        for event in data.get("events", [])
    ]
    measurements = data.get("measurements") or {}
    states = data.get("steady_states") or {}
    return _env.get_template(TEMPLATE).render(
        j=data,
        total=format_duration(data.get("duration_s")),
        measurements=[(key, _shown(value)) for key, value in measurements.items()],
        steady=_steady_rows(data),
        steady_at={phase: (states.get(phase) or {}).get("at", "") for phase in ("before", "after")},
        timeline=_timeline(data),
        steps=_record_rows(data.get("steps", [])),
        rollbacks=_record_rows(data.get("rollbacks", [])),
        events=events,
    )


def write_html(journal: Journal | Mapping[str, Any], path: str | Path) -> Path:
    """Render ``journal`` and write the page atomically to ``path``; returns the path."""
    data = journal.to_dict() if isinstance(journal, Journal) else journal
    return atomic_write_text(Path(path), render_html(data))
