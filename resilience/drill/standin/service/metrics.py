"""``/metrics``: the ``standin_*`` metrics and the metric contract, in a private registry.

prometheus-client writes the exposition text, so the format is not hand-written here. Besides
the ``standin_*`` metrics, ``/metrics`` publishes the contract of
:mod:`resilience.monitoring.contract`: ``process_start_time_seconds`` (both modes); in
PostgreSQL mode (put in the same registry by
:class:`~resilience.drill.standin.service.backends.postgres.PostgresBackend`) the duration
histogram of every statement (by outcome), its nearest-rank quantiles over the last 1,000
successful ones, the count of statements slower than ``SLOW_QUERY_MS`` (default 500, from
``.env``; each logged, throttled, with the statement's head only) and the pool gauges
(idle/active connections, maximum, requests waiting). File mode runs no SQL and has no pool: it
publishes none of the query and pool metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from resilience.monitoring import contract


def _family(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    text: str,
    company: str,
    value: float,
) -> Metric:
    family = kind(name, text, labels=["company"])
    family.add_metric([company], value)
    return family


class StandinCollector:
    """The ``standin_*`` metrics, read from one :meth:`ServiceState.snapshot` per scrape."""

    def __init__(self, report: Callable[[], Mapping[str, Any]]) -> None:
        self.report = report

    def collect(self) -> Iterator[Metric]:
        report = self.report()
        company = report["company"]
        last = report["last_write_at"]
        last_ts = datetime.fromisoformat(last).timestamp() if last else 0.0
        started = datetime.fromisoformat(report["started_at"]).timestamp()
        up = GaugeMetricFamily(
            "standin_up",
            "1 for the auth-state mode the service runs in, 0 for the other.",
            labels=["company", "mode"],
        )
        for mode in ("file", "postgres"):
            up.add_metric([company, mode], 1 if report["mode"] == mode else 0)
        yield up
        # A counter family is named without _total: the exposition writes the suffix back.
        yield _family(
            CounterMetricFamily,
            "standin_writes_ok",
            "Key writes acknowledged by the auth-state backend.",
            company,
            report["writes_ok"],
        )
        yield _family(
            CounterMetricFamily,
            "standin_writes_failed",
            "Write attempts the backend did not acknowledge.",
            company,
            report["writes_failed"],
        )
        keys = report["key_count"]
        yield _family(
            GaugeMetricFamily,
            "standin_keys",
            "Keys currently held (creds not counted); NaN while running on cached creds.",
            company,
            math.nan if keys is None else keys,
        )
        yield _family(
            GaugeMetricFamily,
            "standin_last_write_timestamp_seconds",
            "Time of the last acknowledged write.",
            company,
            round(last_ts, 3),
        )
        yield _family(
            GaugeMetricFamily,
            "standin_start_time_seconds",
            "Start time of the process.",
            company,
            round(started, 3),
        )
        # the metric contract's: a monitor sees a restart (its counters reset) when it changes
        yield GaugeMetricFamily(
            contract.START_TIME,
            "Start time of the process, seconds since the epoch.",
            round(started, 3),
        )


def metrics_registry(
    report: Callable[[], Mapping[str, Any]], registry: CollectorRegistry | None = None
) -> CollectorRegistry:
    """A private registry (not prometheus-client's global one) holding the stand-in's metrics,
    computed from ``report()`` on each scrape, added to ``registry`` when given (where the
    backend put the contract's query and pool metrics)."""
    if registry is None:
        registry = CollectorRegistry()
    registry.register(StandinCollector(report))
    return registry
