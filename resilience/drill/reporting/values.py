"""Recorded values as a person reads them, in HTML: never as raw JSON.

* a scalar as :func:`resilience.drill.reporting.targets.show` gives it (``1,313``, ``2.5``,
  ``yes``, ``-``);
* a list of scalars comma-separated, the first :data:`SHOWN` and the rest folded in a
  ``<details>``; a list of lists (``[["stop-service", "ok"], ...]``) one row per item with its
  parts separated by ``·``; a list of dicts one row per item;
* a dict as a small key/value list, nested ones indented (two levels, deeper as text); a
  ``{"count": n, "first": [...]}`` as n with the first ids folded;
* a run record (a key ending in ``record`` whose value is ``runs/<name>``, as the report
  copies them) as a link to its page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup, escape

from resilience.drill.reporting.targets import show

SHOWN = 8
DEPTH = 2
RECORDS = "runs/"
RECORD_PAGE = "journal.html"


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def record_link(value: str, base: str = "") -> Markup:
    """A link to a copied run record's page (and its JSON)."""
    page = f"{base}{value.rstrip('/')}/{RECORD_PAGE}"
    data = f"{base}{value.rstrip('/')}/journal.json"
    return Markup('<a class="record" href="{}">run record</a> (<a href="{}">JSON</a>)').format(
        page, data
    )


def _inline(value: Any) -> str:
    """A short text form of a value inside a row (no brackets)."""
    if _scalar(value):
        return show(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_inline(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return " · ".join(_inline(v) for v in value)
    return str(value)


def html(value: Any, *, key: str = "", base: str = "", depth: int = 0) -> Markup:
    """``value`` as HTML (escaped)."""
    if isinstance(value, str) and key.endswith("record") and value.startswith(RECORDS):
        return record_link(value, base)
    if _scalar(value):
        text = show(value)
        if isinstance(value, str) and ("\n" in value or len(value) > 120):
            return Markup('<span class="text">{}</span>').format(text)
        return escape(text)
    if isinstance(value, Mapping):
        if not value:
            return Markup('<span class="empty">none</span>')
        if isinstance(value.get("count"), int) and set(value) <= {"count", "first"}:
            first = value.get("first") or []
            if not first:
                return escape(show(value["count"]))
            return Markup(
                '{} <details class="more"><summary>first {}</summary>{}</details>'
            ).format(show(value["count"]), len(first), ", ".join(map(show, first)))
        if depth >= DEPTH:
            return escape(_inline(value))
        rows = Markup("").join(
            Markup("<dt>{}</dt><dd>{}</dd>").format(
                k, html(v, key=str(k), base=base, depth=depth + 1)
            )
            for k, v in value.items()
        )
        return Markup('<dl class="kv">{}</dl>').format(rows)
    if isinstance(value, list | tuple):
        if not value:
            return Markup('<span class="empty">none</span>')
        if all(_scalar(v) for v in value):
            head = escape(", ".join(show(v) for v in value[:SHOWN]))
            if len(value) <= SHOWN:
                return head
            every = escape(", ".join(show(v) for v in value))
            return Markup(
                '{}, … <details class="more"><summary>all {}</summary>{}</details>'
            ).format(head, f"{len(value):,}", every)
        items = Markup("").join(
            Markup("<li>{}</li>").format(
                escape(_inline(v))
                if not isinstance(v, Mapping) or depth >= DEPTH
                else html(v, base=base, depth=depth + 1)
            )
            for v in value
        )
        return Markup('<ul class="rows">{}</ul>').format(items)
    return escape(str(value))


def line(details: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
    """Details in one line: ``key_count 1,315 · digest 5cec… · stop_s 0.221``."""
    return " · ".join(f"{k} {_inline(v)}" for k, v in details.items() if k not in skip)
