"""A stand-in for the Baileys WhatsApp service, run by PM2 in drills (``python -m`` this module).

Seen from outside it behaves like the real service (brief §4):

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
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
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
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from dotenv import dotenv_values
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from werkzeug.exceptions import NotImplemented as MethodNotImplemented
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from resilience.authstate.filestore import FileAuthStore
from resilience.authstate.fingerprint import set_digest
from resilience.authstate.pgstore import Conn, PgAuthStore, connect
from resilience.authstate.view import view_of
from resilience.config import validate_company_id
from resilience.drill.standin.traffic import KeyWrite, Traffic
from resilience.drill.standin.writelog import WRITELOG_FILE, WriteLog
from resilience.errors import ConfigError, DataError, ResilienceError, StackError
from resilience.infra.waiting import wait_until
from resilience.service.modes import Mode, mode_of

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


ENV_FILE = ".env"
DEFAULT_AUTH_DIR = "auth_info"
DEFAULT_INTERVAL_MS = 200
DEFAULT_SEED = "standin"
DEFAULT_GRACE_MS = 10000
DEFAULT_CONNECT_TIMEOUT_MS = 10000
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

    def __repr__(self) -> str:  # never show the DSN (it holds the password)
        return (
            f"StandinConfig(mode={self.mode!r}, company={self.company!r}, "
            f"auth_dir={str(self.auth_dir)!r}, port={self.port!r})"
        )

    @property
    def traffic(self) -> bool:
        return self.writes_enabled and self.write_interval_ms > 0


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
    )


# --- backends ------------------------------------------------------------------------------------

KeyMap = dict[tuple[str, str], Any]


class WriteFailed(Exception):
    """A write was not acknowledged; the first ``done`` writes of the batch were."""

    def __init__(self, done: int, reason: str) -> None:
        super().__init__(reason)
        self.done = done
        self.reason = reason


class Backend(Protocol):
    mode: Mode

    def mode_line(self) -> str: ...

    def load(self) -> tuple[Any | None, KeyMap]: ...

    def write(self, writes: Sequence[KeyWrite]) -> None: ...

    def close(self) -> None: ...


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresBackend:
    """Auth state in PostgreSQL, one connection, re-opened after a failure."""

    mode: Mode = "postgres"

    def __init__(self, dsn: str, company: str, *, connect_timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.company = company
        self.connect_timeout = connect_timeout
        self.conn: Conn | None = None

    def __repr__(self) -> str:
        return f"PostgresBackend(company={self.company!r})"

    def mode_line(self) -> str:
        return POSTGRES_MODE_LINE.format(company=self.company)

    def _store(self) -> PgAuthStore:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.dsn, timeout=self.connect_timeout, autocommit=True)
        return PgAuthStore(self.conn)

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = None

    def load(self) -> tuple[Any | None, KeyMap]:
        store = self._store()
        creds = store.load_creds(self.company)
        if creds is None:
            return None, {}
        # what Baileys sees: one key per file name, legacy twins resolved (authstate.view)
        view = view_of(self.company, creds, store.records(self.company))
        return creds, {(t, i): v for t, i, v in view.key_values()}

    def write(self, writes: Sequence[KeyWrite]) -> None:
        data: dict[str, dict[str, Any | None]] = {}
        for write in writes:
            data.setdefault(write.key_type, {})[write.key_id] = write.value
        try:
            self._store().set_keys(self.company, data)
        except (ResilienceError, psycopg.Error, OSError) as exc:
            self._drop()
            raise WriteFailed(0, _reason(exc)) from None

    def close(self) -> None:
        self._drop()


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

    def close(self) -> None:
        pass


def make_backend(config: StandinConfig) -> Backend:
    if config.mode == "file":
        return FileBackend(config.auth_dir, config.company)
    assert config.database_url is not None  # read_config guarantees it
    return PostgresBackend(
        config.database_url, config.company, connect_timeout=config.connect_timeout_ms / 1000
    )


# --- in-memory state -----------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds")


class ServiceState:
    """Creds and keys as persisted (a write is applied only after it was acknowledged), plus
    counters. The set digest is computed lazily and cached per version."""

    def __init__(self, mode: Mode, company: str, creds: Any, keys: KeyMap) -> None:
        self.lock = threading.Lock()
        self.mode: Mode = mode
        self.company = company
        self.creds = creds
        self.keys: KeyMap = dict(keys)
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
        self.loaded_digest = set_digest(creds, ((t, i, v) for (t, i), v in self.keys.items()))

    def apply(self, writes: Sequence[KeyWrite], at: datetime, last_seq: int) -> None:
        with self.lock:
            for write in writes:
                if write.deleted:
                    self.keys.pop(write.ref, None)
                else:
                    self.keys[write.ref] = write.value
            self.writes_ok += len(writes)
            self.last_write_at = at
            self.last_seq = last_seq
            self.version += 1

    def failed(self) -> None:
        with self.lock:
            self.writes_failed += 1

    def snapshot(self) -> dict[str, Any]:
        """Everything /health reports, consistent with one moment."""
        with self._digest_lock:
            with self.lock:
                report: dict[str, Any] = {
                    "status": "ok",
                    "mode": self.mode,
                    "company": self.company,
                    "key_count": len(self.keys),
                    "last_write_at": _iso(self.last_write_at),
                    "writes_ok": self.writes_ok,
                    "writes_failed": self.writes_failed,
                    "last_seq": self.last_seq,
                    "started_at": _iso(self.started_at),
                    "pid": os.getpid(),
                    "loaded_key_count": self.loaded_key_count,
                    "loaded_digest": self.loaded_digest,
                }
                version, creds = self.version, self.creds
                stale = self._digest is None or self._digest[0] != version
                items = list(self.keys.items()) if stale else []
            if stale:
                digest = set_digest(creds, ((t, i, v) for (t, i), v in items))
                self._digest = (version, digest)
            assert self._digest is not None
            report["digest"] = self._digest[1]
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
        yield _family(
            GaugeMetricFamily,
            "standin_keys",
            "Keys currently held (creds not counted).",
            company,
            report["key_count"],
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


def metrics_registry(report: Callable[[], Mapping[str, Any]]) -> CollectorRegistry:
    """A private registry (not prometheus-client's global one) holding only the stand-in's
    metrics, computed from ``report()`` on each scrape."""
    registry = CollectorRegistry()
    registry.register(StandinCollector(report))
    return registry


def make_app(state: ServiceState) -> WSGIApplication:
    """The WSGI app: ``GET /health`` (JSON), ``GET /metrics``, 404 elsewhere, 501 for other
    methods (as :mod:`http.server` answered before)."""
    registry = metrics_registry(state.snapshot)

    @Request.application
    def app(request: Request) -> Response:
        if request.method != "GET":
            raise MethodNotImplemented(f"Unsupported method ({request.method!r}).")
        if request.path == "/health":
            return Response(json.dumps(state.snapshot()), content_type="application/json")
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


class Service:
    """One run of the stand-in: loaded state, traffic thread, HTTP server."""

    def __init__(
        self, config: StandinConfig, backend: Backend, state: ServiceState, journal: WriteLog
    ) -> None:
        self.config = config
        self.backend = backend
        self.state = state
        self.journal = journal
        self.stop = threading.Event()
        self.fatal: str | None = None
        self.http: BaseWSGIServer | None = None
        self.writer: threading.Thread | None = None
        self._fail_streak = 0
        self._last_warning = 0.0

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
                make_app(self.state),
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
        if not self.config.traffic:
            log.info("[traffic] disabled")
            return
        self.writer = threading.Thread(
            target=self._traffic_loop, args=(traffic,), name="traffic", daemon=True
        )
        self.writer.start()
        log.info(
            "[traffic] writing keys every %d ms (seed %r)",
            self.config.write_interval_ms,
            self.config.write_seed,
        )

    def _traffic_loop(self, traffic: Traffic) -> None:
        try:
            self._write_until_stopped(traffic)
        except Exception as exc:  # anything unexpected ends the service, loudly
            self.fatal = f"traffic stopped: {type(exc).__name__}: {_reason(exc)}"
            self.stop.set()

    def _write_until_stopped(self, traffic: Traffic) -> None:
        interval = self.config.write_interval_ms / 1000
        pending: list[KeyWrite] | None = None
        next_at = time.monotonic()
        while not self.stop.is_set():
            if pending is None:
                pending = traffic.next_batch()
            acknowledged: Sequence[KeyWrite]
            try:
                self.backend.write(pending)
            except WriteFailed as failure:
                acknowledged, pending = pending[: failure.done], pending[failure.done :]
                self._failed(failure.reason)
            else:
                acknowledged, pending = pending, None
                self._succeeded()
            if acknowledged:
                at = _now()
                try:
                    entries = self.journal.append(
                        acknowledged, mode=self.backend.mode, company=self.config.company, at=at
                    )
                except OSError as exc:
                    raise DataError(
                        f"cannot journal acknowledged writes to {self.journal.path}: {exc.strerror}"
                    ) from None
                self.state.apply(acknowledged, at, entries[-1].seq)
                traffic.applied(acknowledged)
            next_at = max(next_at + interval, time.monotonic())
            self.stop.wait(next_at - time.monotonic())

    def _failed(self, reason: str) -> None:
        self.state.failed()
        self._fail_streak += 1
        now = time.monotonic()
        if self._fail_streak == 1 or now - self._last_warning >= 5.0:
            self._last_warning = now
            log.warning(
                "[auth] key write failed (%d in a row), retrying on the next tick: %s",
                self._fail_streak,
                reason,
            )

    def _succeeded(self) -> None:
        if self._fail_streak:
            log.info("[auth] key writes resumed after %d failed attempt(s)", self._fail_streak)
            self._fail_streak = 0

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
            self.backend.close()


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _start(cwd: Path) -> Service | int:
    """Read the settings, load the auth state, start HTTP and traffic; or an exit code."""
    backend: Backend | None = None
    try:
        config = read_config(cwd)
        backend = make_backend(config)
        log.info(backend.mode_line())
        creds, keys = backend.load()
        if creds is None:
            source = "PostgreSQL" if config.mode == "postgres" else str(config.auth_dir)
            log.error(MISSING_CREDS_LINE.format(company=config.company, source=source))
            backend.close()
            return DataError.exit_code
        journal = WriteLog(config.journal)
        state = ServiceState(config.mode, config.company, creds, keys)
        state.last_seq = journal.seq
        log.info(CONNECTION_OPEN_LINE.format(keys=len(keys)))
        service = Service(config, backend, state, journal)
        service.start_http()
        service.start_traffic(Traffic(config.write_seed, journal.seq, keys))
        return service
    except (ResilienceError, OSError) as exc:
        if isinstance(exc, ResilienceError):
            log.error("[standin] cannot start: %s", exc)
        else:
            log.error("[standin] cannot start: %s %s", exc.strerror or exc, exc.filename or "")
        if backend is not None:
            backend.close()
        return exc.exit_code if isinstance(exc, ResilienceError) else 1


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
