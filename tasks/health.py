"""`health`: the status of the service's auth store, from the monitor or computed directly.

It reads the running monitor's `/health.json`, or computes the same document from the
service's `/metrics` and the database when no monitor answers. Exit codes: 0 ok, 1 warning,
2 critical (also 2 for bad configuration).
"""

from __future__ import annotations

import threading
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from tasks._run import operator_task

STYLE = {"ok": "green", "warning": "yellow", "critical": "bold red"}


def _ms(value: Any) -> str:
    if value is None:
        return "n/a"
    colour = (
        "green" if value < 100 else "yellow" if value < 200 else "orange3" if value < 500 else "red"
    )
    return f"[{colour}]{value:.1f} ms[/]"


def health_view(doc: dict[str, Any]) -> Any:
    """One frame of the health view (Rich)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    status = doc["status"]
    parts: list[Any] = [
        Text.from_markup(
            f"[{STYLE[status]}]{status.upper()}[/]  company {doc['company']}  "
            f"checked {doc['checked_at']}  ({_via(doc)})"
        )
    ]
    sources = Table(title="sources", title_justify="left")
    for column in ("source", "state", "detail"):
        sources.add_column(column)
    for name, src in doc["sources"].items():
        colour = {"ok": "green", "unreachable": "red"}.get(src["state"], "dim")
        detail = src.get("error") or src.get("why") or src.get("url") or src.get("at") or ""
        sources.add_row(name, f"[{colour}]{src['state']}[/]", str(detail))
    parts.append(sources)
    lat = doc["latency"]
    figures = Table(title="figures", title_justify="left", show_header=False)
    figures.add_row(
        f"latency ({lat.get('source') or 'no source'})",
        f"p50 {_ms(lat.get('p50_ms'))}  p95 {_ms(lat.get('p95_ms'))}  p99 {_ms(lat.get('p99_ms'))}"
        f"  success {lat['success_rate'] * 100:.2f} %"
        if lat.get("success_rate") is not None
        else "n/a",
    )
    figures.add_row("slow in window", str(lat["slow_in_window"]))
    pool = doc.get("pool")
    figures.add_row(
        "pool",
        f"{pool['active']:.0f}/{pool['max']:.0f} active, {pool['idle']:.0f} idle, "
        f"{pool['waiting']:.0f} waiting ({pool['usage_pct']} %)"
        if pool
        else "[dim]unreachable or not published[/]",
    )
    keys = doc.get("keys")
    if keys:
        hist = "  ".join(f"{k} {v}" for k, v in keys["age_histogram"].items())
        figures.add_row(
            "keys",
            f"{keys['total']} total, {keys['past_expiry']} past expiry, {keys['stale']} stale "
            f"(> {keys['retention_days']} d), {keys['sizes']['total_bytes'] / 1048576:.1f} MiB",
        )
        figures.add_row("key age", hist)
    else:
        figures.add_row("keys", "[red]database unreachable[/]")
    db = doc.get("database")
    if db:
        figures.add_row(
            "database",
            f"{db['service_total']} service connections of {db['max_connections']} max, "
            f"{db['waiting_on_lock']} waiting on a lock, longest transaction "
            f"{db['longest_transaction_s'] if db['longest_transaction_s'] is not None else '-'} s",
        )
    data = doc.get("data")
    if data:
        figures.add_row(
            "data checks",
            f"{data['title']} ({data['companies']} companies, {data['at']})"
            if data["state"] == "ok"
            else f"[red]unreachable[/]: {data.get('error')}",
        )
    mirror = doc.get("mirror")
    if mirror:
        lag = mirror["lag_s"]
        figures.add_row(
            "file mirror",
            f"{mirror['mirror_state']}, process {mirror['process']}, lag "
            f"{'-' if lag is None else f'{lag:.1f}'} s (alert over {mirror['lag_alert_s']:g} s), "
            f"{mirror['pending_changes']} changes pending, "
            f"{mirror['reconcile_repairs_total']} repaired by reconciliation",
        )
    parts.append(figures)
    if "history" in doc:
        parts.append(history_view(doc["history"]))
    if doc["findings"]:
        findings = Table(title="findings", title_justify="left")
        for column in ("severity", "rule", "message"):
            findings.add_column(column)
        for f in doc["findings"]:
            findings.add_row(f"[{STYLE[f['severity']]}]{f['severity']}[/]", f["rule"], f["message"])
        parts.append(findings)
    if doc["errors"]:
        parts.append(
            Text(
                "recent errors: "
                + "; ".join(f"{e['source']}: {e['error']}" for e in doc["errors"][:3]),
                style="dim",
            )
        )
    return Group(*parts)


def history_view(samples: list[dict[str, Any]]) -> Any:
    """The monitor's recent samples as sparklines (the status page's charts, as text)."""
    from rich.table import Table

    from resilience.monitoring.charts import spark

    table = Table(title="recent history (oldest left)", title_justify="left", show_header=False)
    rows = (
        ("latency p50", "p50", " ms"), ("latency p95", "p95", " ms"), ("latency p99", "p99", " ms"),
        ("pool in use", "pool_pct", " %"), ("waiting", "waiting", ""),
        ("keys past expiry", "expired", ""), ("mirror lag", "lag", " s"),
    )  # fmt: skip
    if not samples:
        table.add_row("[dim]no samples (no monitor running)[/]", "")
        return table
    for label, key, unit in rows:
        values = [s.get(key) for s in samples]
        known = [v for v in values if isinstance(v, int | float)]
        if key == "lag" and not known:
            continue
        last = f"{known[-1]:g}{unit}" if known else "n/a"
        top = 100.0 if key == "pool_pct" else None
        table.add_row(label, f"[cyan]{spark(values, 60, top)}[/]", last)
    return table


def _via(doc: dict[str, Any]) -> str:
    via = doc.get("via", {})
    if "monitor" in via:
        return f"from the monitor at {via['monitor']}"
    return f"computed directly: {via.get('direct')}"


@task(
    auto_shortflags=False,
    help={
        "once": "print one frame and exit",
        "json": "print the health document as JSON (implies --once)",
        "direct": "compute from the service and the database even when a monitor runs",
    },
)
@operator_task
def health(c: Context, once: bool = False, json: bool = False, direct: bool = False) -> None:
    """Status of the auth store, refreshed every 10 s; exit 0 ok, 1 warning, 2 critical."""
    from rich.live import Live

    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.monitoring.commands import exit_code, health_document

    settings = load_settings()
    out = Output(json)
    if once or json:
        doc = health_document(settings, direct=direct, history=not json)
        out.result(doc, lambda console, d: console.print(health_view(d)))
        raise Exit(code=exit_code(doc))
    stop = threading.Event()
    doc = health_document(settings, direct=direct, history=True)
    try:
        with Live(health_view(doc), console=out.console, refresh_per_second=1) as live:
            while not stop.wait(10.0):
                doc = health_document(settings, direct=direct, history=True)
                live.update(health_view(doc))
    except KeyboardInterrupt:
        pass
    raise Exit(code=exit_code(doc))
