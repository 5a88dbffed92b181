"""A stand-in for the Baileys WhatsApp service, run by PM2 in drills (``python -m`` this module).

Seen from outside it behaves like the real service (docs/domain.md §4):

- reads ``.env`` in its working directory; file mode iff ``USE_REPOSITORY_PATTERN``,
  ``USE_DATABASE_AUTH_STATE`` and ``USE_LEGACY_SUPABASE`` are all ``false``, else PostgreSQL mode
  (:mod:`resilience.service.modes`);
- logs one line per mode at start (:data:`FILE_MODE_LINE`, :data:`POSTGRES_MODE_LINE`), then
  :data:`CONNECTION_OPEN_LINE` once the auth state is loaded; no creds: :data:`MISSING_CREDS_LINE`
  and a non-zero exit (the real service would need a QR re-pair);
- keeps writing keys (:mod:`resilience.drill.standin.traffic`) through the current backend,
  journals each acknowledged write (:mod:`resilience.drill.standin.writelog`) and applies it to
  its in-memory state only then; a failed write is logged, counted and retried on the next tick;
- serves ``GET /health`` (JSON) and ``GET /metrics`` (Prometheus text) on ``127.0.0.1:PORT``;
  Werkzeug serves them and prometheus-client writes the metrics text (a private registry), so
  neither the HTTP handling nor the exposition format is hand-written here;
- SIGTERM / SIGINT: stops writing, lets the in-flight write finish (up to ``SHUTDOWN_GRACE_MS``),
  logs :data:`STOPPED_LINE` with the final digest and exits 0.

Settings read from ``.env``: the three flags, ``DATABASE_URL``, ``COMPANY_ID``, ``AUTH_DIR``
(default ``auth_info``, relative to the working directory), ``PORT`` (``0``: any free port, logged
in :data:`HTTP_LINE`; absent: no HTTP server). Traffic settings ``WRITE_INTERVAL_MS`` (default
200; ``0`` disables traffic), ``WRITE_SEED`` (default ``standin``), ``STANDIN_WRITES`` (``0``
disables traffic) and ``SHUTDOWN_GRACE_MS`` (default 10000) are read from ``.env`` and may be
overridden by the process environment. ``DB_CONNECT_TIMEOUT_MS`` (default 10000, at least 1000;
a 2 s latency toxic makes one connection take several seconds) is read from ``.env`` only.

Pool, readers and the metric contract (PostgreSQL mode; these settings are read from ``.env``
only). The auth state is reached through a ``psycopg_pool`` pool of at most ``DB_POOL_SIZE``
connections (default 4, at least 1; one kept open), made by the first operation that finds
PostgreSQL reachable, so start-up never waits on it; every operation (load, key write, creds
save, key read) takes a connection for its duration and waits for one at most the connect
timeout. Every connection is autocommit and carries ``application_name`` = ``DB_APPLICATION_NAME``
(default ``baileys-service``; a monitor groups ``pg_stat_activity`` by it). A wrong DSN is still
a :class:`ConfigError` and an outage a :class:`DatabaseError` (:func:`connect` classifies one
direct attempt, made after any failure and when the pool gives no connection in time); after
an outage the pool is replaced, so the next operation reconnects. ``STANDIN_READERS`` (default
0) reader threads start once the keys are loaded: each reads 5 of the keys held (pre-keys when
there are any) through the pool, then waits ``READ_INTERVAL_MS`` (default 200); a failed read is
counted (``reads_failed``) and logged, throttled. With a small pool, many readers and a table
lock held elsewhere, requests queue for a connection: what a pool-exhaustion drill needs.

``/metrics`` publishes, besides the ``standin_*`` metrics, the contract of
:mod:`resilience.monitoring.contract`: ``process_start_time_seconds`` (both modes); in
PostgreSQL mode the duration histogram of every statement (by outcome), its nearest-rank
quantiles over the last 1,000 successful ones, the count of statements slower than
``SLOW_QUERY_MS`` (default 500; each logged, throttled, with the statement's head only) and the
pool gauges (idle/active connections, maximum, requests waiting). File mode runs no SQL and has
no pool: it publishes none of the query and pool metrics, and ``/health`` reports ``"pool"`` and
``"latency"`` as null. In PostgreSQL mode ``/health`` adds ``"pool"``: ``{"size", "idle",
"active", "waiting", "max"}`` and ``"latency"``: the summary of the last 1,000 statements
(:meth:`resilience.monitoring.latency.QueryRing.summary`); in both modes ``reads_ok`` and
``reads_failed`` count the readers' reads.

Creds cache (docs/domain.md §8; :mod:`resilience.authstate.credscache`). After every good
creds load or save the creds are cached per company, in memory and, with ``CREDS_CACHE_DIR``, in
an on-disk copy (0600 in a 0700 directory) that survives a PM2 restart; ``CREDS_CACHE_TTL_S``
(default 300; ``0`` turns the cache off) is its TTL. When loading creds fails at start with a
database error:

- with a fresh entry the service runs on the cached creds (*cache mode*): it logs
  :data:`CACHE_SERVING_LINE`, sends one Sentry warning carrying the true cache age (the seconds
  since that good load or save) through ``SENTRY_DSN`` when set, skips every creds save (counted,
  logged), key reads fail with :class:`KeyReadFailed` (counted, never an empty answer as if the
  keys did not exist) and key writes fail as in any outage (``writes_failed``). Every
  ``CACHE_RELOAD_INTERVAL_MS`` (default 3000, at least 200; each attempt bounded by the connect
  timeout) it tries to load again; the first good load ends cache mode
  (:data:`CACHE_LEFT_LINE`), then it proceeds as after a normal start (keys loaded,
  :data:`CONNECTION_OPEN_LINE`);
- when the entry is older than the TTL (at start, or while serving from it) the service fails
  loudly: :data:`CACHE_EXPIRED_LINE`, a Sentry error, and ``/health`` answers 503 with
  ``"ok": false``; it keeps trying to load and recovers when PostgreSQL is back;
- without any entry it cannot start (:data:`NO_CACHE_LINE`, exit code 6).

A wrong DSN (a configuration error) or missing or corrupt creds never fall back to the cache.
The stand-in holds every key it loaded, so it reads keys from the store only in cache mode.
``/health`` reports ``ok`` (``status``: ``ok``, ``degraded`` on cached creds, ``unavailable``
once they expired), ``creds_saves_ok``/``creds_saves_failed`` and ``cache``:
``{"state": "off|fresh|serving|expired", "age_s", "ttl_s", "skipped_creds_saves",
"failed_key_reads", "creds_fingerprint", "serving_since", "source"}``; in cache mode the keys are
not loaded, so ``key_count``, ``digest`` and the ``loaded_*`` fields are ``null``.
Creds saves, as Baileys makes them (both modes, through the backend in use). Pre-key ids are
issued from the creds' ``nextPreKeyId`` (:mod:`resilience.drill.standin.traffic`); once a batch
that issues pre-keys was acknowledged (and journaled), ``nextPreKeyId`` and
``firstUnuploadedPreKeyId`` move past them and the creds are saved (Baileys' ``creds.update``
after ``uploadPreKeys``): ``creds.json`` in file mode, the creds row in PostgreSQL mode. A save
that fails is counted (``creds_saves_failed``), logged (throttled) and made again after the next
acknowledged write. ``PRE_KEY_CREDS_SAVE=false`` (from ``.env``; default ``true``) keeps the
counters in memory only (a drill that needs ``creds.json`` left as it made it).
``CREDS_SAVE_INTERVAL_MS`` (default 0: never) adds periodic saves, as Baileys makes on other
``creds.update`` events (``accountSyncCounter`` and ``lastAccountSyncTimestamp`` change). Every
save is counted in ``creds_saves_ok`` and cached as above; none is made while serving from the
cache (counted in ``skipped_creds_saves``).

``DB_BUFFER_FORM`` (from ``.env``): the Buffer form PostgreSQL mode writes key rows and creds in,
``array`` (the default: ``{"type": "Buffer", "data": [0, 1, ...]}``) or ``base64`` (what Baileys'
``BufferJSON`` writes); either is read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol

import psycopg
from dotenv import dotenv_values
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
from werkzeug.exceptions import NotImplemented as MethodNotImplemented
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from resilience.alerting.channels import SentryChannel
from resilience.authstate.codec import Style
from resilience.authstate.credscache import DEFAULT_TTL_S, CacheEntry, CredsCache
from resilience.authstate.filestore import FileAuthStore
from resilience.authstate.fingerprint import (
    KeyFingerprint,
    digest_of_fingerprints,
    next_pre_key_id,
)
from resilience.authstate.pgconn import Conn, connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.config import validate_company_id
from resilience.drill.standin.traffic import KeyWrite, Traffic, creds_after_pre_keys
from resilience.drill.standin.writelog import WRITELOG_FILE, WriteLog
from resilience.errors import ConfigError, DatabaseError, DataError, ResilienceError, StackError
from resilience.infra.redact import Redactor
from resilience.infra.waiting import wait_until
from resilience.monitoring import contract
from resilience.monitoring.instrument import PoolCollector, QueryRecorder, timed_cursor_class
from resilience.monitoring.latency import QueryRecord
from resilience.service.modes import Mode, mode_of

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


ENV_FILE = ".env"
DEFAULT_AUTH_DIR = "auth_info"
DEFAULT_INTERVAL_MS = 200
DEFAULT_SEED = "standin"
DEFAULT_GRACE_MS = 10000
DEFAULT_CONNECT_TIMEOUT_MS = 10000
DEFAULT_POOL_SIZE = 4
DEFAULT_APPLICATION_NAME = "baileys-service"
MAX_APPLICATION_NAME = 63  # PostgreSQL keeps NAMEDATALEN - 1 bytes of it
DEFAULT_READ_INTERVAL_MS = 200
DEFAULT_SLOW_QUERY_MS = 500
DEFAULT_BUFFER_FORM: Style = "array"
BUFFER_FORMS: tuple[Style, ...] = ("array", "base64")
READ_BATCH = 5  # keys one reader asks for at a time
READER_REFRESH_S = 5.0  # a reader picks its key ids from the held keys at most this often
POOL_CLOSE_S = 1.0  # closing the pool waits at most this long for its worker threads
DEFAULT_RELOAD_INTERVAL_MS = 3000  # cache mode: one load attempt every this many ms
MIN_RELOAD_INTERVAL_MS = 200
LOG_EVERY_S = 5.0  # a repeated warning (failed writes, skipped saves, reads) at most this often
HOST = "127.0.0.1"
SIGNAL_WAIT = 0.25  # seconds between two looks at the stop flag while waiting for a signal
FATAL = "fatal error"

# --- log lines (format strings) and the patterns that find them in a log ------------------------
FILE_MODE_LINE = "[auth] using file auth state from {directory} for company {company}"
POSTGRES_MODE_LINE = "[auth] using PostgreSQL auth state for company {company}"
CONNECTION_OPEN_LINE = "connection open (keys={keys})"
MISSING_CREDS_LINE = (
    "[auth] no credentials for company {company} in {source}: the service must be re-paired by QR"
)
HTTP_LINE = "[http] listening on http://{host}:{port}"
STOPPED_LINE = (
    "[standin] stopped (keys={keys}, digest={digest}, writes_ok={ok}, writes_failed={failed})"
)
CACHE_SERVING_LINE = (
    "[auth] PostgreSQL unavailable for company {company}: serving creds from cache "
    "(age {age:.1f} s, ttl {ttl:g} s, {source}); creds saves are skipped and key reads fail "
    "until PostgreSQL is back ({reason})"
)
CACHE_EXPIRED_LINE = (
    "[auth] cached creds of company {company} expired (age {age:.1f} s > ttl {ttl:g} s) and "
    "PostgreSQL is unavailable: the service cannot run; bring PostgreSQL back or re-pair "
    "({reason})"
)
CACHE_LEFT_LINE = (
    "[auth] PostgreSQL is back for company {company}: left cache mode after {duration:.1f} s "
    "(skipped creds saves={skipped}, failed key reads={reads})"
)
NO_CACHE_LINE = (
    "[auth] PostgreSQL unavailable for company {company} and no cached creds to run on: {why}"
)
STOPPED_ON_CACHE_LINE = (
    "[standin] stopped on cached creds (keys not loaded, writes_ok={ok}, writes_failed={failed}, "
    "skipped_creds_saves={skipped}, failed_key_reads={reads})"
)

_COMPANY = r"(?P<company>[A-Za-z0-9_-]{1,50})"
FILE_MODE_PATTERN = re.compile(
    r"\[auth\] using file auth state from (?P<directory>.+) for company " + _COMPANY + r"[ \t\r]*$",
    re.MULTILINE,
)
POSTGRES_MODE_PATTERN = re.compile(
    r"\[auth\] using PostgreSQL auth state for company " + _COMPANY + r"[ \t\r]*$",
    re.MULTILINE,
)
CONNECTION_OPEN_PATTERN = re.compile(r"connection open \(keys=(?P<keys>\d+)\)")
MISSING_CREDS_PATTERN = re.compile(r"\[auth\] no credentials for company " + _COMPANY)
HTTP_PATTERN = re.compile(r"\[http\] listening on http://(?P<host>[0-9.]+):(?P<port>\d+)")
STOPPED_PATTERN = re.compile(
    r"\[standin\] stopped \(keys=(?P<keys>\d+), digest=(?P<digest>[0-9a-f]{64}), "
    r"writes_ok=(?P<ok>\d+), writes_failed=(?P<failed>\d+)\)"
)
CACHE_SERVING_PATTERN = re.compile(
    r"\[auth\] PostgreSQL unavailable for company " + _COMPANY + r": serving creds from cache "
    r"\(age (?P<age>[0-9.]+) s, ttl (?P<ttl>[0-9.e+]+) s, (?P<source>[a-z ]+)\)"
)
CACHE_EXPIRED_PATTERN = re.compile(
    r"\[auth\] cached creds of company " + _COMPANY + r" expired \(age (?P<age>[0-9.]+) s > "
    r"ttl (?P<ttl>[0-9.e+]+) s\)"
)
CACHE_LEFT_PATTERN = re.compile(
    r"\[auth\] PostgreSQL is back for company " + _COMPANY + r": left cache mode after "
    r"(?P<duration>[0-9.]+) s \(skipped creds saves=(?P<skipped>\d+), "
    r"failed key reads=(?P<reads>\d+)\)"
)
NO_CACHE_PATTERN = re.compile(
    r"\[auth\] PostgreSQL unavailable for company " + _COMPANY + r" and no cached creds"
)
STOPPED_ON_CACHE_PATTERN = re.compile(
    r"\[standin\] stopped on cached creds \(keys not loaded, writes_ok=(?P<ok>\d+), "
    r"writes_failed=(?P<failed>\d+), skipped_creds_saves=(?P<skipped>\d+), "
    r"failed_key_reads=(?P<reads>\d+)\)"
)

log = logging.getLogger(__name__)


def mode_pattern(mode: Mode) -> re.Pattern[str]:
    """The pattern of the start-up line of ``mode``."""
    return FILE_MODE_PATTERN if mode == "file" else POSTGRES_MODE_PATTERN


def mode_from_flags(values: Mapping[str, str | None]) -> Mode:
    """The mode the three flags choose (:func:`resilience.service.modes.mode_of`)."""
    return mode_of(values)


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StandinConfig:
    """What the stand-in read from ``.env`` (and, for traffic, the environment)."""

    mode: Mode
    company: str
    database_url: str | None
    auth_dir: Path
    port: int | None
    write_interval_ms: int
    write_seed: str
    writes_enabled: bool
    shutdown_grace_ms: int
    journal: Path
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS
    creds_cache_dir: Path | None = None  # the on-disk copy; None: memory only
    creds_cache_ttl_s: float = DEFAULT_TTL_S  # 0: no creds cache
    sentry_dsn: str | None = None
    creds_save_interval_ms: int = 0  # 0: no periodic creds saves
    pre_key_creds_save: bool = True  # creds saved after each pre-key upload, as Baileys does
    buffer_form: Style = DEFAULT_BUFFER_FORM  # PostgreSQL mode writes Buffers in this form
    cache_reload_interval_ms: int = DEFAULT_RELOAD_INTERVAL_MS
    pool_size: int = DEFAULT_POOL_SIZE
    application_name: str = DEFAULT_APPLICATION_NAME
    readers: int = 0  # reader threads (PostgreSQL mode)
    read_interval_ms: int = DEFAULT_READ_INTERVAL_MS
    slow_query_ms: int = DEFAULT_SLOW_QUERY_MS

    def __repr__(self) -> str:  # never show the DSNs (the database's password, Sentry's key)
        return (
            f"StandinConfig(mode={self.mode!r}, company={self.company!r}, "
            f"auth_dir={str(self.auth_dir)!r}, port={self.port!r})"
        )

    @property
    def traffic(self) -> bool:
        return self.writes_enabled and self.write_interval_ms > 0

    @property
    def creds_cache(self) -> bool:
        """Creds are cached (PostgreSQL mode with a positive TTL)."""
        return self.mode == "postgres" and self.creds_cache_ttl_s > 0


def _int_setting(values: Mapping[str, str | None], name: str, default: int | None) -> int | None:
    raw = (values.get(name) or "").strip()
    if not raw:
        return default
    try:
        number = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw[:30]!r}") from None
    if number < 0:
        raise ConfigError(f"{name} must not be negative (got {number})")
    return number


def _seconds_setting(values: Mapping[str, str | None], name: str, default: float) -> float:
    raw = (values.get(name) or "").strip()
    if not raw:
        return default
    try:
        number = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw[:30]!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{name} must be a finite number of seconds, at least 0 (got {raw[:30]})")
    return number


def _bool_setting(values: Mapping[str, str | None], name: str, default: bool) -> bool:
    raw = (values.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw[:30]!r}")


def _buffer_form(values: Mapping[str, str | None]) -> Style:
    raw = (values.get("DB_BUFFER_FORM") or "").strip().lower()
    if not raw:
        return DEFAULT_BUFFER_FORM
    for form in BUFFER_FORMS:
        if raw == form:
            return form
    raise ConfigError(f"DB_BUFFER_FORM must be array or base64, not {raw[:30]!r}")


def _application_name(values: Mapping[str, str | None]) -> str:
    name = (values.get("DB_APPLICATION_NAME") or "").strip() or DEFAULT_APPLICATION_NAME
    if len(name) > MAX_APPLICATION_NAME or not all(" " <= c <= "~" for c in name):
        raise ConfigError(
            f"DB_APPLICATION_NAME must be at most {MAX_APPLICATION_NAME} printable ASCII "
            f"characters (got {name[:30]!r})"
        )
    return name


def read_config(cwd: Path, environ: Mapping[str, str] | None = None) -> StandinConfig:
    """Read ``cwd/.env`` (and traffic overrides from ``environ``); :class:`ConfigError` names the
    bad or missing setting."""
    env_path = cwd / ENV_FILE
    if not env_path.is_file():
        raise ConfigError(f"no {ENV_FILE} in {cwd}: the service reads its settings from it")
    values: dict[str, str | None] = dict(dotenv_values(env_path))
    overrides = os.environ if environ is None else environ
    for name in ("WRITE_INTERVAL_MS", "WRITE_SEED", "STANDIN_WRITES", "SHUTDOWN_GRACE_MS"):
        if name in overrides:
            values[name] = overrides[name]
    company = (values.get("COMPANY_ID") or "").strip()
    if not company:
        raise ConfigError(f"COMPANY_ID is missing in {env_path}")
    validate_company_id(company)
    mode = mode_from_flags(values)
    dsn = (values.get("DATABASE_URL") or "").strip() or None
    if mode == "postgres" and dsn is None:
        raise ConfigError(f"DATABASE_URL is missing in {env_path} (needed in PostgreSQL mode)")
    auth_dir = Path((values.get("AUTH_DIR") or "").strip() or DEFAULT_AUTH_DIR)
    port = _int_setting(values, "PORT", None)
    if port is not None and port > 65535:
        raise ConfigError(f"PORT must be at most 65535 (got {port})")
    interval = _int_setting(values, "WRITE_INTERVAL_MS", DEFAULT_INTERVAL_MS)
    grace = _int_setting(values, "SHUTDOWN_GRACE_MS", DEFAULT_GRACE_MS)
    connect_timeout = _int_setting(values, "DB_CONNECT_TIMEOUT_MS", DEFAULT_CONNECT_TIMEOUT_MS)
    writes = (values.get("STANDIN_WRITES") or "").strip().lower()
    cache_dir_text = (values.get("CREDS_CACHE_DIR") or "").strip()
    cache_dir = Path(cache_dir_text) if cache_dir_text else None
    if cache_dir is not None and not cache_dir.is_absolute():
        cache_dir = cwd / cache_dir
    reload_ms = _int_setting(values, "CACHE_RELOAD_INTERVAL_MS", DEFAULT_RELOAD_INTERVAL_MS)
    pool_size = _int_setting(values, "DB_POOL_SIZE", DEFAULT_POOL_SIZE)
    read_ms = _int_setting(values, "READ_INTERVAL_MS", DEFAULT_READ_INTERVAL_MS)
    slow_ms = _int_setting(values, "SLOW_QUERY_MS", DEFAULT_SLOW_QUERY_MS)
    return StandinConfig(
        mode=mode,
        company=company,
        database_url=dsn,
        auth_dir=auth_dir if auth_dir.is_absolute() else cwd / auth_dir,
        port=port,
        write_interval_ms=DEFAULT_INTERVAL_MS if interval is None else interval,
        write_seed=(values.get("WRITE_SEED") or "").strip() or DEFAULT_SEED,
        writes_enabled=writes not in ("0", "false", "no", "off"),
        shutdown_grace_ms=DEFAULT_GRACE_MS if grace is None else grace,
        journal=cwd / WRITELOG_FILE,
        connect_timeout_ms=max(1000, connect_timeout or DEFAULT_CONNECT_TIMEOUT_MS),
        creds_cache_dir=cache_dir,
        creds_cache_ttl_s=_seconds_setting(values, "CREDS_CACHE_TTL_S", DEFAULT_TTL_S),
        sentry_dsn=(values.get("SENTRY_DSN") or "").strip() or None,
        creds_save_interval_ms=_int_setting(values, "CREDS_SAVE_INTERVAL_MS", 0) or 0,
        pre_key_creds_save=_bool_setting(values, "PRE_KEY_CREDS_SAVE", True),
        buffer_form=_buffer_form(values),
        cache_reload_interval_ms=max(
            MIN_RELOAD_INTERVAL_MS, DEFAULT_RELOAD_INTERVAL_MS if reload_ms is None else reload_ms
        ),
        pool_size=max(1, DEFAULT_POOL_SIZE if pool_size is None else pool_size),
        application_name=_application_name(values),
        readers=_int_setting(values, "STANDIN_READERS", 0) or 0,
        read_interval_ms=max(1, DEFAULT_READ_INTERVAL_MS if read_ms is None else read_ms),
        slow_query_ms=DEFAULT_SLOW_QUERY_MS if slow_ms is None else slow_ms,
    )


# --- backends ------------------------------------------------------------------------------------

KeyMap = dict[tuple[str, str], Any]


def _fingerprints(keys: KeyMap) -> dict[tuple[str, str], str]:
    return {(t, i): KeyFingerprint.of(t, i, v) for (t, i), v in keys.items()}


class WriteFailed(Exception):
    """A write was not acknowledged; the first ``done`` writes of the batch were."""

    def __init__(self, done: int, reason: str) -> None:
        super().__init__(reason)
        self.done = done
        self.reason = reason


class CredsSaveFailed(Exception):
    """A creds save was not acknowledged."""


class KeyReadFailed(Exception):
    """Keys could not be read. Never an empty answer: keys that cannot be read are not keys
    that do not exist (docs/domain.md §10)."""


class Backend(Protocol):
    mode: Mode

    def mode_line(self) -> str: ...

    def load(self) -> tuple[Any | None, KeyMap]: ...

    def write(self, writes: Sequence[KeyWrite]) -> None: ...

    def save_creds(self, creds: Any) -> None: ...

    def read_keys(self, key_type: str, ids: Sequence[str]) -> dict[str, Any]: ...

    def health_extras(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
            raise DatabaseError(f"loading the auth state failed: {_reason(exc)}") from None
        return creds, {(t, i): v for t, i, v in view.key_values()}

    def write(self, writes: Sequence[KeyWrite]) -> None:
        data: dict[str, dict[str, Any | None]] = {}
        for write in writes:
            data.setdefault(write.key_type, {})[write.key_id] = write.value
        try:
            with self._connection() as conn:
                PgAuthStore(conn).set_keys(self.company, data, style=self.buffer_form)
        except (ResilienceError, psycopg.Error, OSError) as exc:
            raise WriteFailed(0, _reason(exc)) from None

    def save_creds(self, creds: Any) -> None:
        try:
            with self._connection() as conn:
                PgAuthStore(conn).save_creds(self.company, creds, style=self.buffer_form)
        except (ResilienceError, psycopg.Error, OSError) as exc:
            raise CredsSaveFailed(_reason(exc)) from None

    def read_keys(self, key_type: str, ids: Sequence[str]) -> dict[str, Any]:
        try:
            with self._connection() as conn:
                return PgAuthStore(conn).get_keys(self.company, key_type, ids)
        except (ResilienceError, psycopg.Error, OSError) as exc:
            raise KeyReadFailed(
                f"cannot read {len(ids)} {key_type} key(s) of company {self.company} from "
                f"PostgreSQL: {_reason(exc)}"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.close(timeout=POOL_CLOSE_S)


class FileBackend:
    """Baileys' multi-file store: one file write (or deletion) per key, in order."""

    mode: Mode = "file"

    def __init__(self, root: Path, company: str) -> None:
        self.store = FileAuthStore(root)
        self.company = company

    def mode_line(self) -> str:
        return FILE_MODE_LINE.format(
            directory=self.store.company_dir(self.company), company=self.company
        )

    def load(self) -> tuple[Any | None, KeyMap]:
        creds = self.store.read_creds(self.company)
        if creds is None:
            return None, {}
        return creds, self.store.read_keys(self.company)

    def write(self, writes: Sequence[KeyWrite]) -> None:
        for done, write in enumerate(writes):
            try:
                self.store.write_key(self.company, write.key_type, write.key_id, write.value)
            except (ResilienceError, OSError) as exc:
                raise WriteFailed(done, _reason(exc)) from None

    def save_creds(self, creds: Any) -> None:
        try:
            self.store.write_creds(self.company, creds)
        except (ResilienceError, OSError) as exc:
            raise CredsSaveFailed(_reason(exc)) from None

    def read_keys(self, key_type: str, ids: Sequence[str]) -> dict[str, Any]:
        wanted = set(ids)
        try:
            held = self.store.read_keys(self.company)
        except (ResilienceError, OSError) as exc:
            raise KeyReadFailed(
                f"cannot read {key_type} keys of company {self.company} from "
                f"{self.store.company_dir(self.company)}: {_reason(exc)}"
            ) from None
        return {i: v for (t, i), v in held.items() if t == key_type and i in wanted}

    def health_extras(self) -> dict[str, Any]:
        return {"pool": None, "latency": None}  # no pool and no SQL in file mode

    def close(self) -> None:
        pass


