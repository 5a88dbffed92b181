"""Connections to PostgreSQL and what their failures mean.

`connect` and `DbLink` (one connection kept for a whole switch, its client-server round trips
counted from libpq's protocol trace) tell an outage (refused, reset, timed out, shutting down,
TLS: :class:`DatabaseUnreachable`) from a wrong DSN (bad password, unknown role or database,
unresolvable host, bad syntax, a peer that is not PostgreSQL at all: :class:`ConfigError`), in
seconds, never showing a secret. `database_errors` and `read_transaction` wrap statements.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from resilience.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnreachable,
    ResilienceError,
    first_line,
)
from resilience.infra.pgpeer import PeerVerdict, probe_peer, tcp_target
from resilience.infra.redact import Redactor, dsn_problems, redact_dsn

Conn = psycopg.Connection[TupleRow]


#: What a failed connection says when the server cannot be reached (an outage), as libpq and
#: psycopg word it; SQLSTATE classes 08 and 57P0x where the error carries one.
_OUTAGE_RE = re.compile(
    r"connection refused|timeout expired|timed out|connection reset|server closed the connection"
    r"|could not receive data|could not send data|no route to host|network is unreachable"
    r"|the database system is (?:shutting down|starting up|in recovery mode|not yet accepting)"
    r"|terminating connection|SSL (?:SYSCALL )?error|SSL connection has been closed|EOF detected",
    re.IGNORECASE,
)
#: What it says when the DSN is wrong: the server answered, or the DSN named nothing reachable.
_CONFIG_RE = (
    (re.compile(r"password authentication failed|no password supplied", re.I), "password"),
    (re.compile(r'role "[^"]*" does not exist', re.I), "user"),
    (re.compile(r'database "[^"]*" does not exist', re.I), "database name"),
    (re.compile(r"failed to resolve host|could not translate host name", re.I), "host"),
    (re.compile(r"invalid integer value .* port|invalid port", re.I), "port"),
    (re.compile(r"pg_hba\.conf", re.I), "user, database or client address (pg_hba.conf)"),
    (re.compile(r"invalid connection option|missing \"=\"|invalid URI", re.I), "syntax"),
    # libpq's own words for a peer that answered, but not in PostgreSQL's protocol
    (
        re.compile(
            r"invalid response to (?:SSL|GSSAPI) negotiation|expected authentication request",
            re.I,
        ),
        "host and port (another service answers there)",
    ),
)


def classify_connect_error(exc: BaseException) -> tuple[str, str | None]:
    """("outage", None), ("config", the part of the DSN to check) or ("unknown", None)."""
    state = getattr(exc, "sqlstate", None) or ""
    text = str(exc)
    if state.startswith("08") or state.startswith("57P0") or _OUTAGE_RE.search(text):
        return "outage", None
    if isinstance(exc, psycopg.ProgrammingError):
        return "config", "syntax"
    for pattern, part in _CONFIG_RE:
        if pattern.search(text):
            return "config", part
    return "unknown", None


def connect(dsn: str, *, timeout: float = 5.0, autocommit: bool = False) -> Conn:
    """Open a connection. An outage raises :class:`DatabaseUnreachable`; a wrong DSN (bad
    password, unknown role or database, unresolvable host, bad syntax, a peer that is not
    PostgreSQL) raises :class:`ConfigError` naming the part to check; anything else
    :class:`DatabaseError`. Every message passes the redactor with this DSN's secrets
    registered."""
    redactor = Redactor([dsn])
    problems = dsn_problems(dsn)
    if problems:
        raise ConfigError("the DSN is wrong: " + "; ".join(problems))

    def attempt(cancel: threading.Event) -> Conn:
        return psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=autocommit)

    try:
        return _checked_connect(dsn, attempt, wait_cancelled=False)
    except (psycopg.Error, _NotPostgres) as exc:
        raise _connect_error(exc, dsn, redactor) from None
    except UnicodeError:  # its message quotes the bytes: say nothing of them
        raise ConfigError(UNDECODABLE_DSN) from None


UNDECODABLE_DSN = "the DSN is wrong: it holds text that is not UTF-8 (in the password?)"


#: A connect not done after this long has the peer probed beside it (a healthy one is done
#: in milliseconds: it never pays for the probe, not even with a connection of its own).
PEER_GRACE = 0.3
#: How long the probe may take to tell. It runs beside the connect and never delays one that
#: succeeds; a connect that failed before the probe told (refused, say) waits for it, and a
#: peer that refuses or closes at once tells at once.
PEER_BOUND = 5.0
#: How long a connect that failed waits for the probe's word: enough for a peer that answers
#: (it tells in milliseconds), short for one that never does (an outage stays an outage).
PEER_AFTER_FAILURE = 1.0


class _NotPostgres(Exception):
    """The probe's verdict, raised by :func:`_checked_connect` (turned into ConfigError)."""

    def __init__(self, where: tuple[str, int], verdict: PeerVerdict) -> None:
        super().__init__(verdict.describe())
        self.where = where
        self.verdict = verdict


