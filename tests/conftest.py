"""Fixtures for tests of the auth-state stores: a connection, a store, a fresh company; a local
HTTP server, for a DSN that points at a service which is not PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate.pgstore import Conn, PgAuthStore, connect
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
    store.delete_company(cid)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "auth"


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