def _slow_query_logger(slow_ms: int) -> Callable[[QueryRecord], None]:
    throttle = _Throttle()

    def slow(record: QueryRecord) -> None:
        if throttle.due():  # the statement's head only, never its parameters
            log.warning(
                "[auth] slow query: %.0f ms (> %d ms): %s",
                record.duration_s * 1000,
                slow_ms,
                record.sql,
            )

    return slow


def make_backend(config: StandinConfig, registry: CollectorRegistry | None = None) -> Backend:
    """The backend of this configuration; in PostgreSQL mode its query and pool metrics go to
    ``registry`` (when given)."""
    if config.mode == "file":
        return FileBackend(config.auth_dir, config.company)
    assert config.database_url is not None  # read_config guarantees it
    return PostgresBackend(
        config.database_url,
        config.company,
        connect_timeout=config.connect_timeout_ms / 1000,
        pool_size=config.pool_size,
        application_name=config.application_name,
        registry=registry,
        slow_s=config.slow_query_ms / 1000,
        on_slow=_slow_query_logger(config.slow_query_ms),
        buffer_form=config.buffer_form,
    )


# --- in-memory state -----------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds")


def creds_fingerprint(creds: Any) -> str:
    """The creds' fingerprint, as the drills' evidence takes it (never the creds themselves)."""
    return KeyFingerprint.of("creds", "", creds)


