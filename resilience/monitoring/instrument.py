"""Latency instrumentation for a service's auth queries.

A :class:`QueryRecorder` keeps the ring of recent queries and, given a prometheus-client
registry, publishes them under the names of :mod:`.contract`. :func:`timed_cursor_class` gives
a psycopg cursor class that times every ``execute``: pass it as ``cursor_factory`` to a
connection or a pool's ``kwargs`` and every statement of :class:`PgAuthStore` is measured
without touching the store. Cost: two clock reads, a tuple into a deque and a bucket count
per query (``invoke bench monitoring`` measures it against a bare connection).

The duration histogram is counted here and written by prometheus-client's exposition
(``HistogramMetricFamily``) at scrape time: its ``Histogram.observe`` takes a lock per sum and
bucket and cost about 12 µs per query under load, most of the instrumentation's budget.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from resilience.monitoring import contract
from resilience.monitoring.latency import QueryRecord, QueryRing, nearest_rank

DEFAULT_SLOW_S = 0.5


class QueryRecorder:
    """Where timed queries go: the ring, and the contract's metrics when a registry is given."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        slow_s: float = DEFAULT_SLOW_S,
        ring: QueryRing | None = None,
        on_slow: Callable[[QueryRecord], None] | None = None,
    ) -> None:
        self.ring = ring or QueryRing()
        self.slow_s = slow_s
        self.on_slow = on_slow
        self._histogram: DurationHistogram | None = None
        self._slow: Counter | None = None
        if registry is not None:
            self._histogram = DurationHistogram()
            registry.register(self._histogram)
            self._slow = Counter(
                contract.SLOW_QUERIES.removesuffix("_total"),
                f"Auth-state queries slower than {slow_s:g} s.",
                registry=registry,
            )
            registry.register(_QuantileCollector(self.ring))

    def record(self, duration_s: float, ok: bool, rows: int, statement: object) -> QueryRecord:
        record = QueryRecord(time.time(), duration_s, ok, rows, statement)
        self.ring.add(record)
        if self._histogram is not None:
            self._histogram.observe(ok, duration_s)
        if duration_s > self.slow_s:
            if self._slow is not None:
                self._slow.inc()
            if self.on_slow is not None:
                self.on_slow(record)
        return record


class DurationHistogram:
    """``baileys_auth_query_duration_seconds{outcome}``: counts per bucket, kept as plain
    integers under one lock and written as a histogram family on each scrape."""

    def __init__(self, bounds: tuple[float, ...] = contract.BUCKETS) -> None:
        self.bounds = bounds
        self._lock = threading.Lock()
        # per outcome: a count per bucket (the last one: above every bound) and the sum
        self._counts = {True: [0] * (len(bounds) + 1), False: [0] * (len(bounds) + 1)}
        self._sums = {True: 0.0, False: 0.0}

    def observe(self, ok: bool, value: float) -> None:
        index = bisect_left(self.bounds, value)  # the first bound >= value: Prometheus' `le`
        with self._lock:
            self._counts[ok][index] += 1
            self._sums[ok] += value

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = {ok: list(c) for ok, c in self._counts.items()}
            sums = dict(self._sums)
        family = HistogramMetricFamily(
            contract.QUERY_DURATION,
            "Duration of the service's auth-state queries.",
            labels=["outcome"],
        )
        for ok, outcome in ((True, "ok"), (False, "error")):
            cumulative = list(accumulate(counts[ok]))
            buckets = [(str(float(b)), n) for b, n in zip(self.bounds, cumulative, strict=False)]
            buckets.append(("+Inf", cumulative[-1]))
            family.add_metric([outcome], buckets, sums[ok])
        yield family


class _QuantileCollector:
    """``baileys_auth_query_latency_seconds{quantile}``: nearest rank over the ring's
    successful queries, computed on each scrape."""

    def __init__(self, ring: QueryRing) -> None:
        self.ring = ring

    def collect(self) -> Iterator[Metric]:
        durations = sorted(r.duration_s for r in self.ring.records() if r.ok)
        family = GaugeMetricFamily(
            contract.QUERY_LATENCY,
            "Nearest-rank latency of the last 1,000 successful auth-state queries.",
            labels=["quantile"],
        )
        for quantile in contract.QUANTILES:
            value = nearest_rank(durations, float(quantile) * 100)
            family.add_metric([quantile], float("nan") if value is None else value)
        yield family


class PoolCollector:
    """The pool figures of :mod:`.contract` from a psycopg_pool ``get_stats``-like callable
    (``pool_size``: connections open, ``pool_available``: idle, ``requests_waiting``)."""

    def __init__(self, stats: Callable[[], dict[str, int]], max_size: int) -> None:
        self.stats = stats
        self.max_size = max_size

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        size = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        connections = GaugeMetricFamily(
            contract.POOL_CONNECTIONS, "Connections of the auth-state pool.", labels=["state"]
        )
        connections.add_metric(["idle"], idle)
        connections.add_metric(["active"], max(0, size - idle))
        yield connections
        yield GaugeMetricFamily(contract.POOL_MAX, "Maximum size of the pool.", self.max_size)
        yield GaugeMetricFamily(
            contract.POOL_WAITING,
            "Requests waiting for a connection.",
            stats.get("requests_waiting", 0),
        )


def _rows(cursor: psycopg.Cursor[Any]) -> int:
    return cursor.rowcount if cursor.rowcount is not None else -1


def timed_cursor_class(recorder: QueryRecorder) -> type[psycopg.Cursor[Any]]:
    """A cursor class whose ``execute`` and ``executemany`` are timed into ``recorder``."""

    class TimedCursor(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> TimedCursor:
            start = time.perf_counter()
            try:
                super().execute(query, params, **kwargs)
            except BaseException:
                recorder.record(time.perf_counter() - start, False, -1, query)
                raise
            recorder.record(time.perf_counter() - start, True, _rows(self), query)
            return self

        def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> None:
            start = time.perf_counter()
            try:
                super().executemany(query, params_seq, **kwargs)
            except BaseException:
                recorder.record(time.perf_counter() - start, False, -1, query)
                raise
            recorder.record(time.perf_counter() - start, True, _rows(self), query)

    return TimedCursor
