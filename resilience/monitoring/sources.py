"""Where the monitor's numbers come from, each source able to fail on its own.

- :func:`scrape_service`: the service's ``/metrics`` (the contract of :mod:`.contract`);
- :class:`SyntheticProbe`: the service's own query shapes (load creds, read a batch of keys),
  run by the monitor through the service's network path, timed like the service times them;
- :func:`database_side`: ``pg_stat_activity``, ``max_connections``, the longest open
  transaction and, where installed, ``pg_stat_statements``;
- :func:`key_stats`: keys per type and company, both meanings of "expired"
  (:mod:`resilience.maintenance.expiry`), the age histogram and the table sizes.

A failing source raises :class:`SourceDown` with a one-line reason (never a secret); the monitor
shows it as unreachable and carries on.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from resilience.authstate.pgconn import Conn, connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.errors import ResilienceError, first_line
from resilience.infra.redact import Redactor
from resilience.maintenance.cleanup import table_sizes
from resilience.maintenance.expiry import Expiry, count_expired
from resilience.monitoring import contract
from resilience.monitoring.instrument import QueryRecorder, timed_cursor_class

MONITOR_APPLICATION_NAME = "baileys-resilience-monitor"
#: the monitor never queues behind a lock on the auth tables: it reports the lock instead
LOCK_TIMEOUT_MS = 1000
#: the age histogram of keys by `updated_at`: (label, lower bound in days)
AGE_BUCKETS = (("<1d", 0), ("1-7d", 1), ("7-14d", 7), ("14-30d", 14), (">30d", 30))


class SourceDown(Exception):
    """A source could not be read; ``str()`` is one line without secrets."""


# --- the service's /metrics ----------------------------------------------------------------------


@dataclass
class ServiceMetrics:
    """One scrape of the service, in the contract's terms."""

    queries_ok: float = 0.0
    queries_failed: float = 0.0
    quantiles_s: dict[str, float | None] = field(default_factory=dict)  # "0.5" -> seconds
    slow_total: float | None = None
    pool_idle: float | None = None
    pool_active: float | None = None
    pool_max: float | None = None
    pool_waiting: float | None = None
    start_time: float | None = None

    @property
    def has_pool(self) -> bool:
        return self.pool_max is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def parse_metrics(text: str) -> ServiceMetrics:
    """The contract's metrics out of a Prometheus text exposition (prometheus-client's parser);
    names the service does not publish stay None."""
    out = ServiceMetrics()
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise SourceDown(f"the service's /metrics is not Prometheus text: {exc}") from None
    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == contract.QUERY_DURATION + "_count":
                if labels.get("outcome") == "error":
                    out.queries_failed += value
                else:
                    out.queries_ok += value
            elif name == contract.QUERY_LATENCY and "quantile" in labels:
                out.quantiles_s[labels["quantile"]] = _number(value)
            elif name == contract.SLOW_QUERIES:
                out.slow_total = value
            elif name == contract.POOL_CONNECTIONS:
                if labels.get("state") == "idle":
                    out.pool_idle = value
                elif labels.get("state") == "active":
                    out.pool_active = value
            elif name == contract.POOL_MAX:
                out.pool_max = value
            elif name == contract.POOL_WAITING:
                out.pool_waiting = value
            elif name == contract.START_TIME:
                out.start_time = value
    return out


def scrape_service(url: str, timeout: float) -> ServiceMetrics:
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise SourceDown(f"cannot read {url}: {type(exc).__name__}: {first_line(exc)}") from None
    if response.status_code != 200:
        raise SourceDown(f"{url} answered HTTP {response.status_code}")
    return parse_metrics(response.text)


# --- the database: one connection of the monitor's own --------------------------------------------


class MonitorConnection:
    """The monitor's connection to the service's database, opened on demand, re-opened after a
    failure, every statement under a statement timeout. Errors become :class:`SourceDown`
    (a wrong DSN says so: it is configuration, not an outage)."""

    def __init__(self, dsn: str, *, connect_timeout: float, statement_timeout_ms: int) -> None:
        self._dsn = dsn
        self._redactor = Redactor([dsn])
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: Conn | None = None
        self.recorder: QueryRecorder | None = None

    def get(self) -> Conn:
        if self._conn is None or self._conn.closed:
            try:
                conn = connect(self._dsn, timeout=self.connect_timeout, autocommit=True)
            except ResilienceError as exc:
                raise SourceDown(self._redactor.text(str(exc))) from None
            try:
                conn.execute(
                    "SELECT set_config('application_name', %s, false),"
                    " set_config('statement_timeout', %s, false),"
                    " set_config('lock_timeout', %s, false)",
                    (
                        MONITOR_APPLICATION_NAME,
                        str(self.statement_timeout_ms),
                        str(min(LOCK_TIMEOUT_MS, self.statement_timeout_ms)),
                    ),
                )
            except psycopg.Error as exc:
                conn.close()
                raise SourceDown(self.reason(exc)) from None
            if self.recorder is not None:
                conn.cursor_factory = timed_cursor_class(self.recorder)
            self._conn = conn
        return self._conn

    def reason(self, exc: BaseException) -> str:
        return self._redactor.text(first_line(exc))

    def failed(self, exc: BaseException) -> SourceDown:
        """Drop the connection after a failure; the error to raise."""
        self.close()
        return SourceDown(self.reason(exc))

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


# --- b) the synthetic probe ----------------------------------------------------------------------