def _checked_connect(
    dsn: str, attempt: Callable[[threading.Event], Conn], *, wait_cancelled: bool
) -> Conn:
    """``attempt(cancel)`` (libpq's connect) in a thread of its own, with the peer of a TCP DSN
    probed beside it (:mod:`resilience.infra.pgpeer`) once the attempt has run for
    ``PEER_GRACE``, or has failed sooner with anything but a wrong DSN. When the peer is not
    PostgreSQL, :class:`_NotPostgres` is raised at once, without waiting for the connect
    timeout, and the attempt is abandoned: ``cancel`` is set and a connection it still opens
    is closed (``wait_cancelled``: the attempt ends soon once cancelled, so wait for it)."""
    where = tcp_target(dsn)
    if where is None:  # a Unix socket: nothing else can listen there
        return attempt(threading.Event())
    cancel = threading.Event()
    changed = threading.Condition()
    outcome: list[Conn | BaseException] = []
    verdict: list[PeerVerdict] = []

    def connecting() -> None:
        result: Conn | BaseException
        try:
            result = attempt(cancel)
        except BaseException as exc:  # handed over to the caller's thread
            result = exc
        with changed:
            if cancel.is_set():
                if not isinstance(result, BaseException):
                    result.close()
                return
            outcome.append(result)
            changed.notify_all()

    def probing() -> None:
        found = probe_peer(where[0], where[1], PEER_BOUND)
        with changed:
            verdict.append(found)
            changed.notify_all()

    worker = threading.Thread(target=connecting, name="pg-connect", daemon=True)
    worker.start()
    probe: threading.Thread | None = None
    failed_at: float | None = None
    with changed:
        changed.wait_for(lambda: bool(outcome), timeout=PEER_GRACE)
        while True:
            result = outcome[0] if outcome else None
            if result is not None and not isinstance(result, BaseException):
                return result  # connected: the connect's word is final
            if result is not None and (
                not isinstance(result, psycopg.Error)
                or classify_connect_error(result)[0] == "config"
            ):
                raise result  # the DSN is wrong as it is, or not a connect's failure at all
            if verdict and verdict[0].kind == "other":
                if result is None:
                    cancel.set()  # under the lock: the attempt, when it ends, sees it
                break
            if verdict and result is not None:
                raise result  # the peer is PostgreSQL, or it cannot tell: the failure stands
            if probe is None:
                probe = threading.Thread(target=probing, name="pg-peer-probe", daemon=True)
                probe.start()
            if result is None:
                changed.wait()
                continue
            # the connect failed: a peer that answers (an HTTP server) tells within moments;
            # one that never answers (a black hole) must not make an outage longer than it is
            failed_at = failed_at or time.monotonic()
            left = PEER_AFTER_FAILURE - (time.monotonic() - failed_at)
            if left <= 0:
                raise result
            changed.wait(timeout=left)
    if wait_cancelled and cancel.is_set():
        worker.join()
    raise _NotPostgres(where, verdict[0])


def _connect_error(
    exc: psycopg.Error | _NotPostgres, dsn: str, redactor: Redactor
) -> ResilienceError:
    where = redactor.text(redact_dsn(dsn))
    if isinstance(exc, _NotPostgres):
        host, port = exc.where
        return ConfigError(
            redactor.text(
                f"the DSN is wrong (check its host and port): {host}:{port} "
                f"{exc.verdict.describe()} (at {where})"
            )
        )
    kind, part = classify_connect_error(exc)
    reason = redactor.text(first_line(exc))
    if kind == "outage":
        return DatabaseUnreachable(f"PostgreSQL unreachable at {where}: {reason}")
    if kind == "config":
        return ConfigError(f"the DSN is wrong (check its {part}): {reason} (at {where})")
    return DatabaseError(f"cannot connect to PostgreSQL at {where}: {reason}")


#: How often a traced connect looks whether it was abandoned (its socket wakes it sooner).
_CANCEL_CHECK = 0.1


