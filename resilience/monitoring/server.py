"""The monitor's HTTP face, served by Werkzeug (no HTTP parsing of ours):

- ``/``: the status page (:file:`templates/status.html.j2`), self-contained, refreshing itself,
  with inline-SVG charts of the last hour (latency p50/p95/p99, pool usage and waiting, keys past
  expiry, mirror lag) drawn from the monitor's history ring;
- ``/health.json``: the last cycle's health document;
- ``/history.json``: the monitor's recent samples (:mod:`.charts`), ``{"span_s", "samples"}``;
- ``/metrics``: the monitor's own metrics (prometheus-client), for an existing Prometheus.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from resilience.errors import StackError
from resilience.infra.timefmt import epoch_iso
from resilience.monitoring import charts
from resilience.monitoring.rules import SEVERITY_RANK

if TYPE_CHECKING:
    from resilience.monitoring.monitor import Monitor

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


_env = Environment(
    loader=PackageLoader("resilience.monitoring", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
)
_env.filters["iso"] = epoch_iso


def limits(doc: dict[str, Any]) -> dict[str, float | None]:
    """The alert thresholds of each chart, from the health document."""
    th = doc.get("thresholds") or {}
    mirror = doc.get("mirror") or {}
    return {
        "latency": th.get("slow_query_ms"),
        "pool": th.get("pool_usage_warn_pct"),
        "waiting": th.get("pool_waiting_critical"),
        "expired": th.get("keys_expired_warn"),
        "lag": mirror.get("lag_alert_s"),
    }


def render_page(
    doc: dict[str, Any],
    history: list[dict[str, Any]],
    refresh_s: float,
    *,
    fragment: bool = False,
    now: float | None = None,
    span_s: float = 3600.0,
) -> str:
    """The status page (or its body, ``fragment``) with the charts of ``history`` over the last
    ``span_s`` seconds up to ``now`` (the newest sample's time unless given)."""
    if now is None:
        now = max(
            (float(s["t"]) for s in history if isinstance(s.get("t"), int | float)), default=0
        )
    drawn = charts.charts(history, now, span_s, limits(doc))
    return _env.get_template("status.html.j2").render(
        doc=doc, charts=drawn, span_min=span_s / 60, refresh_s=refresh_s, fragment=fragment
    )


class MonitorCollector:
    """``baileys_monitor_*``: the last cycle's document as gauges."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        doc = self.monitor.last
        if doc is None:
            return
        yield GaugeMetricFamily(
            "baileys_monitor_status",
            "Overall status: 0 ok, 1 warning, 2 critical.",
            SEVERITY_RANK[doc["status"]],
        )
        yield GaugeMetricFamily(
            "baileys_monitor_cycle_seconds", "Duration of the last cycle.", doc["cycle_s"]
        )
        up = GaugeMetricFamily(
            "baileys_monitor_source_up", "1 when the source was read.", labels=["source"]
        )
        for name, src in doc["sources"].items():
            if src["state"] != "off":
                up.add_metric([name], 1 if src["state"] == "ok" else 0)
        yield up
        firing = GaugeMetricFamily(
            "baileys_monitor_alert_firing", "1 per firing rule.", labels=["rule", "severity"]
        )
        for finding in doc["findings"]:
            firing.add_metric([finding["rule"], finding["severity"]], 1)
        yield firing
        latency = GaugeMetricFamily(
            "baileys_monitor_latency_seconds",
            "Nearest-rank auth query latency (from the service or the probe).",
            labels=["quantile"],
        )
        for quantile, key in (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms")):
            value = doc["latency"].get(key)
            if value is not None:
                latency.add_metric([quantile], value / 1000)
        yield latency
        yield GaugeMetricFamily(
            "baileys_monitor_slow_queries_in_window",
            "Slow auth queries in the sliding window.",
            doc["latency"]["slow_in_window"],
        )
        keys = doc.get("keys")
        if keys:
            for name, field, text in (
                ("baileys_monitor_keys", "total", "Keys stored."),
                (
                    "baileys_monitor_keys_past_expiry",
                    "past_expiry",
                    "Keys whose expires_at passed.",
                ),
                ("baileys_monitor_keys_stale", "stale", "Keys not updated for the retention."),
            ):
                yield GaugeMetricFamily(name, text, keys[field])
        mirror = doc.get("mirror")
        if mirror:
            for name, field, text in (
                ("baileys_monitor_mirror_lag_seconds", "lag_s", "Seconds since the mirror's "
                 "confirmed position (every write before it is in its files)."),
                ("baileys_monitor_mirror_pending_changes", "pending_changes",
                 "Changes recorded by the feed and not yet applied (or pruned)."),
                ("baileys_monitor_mirror_repairs_total", "reconcile_repairs_total",
                 "Files the mirror's reconciliation repaired (changes the feed missed)."),
            ):  # fmt: skip
                if mirror.get(field) is not None:
                    yield GaugeMetricFamily(name, text, mirror[field])
            yield GaugeMetricFamily(
                "baileys_monitor_mirror_up",
                "1 when the mirror process runs and follows the feed.",
                1 if mirror["process"] != "gone" and mirror["mirror_state"] == "following" else 0,
            )
        pool = doc.get("pool")
        if pool:
            yield GaugeMetricFamily(
                "baileys_monitor_pool_waiting", "Requests waiting.", pool["waiting"]
            )
            if pool["usage_pct"] is not None:
                yield GaugeMetricFamily(
                    "baileys_monitor_pool_usage_ratio", "Pool in use.", pool["usage_pct"] / 100
                )


def make_app(monitor: Monitor) -> Any:
    registry = CollectorRegistry()
    registry.register(MonitorCollector(monitor))

    @Request.application
    def app(request: Request) -> Response:
        doc = monitor.last
        if request.path == "/metrics":
            return Response(generate_latest(registry), content_type=METRICS_CONTENT_TYPE)
        if doc is None:
            return Response(
                "the first cycle is running\n",
                status=HTTPStatus.SERVICE_UNAVAILABLE,
                content_type="text/plain",
                headers={"Retry-After": "1"},
            )
        if request.path == "/health.json":
            return Response(json.dumps(doc), content_type="application/json")
        if request.path == "/history.json":
            return Response(
                json.dumps({"span_s": _span(monitor), "samples": list(monitor.history)}),
                content_type="application/json",
            )
        if request.path == "/":
            page = render_page(
                doc,
                list(monitor.history),
                monitor.settings.monitor_page_refresh,
                fragment=request.args.get("fragment") == "1",
                now=monitor.clock(),
                span_s=_span(monitor),
            )
            return Response(
                page, content_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"}
            )
        return Response("not found\n", status=HTTPStatus.NOT_FOUND, content_type="text/plain")

    return app


def _span(monitor: Monitor) -> float:
    """The time the history ring covers: its samples times the cycle interval."""
    return monitor.settings.pool_samples * monitor.settings.monitor_interval


class _Quiet(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:  # one line per scrape is noise
        return None


def serve(monitor: Monitor, host: str, port: int) -> BaseWSGIServer:
    """Bind and serve in a daemon thread; StackError (one line) when the port is taken."""
    try:
        listener = socket.create_server((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StackError(
            f"the monitor cannot listen on {host}:{port}: {reason} "
            "(another monitor running? set RESILIENCE_MONITOR_PORT)"
        ) from None
    with listener:
        server = make_server(
            host,
            listener.getsockname()[1],
            make_app(monitor),
            threaded=True,
            request_handler=_Quiet,
            fd=listener.fileno(),
        )
    threading.Thread(
        target=server.serve_forever, args=(0.2,), name="monitor-http", daemon=True
    ).start()
    return server