class SyntheticProbe:
    """The service's own query shapes on a connection of the probe's own, timed into its ring:
    for a service that publishes nothing. It goes through the DSN the service uses, so through
    the same network path (Toxiproxy in drills)."""

    def __init__(
        self,
        dsn: str,
        company: str,
        *,
        connect_timeout: float,
        slow_s: float,
        batch: int,
        statement_timeout_ms: int,
    ) -> None:
        self.company = company
        self.batch = batch
        self.recorder = QueryRecorder(slow_s=slow_s)
        self.connection = MonitorConnection(
            dsn, connect_timeout=connect_timeout, statement_timeout_ms=statement_timeout_ms
        )
        self.connection.recorder = self.recorder
        self._ids: list[tuple[str, str]] = []

    def run(self) -> int:
        """One probe: load the creds, read a batch of keys; the number of keys read."""
        conn = self.connection.get()
        store = PgAuthStore(conn)
        try:
            store.load_creds(self.company)
            if not self._ids:
                rows = conn.execute(
                    "SELECT key_type, key_id FROM whatsapp_keys WHERE company_id = %s"
                    " ORDER BY updated_at DESC LIMIT %s",
                    (self.company, self.batch),
                ).fetchall()
                self._ids = [(str(t), str(i)) for t, i in rows]
            by_type: dict[str, list[str]] = {}
            for key_type, key_id in self._ids:
                by_type.setdefault(key_type, []).append(key_id)
            found = 0
            for key_type, ids in by_type.items():
                found += len(store.get_keys(self.company, key_type, ids))
        except (psycopg.Error, ResilienceError) as exc:
            self._ids = []
            raise self.connection.failed(exc) from None
        return found

    def close(self) -> None:
        self.connection.close()


# --- c) the database side ------------------------------------------------------------------------


def database_side(conn: Conn, application_name: str) -> dict[str, Any]:
    """Connections to this database by application and state, ``max_connections``, the
    longest open transaction and, with ``pg_stat_statements``, the service's auth queries."""
    rows = conn.execute(
        "SELECT coalesce(nullif(application_name, ''), '(none)'),"
        " CASE WHEN wait_event_type = 'Lock' THEN 'waiting on a lock'"
        "      ELSE coalesce(state, 'unknown') END, count(*)"
        " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend' GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    connections: dict[str, dict[str, int]] = {}
    for app, state, count in rows:
        connections.setdefault(str(app), {})[str(state)] = int(count)
    row = conn.execute(
        "SELECT current_setting('max_connections')::int,"
        " (SELECT count(*) FROM pg_stat_activity),"
        " (SELECT extract(epoch FROM max(clock_timestamp() - xact_start)) FROM pg_stat_activity"
        "   WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()"
        "   AND backend_type = 'client backend'),"
        " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')"
    ).fetchone()
    assert row is not None
    max_connections, total, longest, has_statements = row
    statements: list[dict[str, Any]] | None = None
    if has_statements:
        try:
            found = conn.execute(
                "SELECT left(query, 100), calls, mean_exec_time FROM pg_stat_statements"
                " WHERE query ILIKE '%%whatsapp_%%' ORDER BY calls DESC LIMIT 10"
            ).fetchall()
            statements = [
                {"sql": q, "calls": int(c), "mean_ms": round(float(m), 3)} for q, c, m in found
            ]
        except psycopg.Error:  # installed but not loaded (shared_preload_libraries)
            statements = None
    service = connections.get(application_name, {})
    return {
        "application_name": application_name,
        "service_connections": service,
        "service_total": sum(service.values()),
        "waiting_on_lock": sum(s.get("waiting on a lock", 0) for s in connections.values()),
        "connections": connections,
        "max_connections": int(max_connections),
        "connections_total": int(total),
        "longest_transaction_s": None if longest is None else round(float(longest), 3),
        "statements": statements,
    }


def key_stats(conn: Conn, retention_days: int) -> dict[str, Any]:
    """Keys per type and company, both meanings of "expired" (one definition, shared with the
    cleanup), the age histogram by ``updated_at`` and the table sizes."""
    counts = count_expired(conn, retention_days=retention_days)
    select = ", ".join(
        f"count(*) FILTER (WHERE updated_at <= now() - interval '{low} days'"
        + (f" AND updated_at > now() - interval '{high} days')" if high is not None else ")")
        for (_, low), high in zip(
            AGE_BUCKETS, [b for _, b in AGE_BUCKETS[1:]] + [None], strict=True
        )
    )
    rows = conn.execute(
        f"SELECT company_id, key_type, count(*), {select} FROM whatsapp_keys"
        " GROUP BY company_id, key_type"
    ).fetchall()
    by_type: dict[str, int] = {}
    by_company: dict[str, int] = {}
    histogram = {label: 0 for label, _ in AGE_BUCKETS}
    total = 0
    for company, key_type, count, *ages in rows:
        total += int(count)
        by_type[key_type] = by_type.get(key_type, 0) + int(count)
        by_company[company] = by_company.get(company, 0) + int(count)
        for (label, _), n in zip(AGE_BUCKETS, ages, strict=True):
            histogram[label] += int(n)
    creds = conn.execute("SELECT count(*) FROM whatsapp_auth").fetchone()
    sizes = table_sizes(conn).to_dict()
    return {
        "total": total,
        "companies": int(creds[0]) if creds else 0,
        "by_type": dict(sorted(by_type.items())),
        "by_company": dict(sorted(by_company.items())),
        "past_expiry": counts.count(Expiry.PAST_EXPIRY),
        "past_expiry_by_company": counts.by_company(Expiry.PAST_EXPIRY),
        "stale": counts.count(Expiry.STALE),
        "stale_by_company": counts.by_company(Expiry.STALE),
        "retention_days": retention_days,
        "age_histogram": histogram,
        "sizes": sizes,
    }