class ServiceState:
    """Creds and keys as persisted (a write is applied only after it was acknowledged), plus
    counters and the creds cache's view. The set digest is computed lazily and cached per
    version. In cache mode the keys are not loaded (``keys_known`` is False)."""

    def __init__(
        self,
        mode: Mode,
        company: str,
        creds: Any,
        keys: KeyMap,
        *,
        keys_known: bool = True,
        cache_ttl_s: float | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.mode: Mode = mode
        self.company = company
        self.creds = creds
        self.keys: KeyMap = dict(keys)
        self.keys_known = keys_known
        self.writes_ok = 0
        self.writes_failed = 0
        self.last_write_at: datetime | None = None
        self.started_at = _now()
        self.last_seq = 0
        self.version = 0
        self._digest_lock = threading.Lock()
        self._digest: tuple[int, str] | None = None
        # what was loaded at start, before any write: what a restore verifies against
        self.loaded_key_count = len(self.keys)
        # one fingerprint per key, kept current by every write: /health's live digest is then
        # a sort and a hash, not a re-encoding of every value (100k keys under steady writes)
        self._prints = _fingerprints(self.keys)
        self.loaded_digest = digest_of_fingerprints(creds, self._prints.values())
        # creds saves and the creds cache (None TTL: no cache)
        self.creds_saves_ok = 0
        self.creds_saves_failed = 0
        self.cache_ttl_s = cache_ttl_s
        self.cache_stored_at: float | None = None  # wall clock of the entry in use
        self.cache_source: str | None = None
        self.cache_fingerprint: str | None = None
        self.on_cache = False  # serving creds from the cache (no good load yet)
        self.serving_since: datetime | None = None
        self.skipped_creds_saves = 0
        self.failed_key_reads = 0
        # the reader threads (STANDIN_READERS)
        self.reads_ok = 0
        self.reads_failed = 0

    # --- changes -------------------------------------------------------------------------------
    def apply(self, writes: Sequence[KeyWrite], at: datetime, last_seq: int) -> None:
        with self.lock:
            for write in writes:
                if write.deleted:
                    self.keys.pop(write.ref, None)
                    self._prints.pop(write.ref, None)
                else:
                    self.keys[write.ref] = write.value
                    self._prints[write.ref] = KeyFingerprint.of(*write.ref, write.value)
            self.writes_ok += len(writes)
            self.last_write_at = at
            self.last_seq = last_seq
            self.version += 1

    def failed(self) -> None:
        with self.lock:
            self.writes_failed += 1

    def creds_saved(self, creds: Any) -> None:
        with self.lock:
            self.creds = creds
            self.creds_saves_ok += 1
            self.version += 1

    def creds_save_failed(self) -> None:
        with self.lock:
            self.creds_saves_failed += 1

    def cached(self, entry: CacheEntry, source: str = "memory") -> None:
        """The cache now holds ``entry`` (after a good load or save, or read at start)."""
        fingerprint = creds_fingerprint(entry.creds)
        with self.lock:
            self.cache_stored_at = entry.stored_at
            self.cache_source = source
            self.cache_fingerprint = fingerprint

    def serve_from_cache(self, entry: CacheEntry) -> None:
        self.cached(entry, entry.source)
        with self.lock:
            self.on_cache = True
            self.serving_since = _now()

    def leave_cache(self, creds: Any, keys: KeyMap) -> float:
        """A good load ended cache mode: hold what it loaded; returns the seconds spent on the
        cache."""
        prints = _fingerprints(keys)
        digest = digest_of_fingerprints(creds, prints.values())
        with self.lock:
            since = self.serving_since or _now()
            self.creds = creds
            self.keys = dict(keys)
            self._prints = prints
            self.keys_known = True
            self.loaded_key_count = len(self.keys)
            self.loaded_digest = digest
            self.on_cache = False
            self.serving_since = None
            self.version += 1
        return (_now() - since).total_seconds()

    def skipped_save(self) -> int:
        with self.lock:
            self.skipped_creds_saves += 1
            return self.skipped_creds_saves

    def failed_read(self) -> int:
        with self.lock:
            self.failed_key_reads += 1
            return self.failed_key_reads

    def reader_read(self, ok: bool) -> int:
        """A reader's read was answered (ok) or failed; returns the count of its kind."""
        with self.lock:
            if ok:
                self.reads_ok += 1
                return self.reads_ok
            self.reads_failed += 1
            return self.reads_failed

    def reader_ids(self) -> tuple[str, list[str]] | None:
        """What the readers read: the pre-keys held, else the ids of the type held most."""
        with self.lock:
            refs = list(self.keys)
        by_type: dict[str, list[str]] = {}
        for key_type, key_id in refs:
            by_type.setdefault(key_type, []).append(key_id)
        if not by_type:
            return None
        key_type = (
            "pre-key" if "pre-key" in by_type else max(by_type, key=lambda t: len(by_type[t]))
        )
        return key_type, by_type[key_type]

    # --- views ---------------------------------------------------------------------------------
    def cache_age(self, now: float | None = None) -> float | None:
        with self.lock:
            stored = self.cache_stored_at
        if stored is None:
            return None
        return max(0.0, (time.time() if now is None else now) - stored)

    def expired(self) -> bool:
        """Serving from a cache entry older than the TTL: the service cannot run."""
        with self.lock:
            on_cache, ttl = self.on_cache, self.cache_ttl_s
        age = self.cache_age()
        return on_cache and ttl is not None and age is not None and age > ttl

    def _cache_report(self, now: float) -> dict[str, Any]:
        """The ``cache`` object of /health (called with the lock held)."""
        ttl, stored = self.cache_ttl_s, self.cache_stored_at
        age = None if stored is None else max(0.0, now - stored)
        if ttl is None or age is None:
            state = "off"
        elif age > ttl:
            state = "expired"
        else:
            state = "serving" if self.on_cache else "fresh"
        return {
            "state": state,
            "age_s": None if age is None else round(age, 3),
            "ttl_s": ttl,
            "skipped_creds_saves": self.skipped_creds_saves,
            "failed_key_reads": self.failed_key_reads,
            "creds_fingerprint": self.cache_fingerprint,
            "serving_since": _iso(self.serving_since),
            "source": self.cache_source,
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything /health reports, consistent with one moment."""
        with self._digest_lock:
            with self.lock:
                cache = self._cache_report(time.time())
                ok = not (self.on_cache and cache["state"] == "expired")
                known = self.keys_known
                report: dict[str, Any] = {
                    "status": "unavailable" if not ok else "degraded" if self.on_cache else "ok",
                    "ok": ok,
                    "mode": self.mode,
                    "company": self.company,
                    "key_count": len(self.keys) if known else None,
                    "last_write_at": _iso(self.last_write_at),
                    "writes_ok": self.writes_ok,
                    "writes_failed": self.writes_failed,
                    "last_seq": self.last_seq,
                    "started_at": _iso(self.started_at),
                    "pid": os.getpid(),
                    "loaded_key_count": self.loaded_key_count if known else None,
                    "loaded_digest": self.loaded_digest if known else None,
                    "creds_saves_ok": self.creds_saves_ok,
                    "creds_saves_failed": self.creds_saves_failed,
                    "reads_ok": self.reads_ok,
                    "reads_failed": self.reads_failed,
                    "cache": cache,
                }
                version, creds = self.version, self.creds
                stale = known and (self._digest is None or self._digest[0] != version)
                prints = list(self._prints.values()) if stale else []
            if stale:
                digest = digest_of_fingerprints(creds, prints)
                self._digest = (version, digest)
            report["digest"] = None if not known or self._digest is None else self._digest[1]
        return report


# --- HTTP: /health and /metrics -----------------------------------------------------------------

# generate_latest writes the 0.0.4 text format for these names; its CONTENT_TYPE_LATEST says
# version=1.0.0 since prometheus-client 0.22: the header the service always sent is kept.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SERVER_NAME = "baileys-standin"


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


NO_EXTRAS: dict[str, Any] = {"pool": None, "latency": None}


def make_app(
    state: ServiceState,
    backend: Backend | None = None,
    registry: CollectorRegistry | None = None,
) -> WSGIApplication:
    """The WSGI app: ``GET /health`` (JSON; 503 when not ok), ``GET /metrics``, 404 elsewhere,
    501 for other methods (as :mod:`http.server` answered before). ``/health`` adds the
    backend's ``pool`` and ``latency`` (null without a backend, and in file mode)."""
    registry = metrics_registry(state.snapshot, registry)

    @Request.application
    def app(request: Request) -> Response:
        if request.method != "GET":
            raise MethodNotImplemented(f"Unsupported method ({request.method!r}).")
        if request.path == "/health":
            report = state.snapshot()
            report.update(NO_EXTRAS if backend is None else backend.health_extras())
            status = HTTPStatus.OK if report["ok"] else HTTPStatus.SERVICE_UNAVAILABLE
            return Response(json.dumps(report), status=status, content_type="application/json")
        if request.path == "/metrics":
            return Response(generate_latest(registry), content_type=METRICS_CONTENT_TYPE)
        return Response("not found\n", status=HTTPStatus.NOT_FOUND, content_type="text/plain")

    return app


class _RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, named like the service and logging requests at debug level only
    (Werkzeug's own logger would print one line per health poll)."""

    server_version = SERVER_NAME

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("[http] " + message, *args)


# --- the service ---------------------------------------------------------------------------------


class _Throttle:
    """At most one log line per ``every`` seconds for a repeated event (the first always)."""

    def __init__(self, every: float = LOG_EVERY_S) -> None:
        self.every = every
        self._last: float | None = None
        self._lock = threading.Lock()  # readers share one

    def due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._last is None or now - self._last >= self.every:
                self._last = now
                return True
            return False


def make_cache(config: StandinConfig) -> CredsCache | None:
    """The creds cache of this configuration (None in file mode or with a TTL of 0)."""
    if not config.creds_cache:
        return None
    return CredsCache(config.creds_cache_ttl_s, config.creds_cache_dir, logger=log)


class Service:
    """One run of the stand-in: loaded state, the worker thread (traffic, and in cache mode the
    reload attempts), the reader threads, HTTP server."""

    def __init__(
        self,
        config: StandinConfig,
        backend: Backend,
        state: ServiceState,
        journal: WriteLog,
        *,
        cache: CredsCache | None = None,
        sentry: SentryChannel | None = None,
        redactor: Redactor | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.backend = backend
        self.state = state
        self.journal = journal
        self.cache = cache
        self.sentry = sentry
        self.redactor = redactor or Redactor([config.database_url])
        self.stop = threading.Event()
        self.fatal: str | None = None
        self.http: BaseWSGIServer | None = None
        self.writer: threading.Thread | None = None
        self.readers: list[threading.Thread] = []
        self._fail_streak = 0
        self._last_warning = 0.0
        self._next_save = time.monotonic() + config.creds_save_interval_ms / 1000
        # Baileys' creds in memory: ahead of the saved ones (state.creds) until a save is made
        self.creds: Any = state.creds
        self._creds_unsaved = False  # a save is due (a pre-key upload, or a failed save)
        self._next_reload = time.monotonic() + config.cache_reload_interval_ms / 1000
        self._expiry_reported = False
        self.last_db_error = ""
        self._save_failed_log = _Throttle()
        self._skipped_log = _Throttle()
        self._read_failed_log = _Throttle()
        self._reload_failed_log = _Throttle(30.0)
        self._reader_failed_log = _Throttle()

    def start_http(self) -> None:
        if self.config.port is None:
            return
        # Bound here, not by make_server: Werkzeug would print the error and sys.exit(1).
        try:
            listener = socket.create_server((HOST, self.config.port))
        except OSError as exc:  # its strerror also names the address: keep the bare reason
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StackError(f"cannot listen on {HOST}:{self.config.port}: {reason}") from None
        with listener:  # make_server works on a duplicate of the descriptor
            self.http = make_server(
                HOST,
                self.config.port,
                make_app(self.state, self.backend, self.registry),
                threaded=True,
                request_handler=_RequestHandler,
                fd=listener.fileno(),
            )
        port = self.http.port
        threading.Thread(
            target=self.http.serve_forever, args=(0.1,), name="http", daemon=True
        ).start()
        log.info(HTTP_LINE.format(host=HOST, port=port))

    def start_traffic(self, traffic: Traffic) -> None:
        """Start the worker: traffic when enabled; in cache mode also the reload attempts
        (then it runs even with traffic disabled)."""
        if not self.config.traffic:
            log.info("[traffic] disabled")
            if not self.state.on_cache:
                return
        self.writer = threading.Thread(
            target=self._traffic_loop, args=(traffic,), name="traffic", daemon=True
        )
        self.writer.start()
        if self.config.traffic:
            log.info(
                "[traffic] writing keys every %d ms (seed %r)",
                self.config.write_interval_ms,
                self.config.write_seed,
            )

    def start_readers(self) -> None:
        """Start the reader threads (``STANDIN_READERS``, PostgreSQL mode, once the keys are
        loaded): each reads a few keys through the pool every ``READ_INTERVAL_MS``, so that a
        drill can exhaust the pool."""
        count = self.config.readers
        if self.readers or count <= 0 or self.config.mode != "postgres" or self.state.on_cache:
            return
        for index in range(count):
            reader = threading.Thread(
                target=self._read_loop, args=(index,), name=f"reader-{index}", daemon=True
            )
            self.readers.append(reader)
            reader.start()
        log.info(
            "[reader] %d reader(s) read %d keys each every %d ms (pool of %d)",
            count,
            READ_BATCH,
            self.config.read_interval_ms,
            self.config.pool_size,
        )

    def _read_loop(self, index: int) -> None:
        rng = random.Random(f"{self.config.write_seed}/reader/{index}")  # reproducible per reader
        interval = self.config.read_interval_ms / 1000
        held: tuple[str, list[str]] | None = None
        picked_at = -math.inf
        while not self.stop.is_set():
            if time.monotonic() - picked_at >= READER_REFRESH_S:
                held, picked_at = self.state.reader_ids(), time.monotonic()
            if held is not None:
                key_type, ids = held
                self._read_once(key_type, rng.sample(ids, min(READ_BATCH, len(ids))))
            self.stop.wait(interval)

    def _read_once(self, key_type: str, ids: list[str]) -> None:
        """One reader's read; a failure is counted and logged (throttled), never raised."""
        try:
            self.backend.read_keys(key_type, ids)
        except Exception as exc:  # a reader never stops the service
            if self.stop.is_set():  # the pool closes under it at shutdown
                return
            failed = self.state.reader_read(False)
            if self._reader_failed_log.due():
                log.warning(
                    "[reader] key read failed (%d so far): %s",
                    failed,
                    self.redactor.text(_reason(exc)),
                )
        else:
            self.state.reader_read(True)

    def _traffic_loop(self, traffic: Traffic) -> None:
        try:
            self._write_until_stopped(traffic)
        except Exception as exc:  # anything unexpected ends the service, loudly
            self.fatal = f"traffic stopped: {type(exc).__name__}: {_reason(exc)}"
            self.stop.set()

    def _write_until_stopped(self, traffic: Traffic) -> None:
        if self.config.traffic:
            interval = self.config.write_interval_ms / 1000
        else:
            interval = self.config.cache_reload_interval_ms / 1000
        pending: list[KeyWrite] | None = None
        next_at = time.monotonic()
        while not self.stop.is_set():
            if self.state.on_cache:
                loaded = self._cache_tick()
                if loaded is not None:  # back on PostgreSQL: traffic goes on from its keys
                    traffic = self._traffic_after_load(traffic, loaded)
                    pending = None
                if self.stop.is_set():
                    break
            if not self.state.on_cache:
                if not self.config.traffic:
                    return
                pending = self._write_tick(traffic, pending)
                self._maybe_save_creds()
            elif self.config.traffic and not self.state.expired():
                if pending is None:
                    pending = traffic.next_batch()
                if self._read_tick(pending):
                    # The database answered: load now instead of at the next attempt, and
                    # write nothing on cached creds meanwhile.
                    self._next_reload = 0.0
                    loaded = self._cache_tick()
                    if loaded is not None:
                        traffic = self._traffic_after_load(traffic, loaded)
                        pending = None
                else:
                    pending = self._write_tick(traffic, pending)
                    self._maybe_save_creds()
            next_at = max(next_at + interval, time.monotonic())
            self.stop.wait(next_at - time.monotonic())

    def _traffic_after_load(self, traffic: Traffic, keys: KeyMap) -> Traffic:
        """The stream once the keys were loaded (leaving cache mode): from those keys and the
        loaded creds' ``nextPreKeyId``, never below an id this run already issued."""
        floor = max(next_pre_key_id(self.creds) or 0, traffic.next_pre_key)
        return Traffic(self.config.write_seed, self.journal.seq, keys, floor)

    def _write_tick(
        self, traffic: Traffic, pending: list[KeyWrite] | None
    ) -> list[KeyWrite] | None:
        """One write attempt of the pending batch (a new one when none); returns what is still
        pending (a failed batch is retried unchanged)."""
        if pending is None:
            pending = traffic.next_batch()
        acknowledged: Sequence[KeyWrite]
        left: list[KeyWrite] | None
        began = time.monotonic()
        try:
            self.backend.write(pending)
        except WriteFailed as failure:
            acknowledged, left = pending[: failure.done], pending[failure.done :]
            self._failed(failure.reason)
        else:
            acknowledged, left = pending, None
            self._succeeded()
        if acknowledged:
            at = _now()
            try:
                entries = self.journal.append(
                    acknowledged,
                    mode=self.backend.mode,
                    company=self.config.company,
                    at=at,
                    latency_ms=(time.monotonic() - began) * 1000,
                )
            except OSError as exc:
                raise DataError(
                    f"cannot journal acknowledged writes to {self.journal.path}: {exc.strerror}"
                ) from None
            self.state.apply(acknowledged, at, entries[-1].seq)
            traffic.applied(acknowledged)
            self._after_acknowledged(acknowledged)
        return left

    def _failed(self, reason: str) -> None:
        self.state.failed()
        self._fail_streak += 1
        now = time.monotonic()
        if self._fail_streak == 1 or now - self._last_warning >= 5.0:
            self._last_warning = now
            log.warning(
                "[auth] key write failed (%d in a row), retrying on the next tick: %s",
                self._fail_streak,
                self.redactor.text(reason),
            )

    def _succeeded(self) -> None:
        if self._fail_streak:
            log.info("[auth] key writes resumed after %d failed attempt(s)", self._fail_streak)
            self._fail_streak = 0

    # --- creds saves, key reads and the creds cache ---------------------------------------------
    def _after_acknowledged(self, writes: Sequence[KeyWrite]) -> None:
        """Baileys after the ``keys.set`` of a pre-key upload: ``nextPreKeyId`` and
        ``firstUnuploadedPreKeyId`` move past the new pre-keys and the creds are saved
        (``creds.update``). A save that failed before is made again here."""
        moved = creds_after_pre_keys(self.creds, writes)
        if moved is not None:
            self.creds = moved
            if self.config.pre_key_creds_save:
                self._creds_unsaved = True
        if self._creds_unsaved:
            self._save_creds()

    def _maybe_save_creds(self) -> None:
        """Save the creds when a periodic save is due (``CREDS_SAVE_INTERVAL_MS``), as Baileys
        does on ``creds.update``."""
        if self.config.creds_save_interval_ms <= 0 or time.monotonic() < self._next_save:
            return
        self._next_save = time.monotonic() + self.config.creds_save_interval_ms / 1000
        if not self.state.on_cache:
            self.creds = _updated_creds(self.creds)
        self._save_creds()

    def _save_creds(self) -> None:
        """Save the creds held in memory through the backend in use (``creds.json`` or the
        creds row), counted and cached; skipped (and counted) while serving from the cache; a
        failed save is counted and made again after the next acknowledged write."""
        self._creds_unsaved = False
        if self.state.on_cache:
            skipped = self.state.skipped_save()
            if self._skipped_log.due():
                log.warning(
                    "[cache] creds save skipped: serving creds from cache, nothing is saved "
                    "until PostgreSQL is back (%d skipped so far)",
                    skipped,
                )
            return
        creds = self.creds
        try:
            self.backend.save_creds(creds)
        except CredsSaveFailed as exc:
            self._creds_unsaved = True
            self.state.creds_save_failed()
            if self._save_failed_log.due():
                log.warning(
                    "[auth] creds save failed, retrying after the next acknowledged write: %s",
                    self.redactor.text(str(exc)),
                )
            return
        self.state.creds_saved(creds)
        self._store_in_cache(creds, "save")

    def _store_in_cache(self, creds: Any, origin: Literal["load", "save"]) -> None:
        if self.cache is None:
            return
        try:
            entry = self.cache.store(self.config.company, creds, origin=origin)
        except ResilienceError as exc:
            log.warning("[cache] creds not cached: %s", exc)
            return
        self.state.cached(entry)

    def _read_tick(self, pending: Sequence[KeyWrite]) -> bool:
        """In cache mode the keys are not loaded: Baileys' reads go to the store (one read per
        tick, of the keys the pending batch touches) and fail while PostgreSQL is down. True
        when every read was answered."""
        by_type: dict[str, list[str]] = {}
        for write in pending:
            by_type.setdefault(write.key_type, []).append(write.key_id)
        for key_type, ids in by_type.items():
            try:
                self.backend.read_keys(key_type, ids)
            except KeyReadFailed as exc:
                failed = self.state.failed_read()
                if self._read_failed_log.due():
                    log.warning(
                        "[auth] key read failed while serving creds from cache (%d so far): %s",
                        failed,
                        self.redactor.text(str(exc)),
                    )
                return False
        return True

    def _cache_tick(self) -> KeyMap | None:
        """In cache mode: a load attempt when one is due (the keys it loaded when it worked),
        and the expiry check."""
        if time.monotonic() >= self._next_reload:
            self._next_reload = time.monotonic() + self.config.cache_reload_interval_ms / 1000
            try:
                creds, keys = self.backend.load()
            except ResilienceError as exc:  # the database (or its data) still fails
                self.last_db_error = self.redactor.text(str(exc))
                if self._reload_failed_log.due():
                    log.warning(
                        "[auth] PostgreSQL still unavailable for company %s, next attempt in "
                        "%.1f s: %s",
                        self.config.company,
                        self.config.cache_reload_interval_ms / 1000,
                        self.last_db_error,
                    )
            else:
                if creds is None:
                    self.fatal = MISSING_CREDS_LINE.format(
                        company=self.config.company, source="PostgreSQL"
                    )
                    self.stop.set()
                    return None
                self._leave_cache(creds, keys)
                return keys
        self._check_expiry()
        return None

    def _leave_cache(self, creds: Any, keys: KeyMap) -> None:
        self._store_in_cache(creds, "load")  # first: health never shows the old entry's age
        self.creds, self._creds_unsaved = creds, False
        duration = self.state.leave_cache(creds, keys)
        self._expiry_reported = False
        log.info(
            CACHE_LEFT_LINE.format(
                company=self.config.company,
                duration=duration,
                skipped=self.state.skipped_creds_saves,
                reads=self.state.failed_key_reads,
            )
        )
        log.info(CONNECTION_OPEN_LINE.format(keys=len(keys)))
        self.start_readers()

    def _check_expiry(self) -> None:
        if self._expiry_reported or not self.state.expired():
            return
        self.report_expired()

    def report_serving(self, age: float, source: str) -> None:
        """Log the cache-mode line and send the one Sentry warning (with the true age)."""
        ttl = self.config.creds_cache_ttl_s
        company = self.config.company
        log.warning(
            CACHE_SERVING_LINE.format(
                company=company, age=age, ttl=ttl, source=source, reason=self.last_db_error
            )
        )
        self.alert(
            f"creds cache: company {company} runs on cached creds, PostgreSQL is unavailable; "
            f"cache age {age:.1f} s (ttl {ttl:g} s)",
            level="warning",
            event="creds-cache-serving",
            age=age,
        )

    def report_expired(self) -> None:
        """Log why the service cannot run and send a Sentry error, once per expiry."""
        self._expiry_reported = True
        age = self.state.cache_age() or 0.0
        ttl = self.config.creds_cache_ttl_s
        company = self.config.company
        log.error(
            CACHE_EXPIRED_LINE.format(company=company, age=age, ttl=ttl, reason=self.last_db_error)
        )
        self.alert(
            f"creds cache expired: company {company} cannot run, PostgreSQL is unavailable and "
            f"the cached creds are {age:.1f} s old (ttl {ttl:g} s)",
            level="error",
            event="creds-cache-expired",
            age=age,
        )

    def alert(self, message: str, *, level: str, event: str, age: float) -> None:
        if self.sentry is None:
            return
        sent = self.sentry.event(
            message,
            level=level,
            tags={"company": self.config.company, "event": event, "service": SERVER_NAME},
            extra={
                "cache_age_s": round(age, 3),
                "ttl_s": self.config.creds_cache_ttl_s,
                "reason": self.last_db_error,
            },
        )
        if sent is None:
            log.warning("[cache] the Sentry %s could not be sent", level)

    def wait_for_signal(self, signals: set[signal.Signals]) -> str:
        """Block until a stop signal (blocked in every thread) or a fatal traffic error."""

        def stopped() -> str | None:
            info = signal.sigtimedwait(signals, SIGNAL_WAIT)  # the wait between checks
            if info is not None:
                return signal.Signals(info.si_signo).name
            return FATAL if self.stop.is_set() else None

        # No deadline: the service runs until stopped. Nothing raised here is "not yet".
        return wait_until(stopped, math.inf, "a stop signal", interval=0, fatal=(Exception,))

    def shutdown(self) -> None:
        self.stop.set()
        deadline = time.monotonic() + self.config.shutdown_grace_ms / 1000
        if self.writer is not None:
            self.writer.join(self.config.shutdown_grace_ms / 1000)
            if self.writer.is_alive():
                log.warning(
                    "[standin] the in-flight write did not finish within %d ms; exiting anyway",
                    self.config.shutdown_grace_ms,
                )
        self.journal.close()  # waits for a journal append in progress
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.writer is None or not self.writer.is_alive():
            self.backend.close()  # readers waiting for a connection fail at once
        for reader in self.readers:  # one blocked in a query is left behind (a daemon)
            reader.join(max(0.0, deadline - time.monotonic()))
        if self.sentry is not None:
            self.sentry.close()


def _updated_creds(creds: Any) -> Any:
    """The creds after a ``creds.update`` of Baileys: the account sync counter and time move."""
    if not isinstance(creds, dict):
        return creds
    counter = creds.get("accountSyncCounter")
    if isinstance(counter, bool) or not isinstance(counter, int):
        counter = 0
    return {
        **creds,
        "accountSyncCounter": counter + 1,
        "lastAccountSyncTimestamp": int(time.time()),
    }


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    # The pool's own warnings (each failed background connect, threads still stopping when an
    # old pool is closed) would repeat what the throttled lines above say, unthrottled.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def _start(cwd: Path) -> Service | int:
    """Read the settings, load the auth state, start HTTP and traffic; or an exit code."""
    backend: Backend | None = None
    sentry: SentryChannel | None = None
    try:
        config = read_config(cwd)
        redactor = Redactor([config.database_url, config.sentry_dsn])
        registry = CollectorRegistry()
        backend = make_backend(config, registry)
        log.info(backend.mode_line())
        cache = make_cache(config)
        if config.sentry_dsn:
            sentry = SentryChannel(config.sentry_dsn, redactor, environment="standin")
        try:
            creds, keys = backend.load()
        except DatabaseError as exc:
            if cache is None:
                raise
            return _start_on_cache(config, backend, cache, sentry, redactor, exc, registry)
        if creds is None:
            source = "PostgreSQL" if config.mode == "postgres" else str(config.auth_dir)
            log.error(MISSING_CREDS_LINE.format(company=config.company, source=source))
            backend.close()
            if sentry is not None:
                sentry.close()
            return DataError.exit_code
        journal = WriteLog(config.journal)
        state = ServiceState(
            config.mode,
            config.company,
            creds,
            keys,
            cache_ttl_s=config.creds_cache_ttl_s if cache is not None else None,
        )
        state.last_seq = journal.seq
        service = Service(
            config,
            backend,
            state,
            journal,
            cache=cache,
            sentry=sentry,
            redactor=redactor,
            registry=registry,
        )
        service._store_in_cache(creds, "load")
        log.info(CONNECTION_OPEN_LINE.format(keys=len(keys)))
        service.start_http()
        service.start_traffic(Traffic(config.write_seed, journal.seq, keys, next_pre_key_id(creds)))
        service.start_readers()
        return service
    except (ResilienceError, OSError) as exc:
        if isinstance(exc, ResilienceError):
            log.error("[standin] cannot start: %s", exc)
        else:
            log.error("[standin] cannot start: %s %s", exc.strerror or exc, exc.filename or "")
        if backend is not None:
            backend.close()
        if sentry is not None:
            sentry.close()
        return exc.exit_code if isinstance(exc, ResilienceError) else 1


def _start_on_cache(
    config: StandinConfig,
    backend: Backend,
    cache: CredsCache,
    sentry: SentryChannel | None,
    redactor: Redactor,
    error: DatabaseError,
    registry: CollectorRegistry | None = None,
) -> Service:
    """Loading creds failed with a database error: run on the cached creds when the entry is
    fresh, fail loudly (503, Sentry error) when it is stale; without an entry, re-raise."""
    entry = cache.entry(config.company)
    if entry is None:
        if config.creds_cache_dir is None:
            why = "CREDS_CACHE_DIR is not set, so no cached creds survive a restart"
        else:
            why = f"no usable copy in {config.creds_cache_dir}"
        log.error(NO_CACHE_LINE.format(company=config.company, why=why))
        raise error
    journal = WriteLog(config.journal)
    state = ServiceState(
        config.mode,
        config.company,
        entry.creds,
        {},
        keys_known=False,
        cache_ttl_s=config.creds_cache_ttl_s,
    )
    state.last_seq = journal.seq
    state.serve_from_cache(entry)
    service = Service(
        config,
        backend,
        state,
        journal,
        cache=cache,
        sentry=sentry,
        redactor=redactor,
        registry=registry,
    )
    service.last_db_error = redactor.text(str(error))
    age = cache.age(entry)
    service.start_http()  # health answers while the alert is sent
    if age <= config.creds_cache_ttl_s:
        service.report_serving(age, f"{entry.source} copy from the last good {entry.origin}")
    else:
        service.report_expired()
    service.start_traffic(Traffic(config.write_seed, journal.seq, {}, next_pre_key_id(entry.creds)))
    return service


def run(cwd: Path) -> int:
    """The whole life of the service; returns the exit code."""
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Block the stop signals before any thread starts: every thread inherits the mask and the
    # main thread takes them with sigtimedwait, so no handler ever runs inside a write.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    service = _start(cwd)
    if isinstance(service, int):
        return service
    reason = service.wait_for_signal(stop_signals)
    log.info("[standin] %s: stopping", reason)
    service.shutdown()
    final = service.state.snapshot()
    if final["digest"] is None:  # still on cached creds: the keys were never loaded
        log.info(
            STOPPED_ON_CACHE_LINE.format(
                ok=final["writes_ok"],
                failed=final["writes_failed"],
                skipped=final["cache"]["skipped_creds_saves"],
                reads=final["cache"]["failed_key_reads"],
            )
        )
    else:
        log.info(
            STOPPED_LINE.format(
                keys=final["key_count"],
                digest=final["digest"],
                ok=final["writes_ok"],
                failed=final["writes_failed"],
            )
        )
    if reason == FATAL:
        log.error("[standin] %s", service.fatal)
        return 1
    return 0


def main() -> int:
    _setup_logging()
    return run(Path.cwd())


if __name__ == "__main__":
    sys.exit(main())