def _traced_connect(
    dsn: str, timeout: float, trace_fd: int, cancel: threading.Event | None = None
) -> Conn:
    """Open a connection with libpq's protocol trace written to ``trace_fd`` from the very
    first message, so that connecting and authenticating are counted too (psycopg's
    ``connect`` opens the connection before a trace could be set). Once ``cancel`` is set the
    attempt gives up (within ``_CANCEL_CHECK``)."""
    pgconn = pq.PGconn.connect_start(make_conninfo(dsn).encode())
    pgconn.trace(trace_fd)
    pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
    deadline = time.monotonic() + timeout
    try:
        while (status := pgconn.connect_poll()) != pq.PollingStatus.OK:
            if status == pq.PollingStatus.FAILED:
                raise psycopg.OperationalError(pgconn.get_error_message())
            reading = status == pq.PollingStatus.READING
            while True:  # libpq is polled again only once its socket is ready
                left = deadline - time.monotonic()
                if left <= 0:
                    raise psycopg.OperationalError("timeout expired")
                if cancel is not None:
                    if cancel.is_set():
                        raise psycopg.OperationalError("abandoned")
                    left = min(left, _CANCEL_CHECK)
                ready = select.select(
                    [pgconn.socket] if reading else [],
                    [] if reading else [pgconn.socket],
                    [],
                    left,
                )
                if any(ready):
                    break
    except BaseException:
        pgconn.untrace()  # flushes what libpq buffered, so failed attempts count too
        pgconn.finish()
        raise
    conn = psycopg.Connection(pgconn)
    conn.autocommit = True
    return conn


class DbLink:
    """One autocommit connection kept for a whole run (a switch's preflight and export share
    it), opened on first use and opened again if the server dropped it, with every
    client-server round trip counted: connecting and authenticating, then each statement.

    The count comes from libpq's protocol trace (each turn from the client's messages to the
    server's is one wait for the server), written to an unlinked temporary file that is read
    and closed with the link. Hand-written: no library counts round trips."""

    def __init__(self, dsn: str, *, timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._conn: Conn | None = None
        self._trace = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._trips = 0  # of connections already closed
        self.connects = 0

    @property
    def conn(self) -> Conn:
        """The open connection (opened, or opened again, here). Raises like :func:`connect`."""
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        self._finish()
        self._trace.seek(0)
        self._trace.truncate()
        redactor = Redactor([self.dsn])
        problems = dsn_problems(self.dsn)
        if problems:
            raise ConfigError("the DSN is wrong: " + "; ".join(problems))
        trace = self._trace.fileno()
        try:
            self._conn = _checked_connect(
                self.dsn,
                lambda cancel: _traced_connect(self.dsn, self.timeout, trace, cancel),
                wait_cancelled=True,
            )
        except (psycopg.Error, _NotPostgres) as exc:
            self._trips += self._count()
            raise _connect_error(exc, self.dsn, redactor) from None
        except UnicodeError:  # its message quotes the bytes: say nothing of them
            raise ConfigError(UNDECODABLE_DSN) from None
        self.connects += 1
        return self._conn

    def _count(self) -> int:
        self._trace.seek(0)
        trips, last = 0, ""
        for line in self._trace:
            side = line[:1].decode()
            if side == "B" and last == "F":
                trips += 1
            if side in ("B", "F"):
                last = side
        return trips

    def _finish(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            conn.pgconn.untrace()  # flushes what libpq buffered
        self._trips += self._count()
        conn.close()

    @property
    def round_trips(self) -> int:
        """Round trips so far (the open connection's are read from its trace)."""
        if self._conn is None:
            return self._trips
        with contextlib.suppress(Exception):
            self._conn.pgconn.untrace()
        live = self._count()
        self._trace.seek(0, os.SEEK_END)
        self._conn.pgconn.trace(self._trace.fileno())
        self._conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        return self._trips + live

    def close(self) -> None:
        """Close the connection and the trace; the count stays readable."""
        self._finish()
        self._trace.close()

    def __enter__(self) -> DbLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def database_errors(what: str) -> Iterator[None]:
    """Turn psycopg errors inside the block into DatabaseError naming `what`."""
    try:
        yield
    except psycopg.Error as exc:
        raise DatabaseError(f"{what} failed: {first_line(exc)}") from None


@contextmanager
def read_transaction(conn: Conn) -> Iterator[None]:
    """A consistent read: a REPEATABLE READ, READ ONLY transaction when the connection is idle
    (committed at the end, so the connection is idle again), a savepoint inside the caller's
    transaction otherwise."""
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with database_errors("reading the auth state"), conn.transaction():
        if idle:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield
