"""Only an outage is an outage: a DSN whose host and port answer, but not as PostgreSQL (an HTTP
server on the port), is configuration (exit 2), told in moments rather than after the connect
timeout, by the library's connect, the switch's link and `diagnose` alike; so are a port out
of range and a host that does not resolve, while a refused connection stays an outage.

No stack: the peers are local servers of this module (the stack's PostgreSQL is probed in
tests/test_pgstore.py)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from resilience.authstate import pgconn
from resilience.authstate.pgconn import DbLink, connect
from resilience.diagnose.connectivity import check_connectivity
from resilience.errors import ConfigError, DatabaseUnreachable
from resilience.infra.pgpeer import LINE_END, SSL_REQUEST, PeerVerdict, probe_peer, tcp_target
from resilience.infra.processes import free_port

PASSWORD = "s3cret-Pw-not-shown"
#: far longer than any test may take: a verdict that waited for it would fail by the test's
#: own timeout (pytest-timeout) instead of passing late
LONG_CONNECT_TIMEOUT = 600.0

Behaviour = Callable[[socket.socket], None]


@contextmanager
def peer(behaviour: Behaviour) -> Iterator[int]:
    """A TCP server on 127.0.0.1 doing ``behaviour`` with each connection; stopped at the end
    (its listening socket closed, every connection closed)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the server is stopped
                return
            accepted.append(conn)
            conn.settimeout(5)
            threading.Thread(target=_guarded, args=(behaviour, conn), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()


def _guarded(behaviour: Behaviour, conn: socket.socket) -> None:
    with suppress(OSError):
        behaviour(conn)


def answers(reply: bytes) -> Behaviour:
    """Reads the SSLRequest, answers ``reply``, then waits for the client to go."""

    def act(conn: socket.socket) -> None:
        if conn.recv(8) == SSL_REQUEST:
            conn.sendall(reply)
        conn.recv(64)

    return act


def answers_late(reply: bytes) -> Behaviour:
    """Answers ``reply`` only once the probe, tired of waiting, sent its line end too (a slow
    PostgreSQL: its one byte and, having read the line end, its error message)."""

    def act(conn: socket.socket) -> None:
        received = b""
        while not received.endswith(LINE_END):
            chunk = conn.recv(64)
            if not chunk:
                return
            received += chunk
        assert received == SSL_REQUEST + LINE_END
        conn.sendall(reply)
        conn.recv(64)

    return act


def banner(conn: socket.socket) -> None:  # speaks first, as an SSH server does
    conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
    conn.recv(64)


def echo(conn: socket.socket) -> None:  # answers at once, whatever it is sent
    conn.sendall(conn.recv(64))
    conn.recv(64)


def closes(conn: socket.socket) -> None:  # a proxy whose server is gone accepts, then closes
    conn.close()


def silent(conn: socket.socket) -> None:  # reads, never answers (until the client goes)
    while conn.recv(64):
        pass


def dsn_at(port: int, host: str = "127.0.0.1") -> str:
    return f"postgresql://service:{PASSWORD}@{host}:{port}/auth"


@pytest.fixture
def werkzeug_port() -> Iterator[int]:
    """A Werkzeug development server (what the drill fakes run on), stopped afterwards."""

    @Request.application
    def app(request: Request) -> Response:
        return Response("not PostgreSQL")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield int(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- the probe ----------------------------------------------------------------------------------
def test_http_servers_are_not_postgres(http_port: int, werkzeug_port: int) -> None:
    for port in (http_port, werkzeug_port):
        verdict = probe_peer("127.0.0.1", port)
        assert verdict.kind == "other", port
        assert verdict.answer  # what it answered is shown to the operator
        assert "not as PostgreSQL" in verdict.describe()


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        (answers(b"N"), "postgres"),  # no TLS
        (answers(b"S"), "postgres"),  # TLS offered
        (answers(b"E\x00\x00\x00\x10SFATAL\x00"), "postgres"),  # an error, from an old server
        (answers_late(b"NE\x00\x00\x00\x10SFATAL\x00"), "postgres"),
        (answers_late(b"SSH-2.0-OpenSSH_9.2p1\r\n"), "other"),
        (banner, "other"),  # "S..." but more than the one byte PostgreSQL answers
        (echo, "other"),
        (closes, "unknown"),
    ],
    ids=["N", "S", "E", "late-N-then-error", "late-banner", "ssh-banner", "echo", "closes"],
)
def test_the_probe_tells_postgres_from_others_and_says_when_it_cannot(
    behaviour: Behaviour, kind: str
) -> None:
    with peer(behaviour) as port:
        assert probe_peer("127.0.0.1", port, bound=10.0).kind == kind


def test_a_peer_that_never_answers_is_cannot_tell() -> None:
    with peer(silent) as port:
        assert probe_peer("127.0.0.1", port, bound=0.5) == PeerVerdict("unknown")


def test_nothing_listening_is_cannot_tell_for_the_probe() -> None:
    assert probe_peer("127.0.0.1", free_port(), bound=1.0) == PeerVerdict("unknown")


