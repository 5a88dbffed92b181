"""Fixtures for tests of the auth-state stores: a connection, a store, a fresh company;
endpoints that fail as S3 regions fail (one that hangs, one that refuses); a local HTTP server,
for a DSN that points at a service which is not PostgreSQL."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate import pgraw
from resilience.authstate.pgconn import Conn, connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.drill.stack import Stack


@pytest.fixture
def conn(stack: Stack) -> Iterator[Conn]:
    """An autocommit connection as the service role, through the proxy."""
    with connect(stack.endpoints.service_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def admin(stack: Stack) -> Iterator[Conn]:
    """An autocommit connection as the superuser, direct (not through the proxy)."""
    with connect(stack.endpoints.admin_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def store(conn: Conn) -> PgAuthStore:
    return PgAuthStore(conn)


@pytest.fixture
def company(store: PgAuthStore) -> Iterator[str]:
    """A company id nobody uses; its rows are deleted afterwards."""
    cid = f"t_{uuid.uuid4().hex[:12]}"
    yield cid
    pgraw.delete_company(store.conn, cid)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "auth"


@pytest.fixture
def hanging_endpoint() -> Iterator[str]:
    """The URL of a server that accepts every connection and never answers (an S3 region that
    hangs); stopped, its connections closed, when the test ends."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    listener.settimeout(0.1)  # the accept loop notices `stop` within this
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, name="hanging-endpoint", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture
def refusing_endpoint() -> str:
    """The URL of a port nothing listens on (an S3 region that refuses)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _QuietHandler(BaseHTTPRequestHandler):
    timeout = 5  # a client that never ends its request line is dropped after this

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    """The port of an HTTP server (the standard library's) on 127.0.0.1, stopped afterwards:
    a peer that answers, but not as PostgreSQL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
