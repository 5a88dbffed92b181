"""Fixtures for tests of the auth-state stores: a connection, a store, a fresh company."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

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
