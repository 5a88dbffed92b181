"""PostgreSQL mode: the auth state through a connection pool, every statement timed.

The auth state is reached through a ``psycopg_pool`` pool of at most ``DB_POOL_SIZE``
connections (default 4, at least 1; one kept open), made by the first operation that finds
PostgreSQL reachable, so start-up never waits on it; every operation (load, key write, creds
save, key read) takes a connection for its duration and waits for one at most the connect
timeout. Every connection is autocommit and carries ``application_name`` =
``DB_APPLICATION_NAME`` (default ``baileys-service``; a monitor groups ``pg_stat_activity`` by
it). A wrong DSN is still a :class:`ConfigError` and an outage a :class:`DatabaseError`
(:func:`connect` classifies one direct attempt, made after any failure and when the pool gives no
connection in time); after an outage the pool is replaced, so the next operation reconnects.

``STANDIN_READERS`` (default 0) reader threads (:mod:`~resilience.drill.standin.service.readers`)
start once the keys are loaded: each reads 5 of the keys held (pre-keys when there are any)
through the pool, then waits ``READ_INTERVAL_MS`` (default 200); a failed read is counted
(``reads_failed``) and logged, throttled. With a small pool, many readers and a table lock held
elsewhere, requests queue for a connection: what a pool-exhaustion drill needs. These settings
are read from ``.env`` only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import psycopg
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from resilience.authstate.codec import Style
from resilience.authstate.pgconn import Conn, connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.drill.standin.service.backends.base import (
    CredsSaveFailed,
    KeyMap,
    KeyReadFailed,
    WriteFailed,
    exc_reason,
)
from resilience.drill.standin.service.lines import POSTGRES_MODE_LINE
from resilience.drill.standin.service.settings import (
    DEFAULT_APPLICATION_NAME,
    DEFAULT_BUFFER_FORM,
    DEFAULT_POOL_SIZE,
    DEFAULT_SLOW_QUERY_MS,
)
from resilience.drill.standin.traffic import KeyWrite
from resilience.errors import DatabaseError, ResilienceError
from resilience.monitoring.instrument import PoolCollector, QueryRecorder, timed_cursor_class
from resilience.monitoring.latency import QueryRecord
from resilience.service.modes import Mode

POOL_CLOSE_S = 1.0  # closing the pool waits at most this long for its worker threads


class PostgresBackend:
    """Auth state in PostgreSQL through a connection pool (psycopg_pool); every operation takes
    a connection for its duration, and every statement is timed into :attr:`recorder`.

    The pool is made by the first operation that finds PostgreSQL reachable, so start-up never
    waits on it. After a failure the next operation first makes one direct connection attempt
    (:func:`connect`): an outage or a wrong DSN is raised as that classifies it, at once; once
    the attempt works the pool is replaced by a fresh one, so neither a broken connection nor the
    reconnection backoff of the old pool outlives an outage (the old one closes its idle
    connections now and the ones in use when they are given back). When the pool gives no
    connection within the connect timeout, one direct attempt tells an outage or a wrong DSN
    from a pool whose every connection is in use. Connections are not checked when taken out
    (``check``): that would cost a round trip per operation, timed as a query."""

    mode: Mode = "postgres"

    def __init__(
        self,
        dsn: str,
        company: str,
        *,
        connect_timeout: float = 5.0,
        pool_size: int = DEFAULT_POOL_SIZE,
        application_name: str = DEFAULT_APPLICATION_NAME,
        registry: CollectorRegistry | None = None,
        slow_s: float = DEFAULT_SLOW_QUERY_MS / 1000,
        on_slow: Callable[[QueryRecord], None] | None = None,
        buffer_form: Style = DEFAULT_BUFFER_FORM,
    ) -> None:
        self.dsn = dsn
        self.buffer_form: Style = buffer_form
        self.company = company
        self.connect_timeout = connect_timeout
        self.max_size = max(1, pool_size)
        self.application_name = application_name
        self.recorder = QueryRecorder(registry, slow_s=slow_s, on_slow=on_slow)
        self._cursor_class = timed_cursor_class(self.recorder)
        self.pool: ConnectionPool[Conn] | None = None
        self._lock = threading.Lock()
        self._stale = True  # check PostgreSQL directly, then (re)make the pool
        self._closed = False
        self._in_use = 0
        self._pools = 0
        if registry is not None:
            registry.register(PoolCollector(self.pool_stats, self.max_size))

    def __repr__(self) -> str:
        return f"PostgresBackend(company={self.company!r})"

    def mode_line(self) -> str:
        return POSTGRES_MODE_LINE.format(company=self.company)

    # --- the pool ------------------------------------------------------------------------------
    def _new_pool(self) -> ConnectionPool[Conn]:
        self._pools += 1
        return ConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.max_size,
            open=False,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(self.connect_timeout)),
                "cursor_factory": self._cursor_class,
                "application_name": self.application_name,
            },
            timeout=self.connect_timeout,
            name=f"auth-{self._pools}",
        )

    def _direct_attempt(self) -> None:
        """One direct connection: ConfigError, DatabaseUnreachable or DatabaseError (redacted)
        when it fails."""
        probe = connect(self.dsn, timeout=self.connect_timeout, autocommit=True)
        with contextlib.suppress(psycopg.Error):
            probe.close()

    def _ready_pool(self) -> ConnectionPool[Conn]:
        if self._stale:
            self._direct_attempt()
        old: ConnectionPool[Conn] | None = None
        with self._lock:
            if self._closed:
                raise DatabaseError("the auth-state connection pool is closed")
            if self._stale or self.pool is None:
                old, self.pool = self.pool, self._new_pool()
                self.pool.open(wait=False)  # connects in the background
                self._stale = False
            pool = self.pool
        if old is not None:
            old.close(timeout=0)
        return pool

    def _mark_stale(self, pool: ConnectionPool[Conn]) -> None:
        with self._lock:
            if pool is self.pool:  # a failure on a pool already replaced changes nothing
                self._stale = True

    def _pool_timed_out(self, pool: ConnectionPool[Conn]) -> NoReturn:
        try:
            self._direct_attempt()
        except ResilienceError:
            self._mark_stale(pool)
            raise
        with self._lock:
            in_use = self._in_use
        if in_use < self.max_size:  # PostgreSQL answers, yet the pool could not connect
            self._mark_stale(pool)
        waiting = pool.get_stats().get("requests_waiting", 0)
        raise DatabaseError(
            f"no pooled connection within {self.connect_timeout:g} s ({in_use} of "
            f"{self.max_size} in use, {waiting} waiting)"
        )

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Conn]:
        """A pooled connection for one operation; a failure inside marks the pool stale."""
        pool = self._ready_pool()
        try:
            conn = pool.getconn(timeout=self.connect_timeout)
        except PoolTimeout:
            self._pool_timed_out(pool)
        except PoolClosed:  # replaced (after a failure) or closed meanwhile
            raise DatabaseError("the auth-state connection pool was closed") from None
        with self._lock:
            self._in_use += 1
        try:
            yield conn
        except (psycopg.Error, DatabaseError, OSError):
            self._mark_stale(pool)
            raise
        finally:
            with self._lock:
                self._in_use -= 1
            pool.putconn(conn)

    def pool_stats(self) -> dict[str, int]:
        """The pool's ``get_stats()`` (empty before the first pool and after close)."""
        pool = self.pool
        return {} if pool is None else pool.get_stats()

    def health_extras(self) -> dict[str, Any]:
        stats = self.pool_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        return {
            "pool": {
                "size": size,
                "idle": idle,
                "active": max(0, size - idle),
                "waiting": stats.get("requests_waiting", 0),
                "max": self.max_size,
            },
            "latency": self.recorder.ring.summary().to_dict(),
        }

    # --- the store -----------------------------------------------------------------------------
    def load(self) -> tuple[Any | None, KeyMap]:
        """Creds and keys; :class:`DatabaseError` when the database fails (an outage or a
        failed statement), :class:`ConfigError` for a wrong DSN, :class:`DataError` for data
        that cannot be decoded."""
        try:
            with self._connection() as conn:
                store = PgAuthStore(conn)
                creds = store.load_creds(self.company)
                if creds is None:
                    return None, {}
                # what Baileys sees: one key per file name, legacy twins resolved (authstate.view)
                view = view_of(self.company, creds, store.records(self.company))
        except psycopg.Error as exc:
            raise DatabaseError(f"loading the auth state failed: {exc_reason(exc)}") from None
        return creds, {(t, i): v for t, i, v in view.key_values()}

    def write(self, writes: Sequence[KeyWrite]) -> None:
        data: dict[str, dict[str, Any | None]] = {}
        for write in writes:
            data.setdefault(write.key_type, {})[write.key_id] = write.value
        try:
            with self._connection() as conn:
                PgAuthStore(conn).set_keys(self.company, data, style=self.buffer_form)
        except (ResilienceError, psycopg.Error, OSError) as exc:
            raise WriteFailed(0, exc_reason(exc)) from None

    def save_creds(self, creds: Any) -> None:
        try:
            with self._connection() as conn:
                PgAuthStore(conn).save_creds(self.company, creds, style=self.buffer_form)
        except (ResilienceError, psycopg.Error, OSError) as exc:
            raise CredsSaveFailed(exc_reason(exc)) from None

    def read_keys(self, key_type: str, ids: Sequence[str]) -> dict[str, Any]:
        try:
            with self._connection() as conn:
                return PgAuthStore(conn).get_keys(self.company, key_type, ids)
        except (ResilienceError, psycopg.Error, OSError) as exc:
            raise KeyReadFailed(
                f"cannot read {len(ids)} {key_type} key(s) of company {self.company} from "
                f"PostgreSQL: {exc_reason(exc)}"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.close(timeout=POOL_CLOSE_S)