@pytest.mark.parametrize(
    ("dsn", "target"),
    [
        ("postgresql://u:p@db.example:6432/auth", ("db.example", 6432)),
        ("postgresql://u:p@db.example/auth", ("db.example", 5432)),
        ("host=10.0.0.5 port=5433 user=u", ("10.0.0.5", 5433)),
        ("host=db.example hostaddr=10.0.0.6 user=u", ("10.0.0.6", 5432)),
        ("host=/var/run/postgresql user=u", None),  # a Unix socket: no probe
        ("postgresql://u:p@%2Fvar%2Frun%2Fpostgresql/auth", None),
        ("postgresql://u:p@a:5432,b:5432/auth", None),  # several hosts: libpq tries each
        ("postgresql://u:p@db.example:70000/auth", None),  # libpq refuses it itself
    ],
)
def test_the_probe_applies_to_one_tcp_host(
    dsn: str, target: tuple[str, int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGPORT", raising=False)
    assert tcp_target(dsn) == target


# --- the library's connect and the switch's link -------------------------------------------------
@pytest.mark.timeout(60)
def test_an_http_port_is_configuration_told_before_the_connect_timeout(http_port: int) -> None:
    dsn = dsn_at(http_port)
    with pytest.raises(ConfigError) as info:
        connect(dsn, timeout=LONG_CONNECT_TIMEOUT)
    message = str(info.value)
    assert f"check its host and port): 127.0.0.1:{http_port} answers, but not as PostgreSQL" in (
        message
    )
    assert not isinstance(info.value, DatabaseUnreachable)
    assert PASSWORD not in message and "\n" not in message
    with DbLink(dsn, timeout=LONG_CONNECT_TIMEOUT) as link, pytest.raises(ConfigError) as info:
        _ = link.conn
    assert "answers, but not as PostgreSQL" in str(info.value)
    assert PASSWORD not in str(info.value)
    assert link.connects == 0


def test_a_peer_that_fails_libpq_at_once_is_configuration_too() -> None:
    """libpq's own "invalid response to SSL negotiation" (a peer that echoes): the DSN."""
    with peer(echo) as port:
        with pytest.raises(ConfigError, match="check its host and port"):
            connect(dsn_at(port))
        with DbLink(dsn_at(port)) as link, pytest.raises(ConfigError):
            _ = link.conn


def test_a_peer_that_closes_at_once_stays_an_outage() -> None:
    """What a proxy in front of a stopped PostgreSQL does: accept, then close. The probe
    cannot tell, so the connect's own word (an outage) stands."""
    with peer(closes) as port:
        with pytest.raises(DatabaseUnreachable):
            connect(dsn_at(port))
        with DbLink(dsn_at(port)) as link, pytest.raises(DatabaseUnreachable):
            _ = link.conn


@pytest.mark.parametrize(
    ("dsn", "error", "phrase"),
    [
        (dsn_at(70000), ConfigError, "check its port"),
        (f"host=127.0.0.1 port=70000 user=u password={PASSWORD}", ConfigError, "check its port"),
        (dsn_at(5432, host="no-such-host.invalid"), ConfigError, "check its host"),
        (dsn_at(free_port()), DatabaseUnreachable, "Connection refused"),
    ],
    ids=["url-port-70000", "keyword-port-70000", "unresolvable", "refused"],
)
def test_each_dsn_problem_is_read_alike_by_connect_link_and_diagnose(
    dsn: str, error: type[Exception], phrase: str
) -> None:
    with pytest.raises(error, match=phrase) as info:
        connect(dsn)
    assert type(info.value) is error and PASSWORD not in str(info.value)
    with DbLink(dsn) as link, pytest.raises(error, match=phrase):
        _ = link.conn
    found = check_connectivity(dsn, timeout=2.0)
    assert found.verdict == ("outage" if error is DatabaseUnreachable else "config")
    assert found.conn is None
    assert not any(PASSWORD in p.detail for p in found.probes)


def test_diagnose_reads_an_http_port_as_configuration(http_port: int) -> None:
    found = check_connectivity(dsn_at(http_port), timeout=LONG_CONNECT_TIMEOUT)
    assert found.verdict == "config"
    assert [(p.name, p.ok) for p in found.probes] == [
        ("dns", True),
        ("tcp", True),
        ("postgres", False),
    ]
    assert "not as PostgreSQL" in found.probes[-1].detail
    assert PASSWORD not in found.probes[-1].detail


def test_diagnose_names_a_port_out_of_range_without_dialing_it() -> None:
    found = check_connectivity(dsn_at(70000))
    assert found.verdict == "config"
    assert [(p.name, p.ok) for p in found.probes] == [("dsn", False)]
    assert "port 70000 is out of range (1-65535)" in found.probes[0].detail


def test_a_unix_socket_dsn_is_never_probed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> PeerVerdict:
        raise AssertionError("a Unix socket was probed")

    monkeypatch.setattr(pgconn, "probe_peer", never)
    with pytest.raises(pgconn.DatabaseError):  # nothing listens on that socket
        connect(f"host={tmp_path} port=5432 user=u password={PASSWORD}")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:ab%80cd@127.0.0.1:1/db",  # a %-escape that is not UTF-8
        "host=127.0.0.1 port=1 user=u password='ab\udc80cd' dbname=db",  # a lone surrogate
    ],
)
def test_a_dsn_that_is_not_utf8_is_configuration_and_quotes_nothing(dsn: str) -> None:
    from resilience.authstate.pgconn import DbLink, connect
    from resilience.errors import ConfigError

    for opening in (lambda: connect(dsn, timeout=2), lambda: DbLink(dsn, timeout=2).conn):
        with pytest.raises(ConfigError) as info:
            opening()
        assert "UTF-8" in str(info.value)
        assert "ab" not in str(info.value) and "80" not in str(info.value)
